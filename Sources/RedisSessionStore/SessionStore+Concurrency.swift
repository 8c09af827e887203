#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer

// No lost updates between concurrent requests of one session.
//
// express-session saves the whole session at the end of each request, so two requests in flight at once overwrite
// each other (connect-redis #75, express-session #606), and a slow request can bring a logged-out session back.
// Here a request records which keys it wrote (and what it added to counters), and the store applies just those
// changes onto what is stored *now*, atomically:
// - load returns the session and its version (the exact stored value);
// - commit writes the changes applied onto the stored value, whatever another request wrote there meanwhile: Redis
//   does it in one script call (the members the request did not touch keep their stored bytes), the memory store
//   under its lock. Nothing conflicts, so nothing is retried and a busy session is never refused;
// - a loaded session that is gone (destroyed, regenerated away, expired) is not written: it stays destroyed;
// - ``SessionChanges/increments`` add to a number where it is stored, so counters are exact under any contention.
// The stored value keeps express-session's JSON shape, so Node instances still read and write it (a Node instance
// writing concurrently still overwrites as it always did; our own writes never lose theirs or each other's).

/// A session as loaded for a request: its data and the version the store had.
public struct StoredSession: Sendable {
    public var data: SessionData
    /// The stored value the data was decoded from, or nil for a store that cannot merge (see
    /// ``SessionStore/commit(_:_:)``'s default).
    public var version: [UInt8]?
    /// Whether loading already refreshed the expiry (Redis `GETEX`), so no separate touch is needed.
    public var expiryRefreshed: Bool

    public init(data: SessionData, version: [UInt8]?, expiryRefreshed: Bool) {
        self.data = data
        self.version = version
        self.expiryRefreshed = expiryRefreshed
    }

    /// What a commit compares the stored value with: the version, else the data as a store writes it.
    var versionBytes: [UInt8] { version ?? data.jsonBytes() }
}

/// The values one request wrote, relative to what it loaded.
public struct SessionChanges: Sendable, Equatable {
    /// Keys written, with their final values; nil means the key was removed.
    public var updates: [(key: String, value: JSONValue?)]
    /// Integers to add to, after the updates: `(key, amount)` adds `amount` to the integer under `key` as stored
    /// when the commit runs (absent or null counts as 0). See ``Session/increment(_:by:)``.
    public var increments: [(key: String, amount: Int64)]
    /// The request replaced all values at once (``Session/data`` assigned, or a regenerated session): the values
    /// are written as they are, not merged.
    public var replacesAll: Bool

    public init(updates: [(key: String, value: JSONValue?)] = [], increments: [(key: String, amount: Int64)] = [],
                replacesAll: Bool = false) {
        self.updates = updates
        self.increments = increments
        self.replacesAll = replacesAll
    }

    public var isEmpty: Bool { updates.isEmpty && increments.isEmpty && !replacesAll }

    /// The values after applying these changes to `base` (or, with ``replacesAll``, to `current`, the request's own
    /// values; increments then add to those).
    /// - Throws: ``SessionIncrementError`` when an increment meets a value that is not an integer, or its sum leaves
    ///   the range JavaScript counts exactly.
    public func applied(to base: JSONObject, current: JSONObject) throws(SessionIncrementError) -> JSONObject {
        var result = replacesAll ? current : base
        if !replacesAll {
            for (key, value) in updates { result[key] = value }
        }
        for (key, amount) in increments {
            result[key] = .number(String(try SessionCounter.adding(amount, to: result[key], key: key)))
        }
        return result
    }

    public static func == (lhs: SessionChanges, rhs: SessionChanges) -> Bool {
        lhs.replacesAll == rhs.replacesAll
            && lhs.updates.elementsEqual(rhs.updates) { $0.key == $1.key && $0.value == $1.value }
            && lhs.increments.elementsEqual(rhs.increments) { $0.key == $1.key && $0.amount == $1.amount }
    }
}

