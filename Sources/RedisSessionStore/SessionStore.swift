#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer

/// The cookie part of a stored session, as express-session keeps it in `sess.cookie`.
///
/// `originalMaxAge` is the lifetime the cookie was given (express's `cookie.originalMaxAge`); `expires` is when it
/// runs out. Setting ``maxAge`` moves `expires`, as express's `cookie.maxAge` setter does; setting `expires`
/// directly leaves `originalMaxAge` alone (express would recompute it from the clock, off by a millisecond at times).
public struct SessionCookie: Sendable, Equatable {
    /// The max age in milliseconds when the session was created or last touched; nil for a browser-session cookie.
    public var originalMaxAge: Int64?
    public var expires: Date?
    /// Whether the cookie is sent only over HTTPS; nil when the option was never given (omitted from the JSON).
    public var secure: Bool?
    public var httpOnly: Bool = true
    public var path: String = "/"
    public var domain: String?
    public var sameSite: SetCookie.SameSite? = .lax

    public init() {}

    /// Creates a cookie with every field given.
    public init(originalMaxAge: Int64?, expires: Date?, secure: Bool? = nil, httpOnly: Bool = true, path: String = "/",
                domain: String? = nil, sameSite: SetCookie.SameSite? = .lax) {
        self.originalMaxAge = originalMaxAge
        self.expires = expires
        self.secure = secure
        self.httpOnly = httpOnly
        self.path = path
        self.domain = domain
        self.sameSite = sameSite
    }

    /// Milliseconds until the cookie expires (negative once past), or nil for a browser-session cookie: express's
    /// `cookie.maxAge`. Setting it moves `expires` to now + the value and makes it the new `originalMaxAge`;
    /// setting nil makes a browser-session cookie.
    public var maxAge: Int64? {
        get { maxAge(now: Date()) }
        set { setMaxAge(newValue, now: Date()) }
    }

    /// ``maxAge`` as seen at `now`.
    public func maxAge(now: Date) -> Int64? {
        expires.map { $0.javaScriptMilliseconds - now.javaScriptMilliseconds }
    }

    /// Sets ``maxAge`` as of `now`: `expires` = now + `milliseconds` (nil: no expiry), `originalMaxAge` = `milliseconds`.
    public mutating func setMaxAge(_ milliseconds: Int64?, now: Date) {
        originalMaxAge = milliseconds
        expires = milliseconds.map { Date(javaScriptMilliseconds: now.javaScriptMilliseconds + $0) }
    }

    /// Restarts the lifetime from `now` (express's `session.touch()` / `cookie.resetMaxAge()`).
    public mutating func resetMaxAge(now: Date = Date()) {
        setMaxAge(originalMaxAge, now: now)
    }
}

/// A session as a store keeps it: the cookie and the user's values. Encoded as express-session's JSON,
/// `{"cookie":{...},<user keys>}` (see `SessionData+JSON.swift`).
public struct SessionData: Sendable, Equatable {
    public var cookie: SessionCookie
    /// The user's values; a `"cookie"` key here is never stored (the name is the cookie's).
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
/// - listing never blocks the store (Redis: SCAN, never KEYS);
/// - `load` and `commit` are what ``SessionMiddleware`` uses: a store that applies a commit's changes atomically
///   onto the stored value loses no update between concurrent requests of one session (both built-in stores do).
public protocol SessionStore: Sendable {
    func get(_ id: String) async throws -> SessionData?
    func set(_ id: String, _ session: SessionData) async throws
    nonisolated(nonsending) func destroy(_ id: String) async throws
    nonisolated(nonsending) func touch(_ id: String, _ session: SessionData) async throws
    func all() async throws -> [String: SessionData]
    func length() async throws -> Int
    func clear() async throws
    /// Checks that the store answers (for `/readyz`).
    func ping() async throws

    /// Loads a session with its version, refreshing its expiry as a touch with `cookie` would, in one step where
    /// the store can (Redis: `GETEX`). nil `cookie`: no refresh. Same nil rules as `get`. A default implementation
    /// calls `get` (see `SessionStore+Concurrency.swift`).
    nonisolated(nonsending) func load(_ id: String, touchingWith cookie: SessionCookie?) async throws -> StoredSession?

    /// Writes a request's changes onto the stored session atomically, onto whatever another request stored
    /// meanwhile (so a busy session never conflicts), never re-creating a session that was destroyed while the
    /// request ran. A default implementation calls `set` (last writer wins).
    /// - Throws: ``SessionIncrementError`` when an increment cannot apply (nothing is written); the store's errors.
    nonisolated(nonsending) func commit(_ id: String, _ write: SessionWrite) async throws -> SessionCommitResult

    /// How long one request may wait on this store in all, across its calls (load, save, destroy...), when the
    /// store honours ``RedisTimeBudget`` (nil: no shared budget; each call has only its own timeout). The default
    /// implementation says nil.
    var requestTimeBudget: Duration? { get }
}

// MARK: - JavaScript time

extension Date {
    /// Whole milliseconds since 1970, as JavaScript's `Date.prototype.valueOf()` (JavaScript dates have no finer
    /// precision, so every date this module stores is rounded down to the millisecond).
    var javaScriptMilliseconds: Int64 {
        let exact = timeIntervalSince1970 * 1000
        guard exact.isFinite else { return exact > 0 ? 8_640_000_000_000_000 : -8_640_000_000_000_000 }
        // A date made from whole milliseconds comes back a hair below them (Date stores seconds since 2001 as a
        // Double), so snap to the nearest millisecond within a microsecond before rounding down.
        let nearest = exact.rounded()
        let ms = abs(exact - nearest) < 0.001 ? nearest : exact.rounded(.down)
        return Int64(max(min(ms, 8.64e15), -8.64e15))   // JavaScript's date range
    }

    init(javaScriptMilliseconds ms: Int64) {
        self.init(timeIntervalSince1970: Double(ms) / 1000)
    }
}
