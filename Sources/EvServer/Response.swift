#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// A response being built by middleware and handlers. It goes on the wire once the whole chain has returned, so
// middleware can still act after the handler (the session middleware saves before the reply is sent).

/// An HTTP response under construction.
public final class Response {
    // Some explanation is required here: why the three properties are views of one stored struct. Every access to a
    // stored `var` of a class that code outside this module can reach is checked for exclusivity at run time (a
    // call into the runtime, about 100 instructions). Kept apart, `send` paid four such checks and the server's reply
    // four more. Kept together, code in this module that touches several parts (`send`, the reply) pays one, and
    // code elsewhere pays what it paid before, one per property access. The accessors are inlinable, so other modules
    // still reach the storage directly instead of calling them, and they include `_modify`: a get-then-set would copy
    // the header array on every change.
    @usableFromInline
    struct Parts {
        @usableFromInline var status: HTTPStatus = .ok
        @usableFromInline var headers: HTTPHeaders
        @usableFromInline var body: [UInt8] = []

        init() {
            // Room for the usual few fields (type, instance, cookie) in one allocation, instead of growing 1, 2, 4.
            headers = HTTPHeaders()
            headers.reserveCapacity(4)
        }

        mutating func send(_ bytes: [UInt8], status: HTTPStatus?, contentType: String, replacingType: Bool) {
            if let status { self.status = status }
            if replacingType || headers["Content-Type"] == nil { headers.replace("Content-Type", contentType) }
            body = bytes
        }
    }

    /// The status, headers and body (see above).
    // Unchecked at run time: a response is built by its request's task alone (it is not `Sendable`), so the one
    // check left per access could only ever pass.
    @exclusivity(unchecked) @usableFromInline var parts = Parts()

    /// The status; 200 unless set.
    public var status: HTTPStatus {
        @inlinable get { parts.status }
        @inlinable set { parts.status = newValue }
        @inlinable _modify { yield &parts.status }
    }
    /// The header fields. `Content-Length` is set by the server.
    public var headers: HTTPHeaders {
        @inlinable get { parts.headers }
        @inlinable set { parts.headers = newValue }
        @inlinable _modify { yield &parts.headers }
    }
    /// The body bytes.
    public var body: [UInt8] {
        @inlinable get { parts.body }
        @inlinable set { parts.body = newValue }
        @inlinable _modify { yield &parts.body }
    }

    public init() {}

    /// Sets a text body (`text/html; charset=utf-8` unless a Content-Type is set, as express's `res.send`).
    public func send(_ text: String, status: HTTPStatus? = nil) {
        parts.send(Array(text.utf8), status: status, contentType: "text/html; charset=utf-8", replacingType: false)
    }

    /// Sets a JSON body from already-serialized JSON text (`application/json; charset=utf-8`).
    public func send(json text: String, status: HTTPStatus? = nil) {
        parts.send(Array(text.utf8), status: status, contentType: "application/json; charset=utf-8",
                   replacingType: true)
    }

    /// Sets a JSON body serialized from `value` (`application/json; charset=utf-8`).
    public func send(json value: JSONValue, status: HTTPStatus? = nil) {
        parts.send(value.serialized(), status: status, contentType: "application/json; charset=utf-8",
                   replacingType: true)
    }

    /// Answers with a redirect to `location` (302 unless given).
    /// Sends `value` as JSON (express's `res.json`): encoded with `JSONEncoder`, object keys sorted, with
    /// `Content-Type: application/json`.
    /// - Throws: the encoder's error; nothing is sent then.
    public func json<T: Encodable>(_ value: T, status: HTTPStatus? = nil) throws {
        send(json: try JSONValue(encoding: value), status: status)
    }

    public func redirect(to location: String, status: HTTPStatus = .found) {
        parts.status = status
        parts.headers.replace("Location", location)
    }

    /// Appends a `Set-Cookie` header.
    public func setCookie(_ cookie: SetCookie) {
        headers.add("Set-Cookie", cookie.headerValue)
    }
}

/// The attributes of a `Set-Cookie` header, serialized as the `cookie` npm package does.
public struct SetCookie: Sendable, Equatable {
    public enum SameSite: String, Sendable { case lax = "Lax", strict = "Strict", none = "None" }

    public var name: String
    /// The value, already encoded as it must appear on the wire.
    public var value: String
    public var path: String? = "/"
    public var domain: String?
    /// Sent as `Expires=<RFC 1123 date>`; express-session never sends Max-Age.
    public var expires: Date?
    public var maxAge: Int?
    public var httpOnly = true
    public var secure = false
    public var sameSite: SameSite? = .lax

    public init(name: String, value: String, path: String? = "/", domain: String? = nil, expires: Date? = nil,
                maxAge: Int? = nil, httpOnly: Bool = true, secure: Bool = false, sameSite: SameSite? = .lax) {
        self.name = name
        self.value = value
        self.path = path
        self.domain = domain
        self.expires = expires
        self.maxAge = maxAge
        self.httpOnly = httpOnly
        self.secure = secure
        self.sameSite = sameSite
    }

    /// `name=value; Path=/; Expires=...; HttpOnly; Secure; SameSite=Lax`, in the `cookie` package's order.
    public var headerValue: String {
        // Plain appends into one buffer sized up front (every new session sends this): interpolation builds and
        // copies a temporary string per attribute.
        var out = ""
        out.reserveCapacity(name.utf8.count + value.utf8.count + 96)
        out += name
        out += "="
        out += value
        if let maxAge { out += "; Max-Age="; out += String(maxAge) }
        if let domain { out += "; Domain="; out += domain }
        if let path { out += "; Path="; out += path }
        if let expires { out += "; Expires="; out += expires.httpDate }
        if httpOnly { out += "; HttpOnly" }
        if secure { out += "; Secure" }
        if let sameSite { out += "; SameSite="; out += sameSite.rawValue }
        return out
    }
}
