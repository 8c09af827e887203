#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// A response being built by middleware and handlers. It goes on the wire once the whole chain has returned, so
// middleware can still act after the handler (the session middleware saves before the reply is sent).

/// An HTTP response under construction.
public final class Response {
    /// The status; 200 unless set.
    public var status: HTTPStatus = .ok
    /// The header fields. `Content-Length` is set by the server.
    public var headers = HTTPHeaders()
    /// The body bytes.
    public var body: [UInt8] = []

    public init() {
        // Room for the usual few fields (type, instance, cookie) in one allocation, instead of growing 1, 2, 4.
        headers.reserveCapacity(4)
    }

    /// Sets a text body (`text/html; charset=utf-8` unless a Content-Type is set, as express's `res.send`).
    public func send(_ text: String, status: HTTPStatus? = nil) {
        if let status { self.status = status }
        if headers["Content-Type"] == nil { headers.replace("Content-Type", "text/html; charset=utf-8") }
        body = Array(text.utf8)
    }

    /// Sets a JSON body from already-serialized JSON text (`application/json; charset=utf-8`).
    public func send(json text: String, status: HTTPStatus? = nil) {
        if let status { self.status = status }
        headers.replace("Content-Type", "application/json; charset=utf-8")
        body = Array(text.utf8)
    }

    /// Sets a JSON body serialized from `value` (`application/json; charset=utf-8`).
    public func send(json value: JSONValue, status: HTTPStatus? = nil) {
        if let status { self.status = status }
        headers.replace("Content-Type", "application/json; charset=utf-8")
        body = value.serialized()
    }

    /// Answers with a redirect to `location` (302 unless given).
    public func redirect(to location: String, status: HTTPStatus = .found) {
        self.status = status
        headers.replace("Location", location)
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
