// Value types shared by the server, the router and middleware. No libevent here.

/// An HTTP request method.
public struct HTTPMethod: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let get = HTTPMethod(rawValue: "GET")
    public static let head = HTTPMethod(rawValue: "HEAD")
    public static let post = HTTPMethod(rawValue: "POST")
    public static let put = HTTPMethod(rawValue: "PUT")
    public static let patch = HTTPMethod(rawValue: "PATCH")
    public static let delete = HTTPMethod(rawValue: "DELETE")
    public static let options = HTTPMethod(rawValue: "OPTIONS")
}

/// An HTTP status code with its reason phrase.
public struct HTTPStatus: Hashable, Sendable, CustomStringConvertible {
    public let code: Int
    public let reason: String
    public init(code: Int, reason: String? = nil) {
        self.code = code
        self.reason = reason ?? HTTPStatus.standardReason(code)
    }
    public var description: String { "\(code) \(reason)" }

    public static let ok = HTTPStatus(code: 200)
    public static let created = HTTPStatus(code: 201)
    public static let noContent = HTTPStatus(code: 204)
    public static let movedPermanently = HTTPStatus(code: 301)
    public static let found = HTTPStatus(code: 302)
    public static let seeOther = HTTPStatus(code: 303)
    public static let notModified = HTTPStatus(code: 304)
    public static let temporaryRedirect = HTTPStatus(code: 307)
    public static let permanentRedirect = HTTPStatus(code: 308)
    public static let badRequest = HTTPStatus(code: 400)
    public static let unauthorized = HTTPStatus(code: 401)
    public static let forbidden = HTTPStatus(code: 403)
    public static let notFound = HTTPStatus(code: 404)
    public static let methodNotAllowed = HTTPStatus(code: 405)
    public static let requestTimeout = HTTPStatus(code: 408)
    public static let conflict = HTTPStatus(code: 409)
    public static let lengthRequired = HTTPStatus(code: 411)
    public static let payloadTooLarge = HTTPStatus(code: 413)
    public static let uriTooLong = HTTPStatus(code: 414)
    public static let unsupportedMediaType = HTTPStatus(code: 415)
    public static let expectationFailed = HTTPStatus(code: 417)
    public static let unprocessableContent = HTTPStatus(code: 422)
    public static let tooManyRequests = HTTPStatus(code: 429)
    public static let requestHeaderFieldsTooLarge = HTTPStatus(code: 431)
    public static let internalServerError = HTTPStatus(code: 500)
    public static let notImplemented = HTTPStatus(code: 501)
    public static let badGateway = HTTPStatus(code: 502)
    public static let serviceUnavailable = HTTPStatus(code: 503)
    public static let gatewayTimeout = HTTPStatus(code: 504)
    public static let httpVersionNotSupported = HTTPStatus(code: 505)

    static func standardReason(_ code: Int) -> String {
        switch code {
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 301: "Moved Permanently"
        case 302: "Found"
        case 303: "See Other"
        case 304: "Not Modified"
        case 307: "Temporary Redirect"
        case 308: "Permanent Redirect"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 411: "Length Required"
        case 413: "Payload Too Large"
        case 414: "URI Too Long"
        case 415: "Unsupported Media Type"
        case 417: "Expectation Failed"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        case 505: "HTTP Version Not Supported"
        default: "Status \(code)"
        }
    }
}

/// An ordered list of header fields with case-insensitive lookup.
public struct HTTPHeaders: Sendable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var fields: [(name: String, value: String)] = []

    public init() {}
    public init(_ fields: [(String, String)]) { self.fields = fields.map { (name: $0.0, value: $0.1) } }
    /// Takes the fields as they are (the server builds headers this way, without a second copy).
    init(fields: [(name: String, value: String)]) { self.fields = fields }
    public init(dictionaryLiteral elements: (String, String)...) { self.init(elements) }

    /// The first value of `name`, compared case-insensitively.
    public subscript(name: String) -> String? {
        for field in fields where field.name.asciiCaseInsensitiveEquals(name) { return field.value }
        return nil
    }

    /// Every value of `name`, in order.
    public func values(_ name: String) -> [String] {
        fields.compactMap { $0.name.asciiCaseInsensitiveEquals(name) ? $0.value : nil }
    }

    /// Makes room for `count` fields.
    mutating func reserveCapacity(_ count: Int) { fields.reserveCapacity(count) }

    /// Appends a field, keeping any existing one of the same name (as `Set-Cookie` needs).
    public mutating func add(_ name: String, _ value: String) { fields.append((name: name, value: value)) }

    /// Replaces every field named `name` with one field.
    public mutating func replace(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    /// Removes every field named `name`.
    public mutating func remove(_ name: String) {
        fields.removeAll { $0.name.asciiCaseInsensitiveEquals(name) }
    }

    /// Whether a field named `name` is present.
    public func contains(_ name: String) -> Bool { self[name] != nil }

    public var count: Int { fields.count }
    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }
}