/// Why ``Session/increment(_:by:)`` added nothing. Out of a handler, ``SessionMiddleware`` answers it with
/// `409 Conflict` and the description.
public struct SessionIncrementError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// The stored value is not an integer (a string, a fraction, an object...).
        case notAnInteger
        /// The value or the sum is beyond ±(2^53 - 1), where JavaScript (and so a Node instance) loses digits.
        case outOfRange
        /// `"cookie"` holds the session cookie, not a value.
        case reservedKey
        /// The session was destroyed (or expired) before the increment reached the store: nothing was added.
        case sessionGone
    }

    /// The session key.
    public let key: String
    public let reason: Reason

    public init(key: String, reason: Reason) {
        self.key = key
        self.reason = reason
    }

    public var description: String {
        switch reason {
        case .notAnInteger: "session value \"\(key)\" is not an integer; nothing was added"
        case .outOfRange: "session value \"\(key)\" would leave the exact integer range (±9007199254740991)"
        case .reservedKey: "session key \"cookie\" is reserved; it cannot be incremented"
        case .sessionGone: "the session was destroyed by another request; \"\(key)\" was not incremented"
        }
    }
}

/// The integer rules every store applies, so that the memory store, the Redis script and the request's own copy
/// agree: a JSON integer literal (`-?[0-9]+`) within ±(2^53 - 1); absent or null is 0.
enum SessionCounter {
    /// JavaScript's `Number.MAX_SAFE_INTEGER`.
    static let maximum: Int64 = 9_007_199_254_740_991

    static func value(of json: JSONValue?, key: String) throws(SessionIncrementError) -> Int64 {
        guard let json, !json.isNull else { return 0 }
        guard case .number(let text) = json, isIntegerLiteral(text) else {
            throw SessionIncrementError(key: key, reason: .notAnInteger)
        }
        guard let value = Int64(text), value >= -maximum, value <= maximum else {
            throw SessionIncrementError(key: key, reason: .outOfRange)
        }
        return value
    }

    static func adding(_ amount: Int64, to json: JSONValue?, key: String) throws(SessionIncrementError) -> Int64 {
        let (sum, overflow) = try value(of: json, key: key).addingReportingOverflow(amount)
        guard !overflow, sum >= -maximum, sum <= maximum else {
            throw SessionIncrementError(key: key, reason: .outOfRange)
        }
        return sum
    }

    private static func isIntegerLiteral(_ text: String) -> Bool {
        var digits = text.utf8[...]
        if digits.first == UInt8(ascii: "-") { digits = digits.dropFirst() }
        return !digits.isEmpty && digits.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }
}

/// One commit of a request's session.
public struct SessionWrite: Sendable {
    /// The cookie to store (the request's: the latest cookie wins).
    public var cookie: SessionCookie
    /// What the request wrote.
    public var changes: SessionChanges
    /// The request's values as they are now (used when ``SessionChanges/replacesAll`` is set, and by stores that
    /// cannot merge).
    public var values: JSONObject
    /// What the request loaded, or nil for a new session (which must not exist yet).
    public var base: StoredSession?

    public init(cookie: SessionCookie, changes: SessionChanges, values: JSONObject, base: StoredSession?) {
        self.cookie = cookie
        self.changes = changes
        self.values = values
        self.base = base
    }

    /// The data to store on top of `stored` (the values another request left there, or the loaded ones).
    /// - Throws: ``SessionIncrementError`` from the increments.
    public func data(onto stored: JSONObject) throws(SessionIncrementError) -> SessionData {
        SessionData(cookie: cookie, values: try changes.applied(to: stored, current: values))
    }
}

/// What a commit did.
public enum SessionCommitResult: Sendable {
    /// Written; the new stored version, for a later commit in the same request.
    case saved(StoredSession)
    /// The session was destroyed (or expired) while the request ran: nothing was written.
    case gone
}

extension SessionStore {
    public var requestTimeBudget: Duration? { nil }

    /// Default for stores that cannot merge: `get`, reporting that the expiry was not refreshed.
    nonisolated(nonsending) public func load(_ id: String, touchingWith cookie: SessionCookie?) async throws
        -> StoredSession? {
        try await get(id).map { StoredSession(data: $0, version: nil, expiryRefreshed: false) }
    }

    /// Default for stores that cannot merge: `set` of the changes applied to the loaded values (express's
    /// last-writer-wins semantics; increments are exact only within one request).
    nonisolated(nonsending) public func commit(_ id: String, _ write: SessionWrite) async throws
        -> SessionCommitResult {
        let data = try write.data(onto: write.base?.data.values ?? JSONObject())
        try await set(id, data)
        // `set` stores the expiry of `data`'s cookie, as a touch would.
        return .saved(StoredSession(data: data, version: nil, expiryRefreshed: true))
    }
}
