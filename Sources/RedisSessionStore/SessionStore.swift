#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer

// SKELETON: the protocol is the contract; the sessions workstream completes SessionCookie/SessionData encoding.

/// The cookie part of a stored session, as express-session keeps it in `sess.cookie`.
public struct SessionCookie: Sendable, Equatable {
    /// The max age in milliseconds when the session was created or last touched; nil for a browser-session cookie.
    public var originalMaxAge: Int64?
    public var expires: Date?
    public var secure: Bool?
    public var httpOnly: Bool = true
    public var path: String = "/"
    public var domain: String?
    public var sameSite: SetCookie.SameSite? = .lax

    public init() {}
}

/// A session as a store keeps it: the cookie and the user's values. Encoded as express-session's JSON,
/// `{"cookie":{...},<user keys>}`.
public struct SessionData: Sendable, Equatable {
    public var cookie: SessionCookie
    public var values: JSONObject

    public init(cookie: SessionCookie = SessionCookie(), values: JSONObject = JSONObject()) {
        self.cookie = cookie
        self.values = values
    }
}

/// Where sessions live.
///
/// The contract, for every store:
/// - `get` returns nil for a missing, expired or malformed id, and throws only on a system failure;
/// - `set` overwrites; `destroy` of a missing id is a no-op; `touch` only refreshes the expiry;
/// - listing never blocks the store (Redis: SCAN, never KEYS).
public protocol SessionStore: Sendable {
    func get(_ id: String) async throws -> SessionData?
    func set(_ id: String, _ session: SessionData) async throws
    func destroy(_ id: String) async throws
    func touch(_ id: String, _ session: SessionData) async throws
    func all() async throws -> [String: SessionData]
    func length() async throws -> Int
    func clear() async throws
    /// Checks that the store answers (for `/readyz`).
    func ping() async throws
}