/// Header fields sent on every response (``HTTPServerConfiguration/defaultHeaders``): `X-Instance`,
/// `Strict-Transport-Security`, `X-Content-Type-Options` and the like.
///
/// Unlike a middleware's headers, these also reach the answers the server sends before any handler runs (a
/// request over a limit, malformed framing, a slow head, a connection past the cap, libevent's own error pages).
/// The fields are checked when made, so a field that would break a response is an error at configuration time,
/// never something sent: a name must be a token (RFC 9110 5.6.2: letters, digits and ``!#$%&'*+-.^_`|~``), a
/// value must hold no CR, LF, NUL or other control character but tab (RFC 9110 5.5), and `Connection`,
/// `Content-Length`, `Date` and `Transfer-Encoding` are refused: the server writes those itself, per response.
public struct DefaultHeaders: Sendable, Equatable, Sequence {
    /// The fields, in order.
    public let fields: [(name: String, value: String)]

    /// No fields.
    public init() { fields = [] }

    /// Checks `fields` and keeps them, in order.
    /// - Throws: ``InvalidHeaderFieldError`` naming the first field that cannot be sent.
    public init(_ fields: [(String, String)]) throws(InvalidHeaderFieldError) {
        for (name, value) in fields { try Self.check(name: name, value: value) }
        self.fields = fields.map { (name: $0.0, value: $0.1) }
    }

    /// Whether there are no fields.
    public var isEmpty: Bool { fields.isEmpty }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }

    public static func == (lhs: DefaultHeaders, rhs: DefaultHeaders) -> Bool {
        lhs.fields.count == rhs.fields.count
            && zip(lhs.fields, rhs.fields).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }

    /// The fields the server sets on every response itself.
    private static let serverFields = ["Connection", "Content-Length", "Date", "Transfer-Encoding"]

    private static func check(name: String, value: String) throws(InvalidHeaderFieldError) {
        guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else {
            throw InvalidHeaderFieldError(name: name, "header name \(name.debugDescription) is not a token "
                + "(letters, digits and !#$%&'*+-.^_`|~ only)")
        }
        if let reserved = serverFields.first(where: { $0.asciiCaseInsensitiveEquals(name) }) {
            throw InvalidHeaderFieldError(name: name, "header \(reserved) is set by the server for each response; "
                + "it cannot be a default header")
        }
        // Control characters but tab: CR or LF would end the field (and could start another), NUL the C string.
        if let byte = value.utf8.first(where: { ($0 < 32 && $0 != 9) || $0 == 127 }) {
            let what = switch byte {
            case 13, 10: "a line break (CR or LF)"
            case 0: "a NUL byte"
            default: "the control character 0x" + String(byte, radix: 16, uppercase: true)
            }
            throw InvalidHeaderFieldError(name: name, "the value of header \(name) contains \(what)")
        }
    }
}

/// Why a field cannot be one of ``DefaultHeaders``.
public struct InvalidHeaderFieldError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The field's name, as given.
    public let name: String
    /// One line naming the field and what is wrong with it (never the value).
    public let description: String

    init(name: String, _ description: String) {
        self.name = name
        self.description = description
    }
}

extension String {
    /// ASCII case-insensitive comparison, without allocating (header names are ASCII).
    @inlinable
    public func asciiCaseInsensitiveEquals(_ other: String) -> Bool {
        // Spans, not a zip over the two UTF-8 views: this runs for every header lookup, and the views' iterators
        // cost several times more per byte. The lengths first, without making spans: most comparisons (a header
        // name against the one looked for) fail on them.
        guard utf8.count == other.utf8.count else { return false }
        let a = utf8.span, b = other.utf8.span
        for index in a.indices {
            let x = a[index], y = b[index]
            if x == y { continue }
            let lx = (x >= 65 && x <= 90) ? x | 0x20 : x
            let ly = (y >= 65 && y <= 90) ? y | 0x20 : y
            if lx != ly { return false }
        }
        return true
    }
}

extension String {
    /// Byte-for-byte equality of the UTF-8 (no Unicode normalization, unlike `==`: JSON keys and header values that
    /// differ in bytes are different), over spans.
    func utf8Equals(_ other: String) -> Bool {
        let a = utf8.span, b = other.utf8.span
        guard a.count == b.count else { return false }
        for index in a.indices where a[index] != b[index] { return false }
        return true
    }
}

/// An error a handler throws to answer with a status. The server renders it as a short JSON body
/// (`{"error": message}`); any other error becomes a 500 without details.
public struct HTTPError: Error, Sendable, CustomStringConvertible {
    public var status: HTTPStatus
    public var message: String
    public var headers: HTTPHeaders

    public init(_ status: HTTPStatus, message: String? = nil, headers: HTTPHeaders = [:]) {
        self.status = status
        self.message = message ?? status.reason
        self.headers = headers
    }
    public var description: String { "\(status): \(message)" }
}
