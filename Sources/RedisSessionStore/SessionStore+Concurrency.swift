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
// Here a request records which keys it wrote, and the store applies just those keys onto what is stored *now*,
// atomically, by compare-and-set on the stored bytes:
// - load returns the session and its version (the exact stored value);
// - commit writes `changes` applied onto the loaded values if the stored value is still that version; if another
//   request wrote meanwhile, it re-applies the changes onto the newer value and tries again; if the session is gone
//   (destroyed, regenerated away, expired), it is not written: a destroyed session stays destroyed.
// The stored value keeps express-session's JSON shape, so Node instances still read and write it (a Node instance
// writing concurrently still overwrites as it always did; our own writes never lose theirs or each other's).

/// A session as loaded for a request: its data and the version the store had.
public struct StoredSession: Sendable {
    public var data: SessionData
    /// The stored value the data was decoded from, or nil for a store without compare-and-set (see
    /// ``SessionStore/commit(_:_:)``'s default).
    public var version: [UInt8]?
    /// Whether loading already refreshed the expiry (Redis `GETEX`), so no separate touch is needed.
    public var expiryRefreshed: Bool

    public init(data: SessionData, version: [UInt8]?, expiryRefreshed: Bool) {
        self.data = data
        self.version = version
        self.expiryRefreshed = expiryRefreshed
    }

    /// What a compare-and-set compares the stored value with: the version, else the data as a store writes it.
    var versionBytes: [UInt8] { version ?? data.jsonBytes() }
}

/// The values one request wrote, relative to what it loaded.
public struct SessionChanges: Sendable, Equatable {
    /// Keys written, with their final values; nil means the key was removed.
    public var updates: [(key: String, value: JSONValue?)]
    /// The request replaced all values at once (``Session/data`` assigned, or a regenerated session): the values
    /// are written as they are, not merged.
    public var replacesAll: Bool

    public init(updates: [(key: String, value: JSONValue?)] = [], replacesAll: Bool = false) {
        self.updates = updates
        self.replacesAll = replacesAll
    }

    public var isEmpty: Bool { updates.isEmpty && !replacesAll }

    /// The values after applying these changes to `base`.
    public func applied(to base: JSONObject, current: JSONObject) -> JSONObject {
        if replacesAll { return current }
        var result = base
        for (key, value) in updates { result[key] = value }
        return result
    }

    public static func == (lhs: SessionChanges, rhs: SessionChanges) -> Bool {
        lhs.replacesAll == rhs.replacesAll && lhs.updates.elementsEqual(rhs.updates) { $0.key == $1.key && $0.value == $1.value }
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
    public func data(onto stored: JSONObject) -> SessionData {
        SessionData(cookie: cookie, values: changes.applied(to: stored, current: values))
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

    /// Default for stores without compare-and-set: `get`, reporting that the expiry was not refreshed.
    public func load(_ id: String, touchingWith cookie: SessionCookie?) async throws -> StoredSession? {
        try await get(id).map { StoredSession(data: $0, version: nil, expiryRefreshed: false) }
    }

    /// Default for stores without compare-and-set: `set` of the changes applied to the loaded values (express's
    /// last-writer-wins semantics).
    public func commit(_ id: String, _ write: SessionWrite) async throws -> SessionCommitResult {
        let data = write.data(onto: write.base?.data.values ?? JSONObject())
        try await set(id, data)
        return .saved(StoredSession(data: data, version: nil, expiryRefreshed: false))
    }
}
