// A request as the router and middleware see it: plain Swift values copied out of evhttp.

/// A key for a typed value that middleware attaches to a request (the session middleware stores the session here).
public protocol RequestStorageKey {
    associatedtype Value
}

/// Typed per-request storage for middleware.
public struct RequestStorage {
    // A request carries one or two values (the session): a short list searched in order costs less than a
    // dictionary, which allocates and hashes on every request. The subscript is inlinable so that callers in other
    // modules (the session middleware) get it specialized for their key instead of running it generically.
    @usableFromInline var values: [(key: ObjectIdentifier, value: Any)] = []
    public init() {}
    @inlinable
    public subscript<Key: RequestStorageKey>(_ key: Key.Type) -> Key.Value? {
        get {
            let id = ObjectIdentifier(key)
            for entry in values where entry.key == id { return entry.value as? Key.Value }
            return nil
        }
        set {
            let id = ObjectIdentifier(key)
            let index = values.firstIndex { $0.key == id }
            switch (index, newValue) {
            case (let index?, let value?): values[index].value = value
            case (let index?, nil): values.remove(at: index)
            case (nil, let value?): values.append((key: id, value: value))
            case (nil, nil): break
            }
        }
    }
}

/// An HTTP request.
///
/// A request belongs to the loop that received it: use it from the handler's task only (it is not `Sendable`).
// The mutable properties are `@exclusivity(unchecked)`: a request is used by its own task only (it is not
// `Sendable`), so two accesses never overlap at run time and the dynamic checks could only ever pass.
public final class Request {
    /// The method, e.g. `GET`.
    public let method: HTTPMethod
    /// The request target as received, e.g. `/a%20b?x=1`.
    public let uri: String
    /// The percent-decoded path without the query, e.g. `/a b`.
    public let path: String
    /// The raw query string without `?`, or nil.
    public let query: String?
    /// The header fields, in order.
    public let headers: HTTPHeaders
    /// The body bytes (empty when there is none).
    public let body: [UInt8]
    /// The peer's address (IP without port), or "" when unknown.
    public let remoteAddress: String
    /// Values of `:name` segments of the matched route, percent-decoded.
    @exclusivity(unchecked) public var parameters: [String: String] = [:]
    /// The pattern of the route that matched (e.g. `/users/:id`), for logs and metrics labels; nil when no route
    /// matched (a 404 or 405).
    @exclusivity(unchecked) public internal(set) var route: String?
    /// Storage for middleware (see ``RequestStorageKey``).
    @exclusivity(unchecked) public var storage = RequestStorage()
    /// The loop this request runs on, when it came from a server.
    public let loop: EventLoop?
    /// The request's id (``HTTPServerConfiguration/requestIDs``), nil when the server gives none.
    @exclusivity(unchecked) public var id: String?

    /// Creates a request. Servers build these from the wire; tests build them directly.
    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders = [:], body: [UInt8] = [],
                remoteAddress: String = "", loop: EventLoop? = nil) {
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
        self.loop = loop
        if Request.isPlainPath(uri) {
            // What URIParts.split returns for it, without its generic search for `?` and its decoding pass.
            self.path = uri
            self.query = nil
        } else {
            (self.path, self.query) = URIParts.split(uri)
        }
    }

    /// Whether `uri` has neither a query nor a percent escape (most requests): then it is its own path.
    private static func isPlainPath(_ uri: String) -> Bool {
        let bytes = uri.utf8.span
        for index in bytes.indices where bytes[index] == UInt8(ascii: "?") || bytes[index] == UInt8(ascii: "%") {
            return false
        }
        return true
    }

    /// Query parameters, percent-decoded (`+` as space); the first value of a repeated name wins.
    public lazy var queryItems: [String: String] = URIParts.parseQuery(query)

    /// Cookies from the `Cookie` header(s), values percent-decoded; the first of a repeated name wins
    /// (as the `cookie` npm package does). Malformed pairs are skipped, never an error.
    public var cookies: [String: String] {
        get {
            if let parsedCookies { return parsedCookies }
            let parsed = CookieParser.parse(headers.values("Cookie"))
            parsedCookies = parsed
            return parsed
        }
        set { parsedCookies = newValue }
    }
    @exclusivity(unchecked) private var parsedCookies: [String: String]?

    /// The value of one cookie: `cookies[name]`, without parsing (and percent-decoding) every other cookie when
    /// ``cookies`` has not been asked for.
    public func cookie(named name: String) -> String? {
        if let parsedCookies { return parsedCookies[name] }
        // Over the fields themselves: `headers.values("Cookie")` would build an array on every request.
        for field in headers.fields where field.name.asciiCaseInsensitiveEquals("Cookie") {
            if let value = CookieParser.value(named: name, inHeader: field.value) { return value }
        }
        return nil
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
    /// `X-Forwarded-For` that is not itself a trusted proxy (express's `req.ip`).
    public func clientAddress(trusting proxies: TrustedProxies) -> String {
        guard proxies.trusts(remoteAddress) else { return remoteAddress }
        let chain = headers.values("X-Forwarded-For")
            .flatMap { $0.split(separator: ",") }
            .map { String($0.filter { $0 != " " }) }
            .filter { !$0.isEmpty }
        for address in chain.reversed() where !proxies.trusts(address) { return address }
        return chain.first ?? remoteAddress
    }

    /// The body as UTF-8 text (invalid sequences repaired).
    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}
