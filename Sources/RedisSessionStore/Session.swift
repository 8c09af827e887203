// Over 500 lines on purpose: `Session` is one state machine (its values, what changed since the load and since the
// last save, what the store holds, regenerate, destroy, sign-in and -out, increments) whose operations share its
// private state; split across files, that state would have to be opened to the whole module.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import Logging

/// A store call failed inside a session operation. ``SessionMiddleware`` answers it with 503 and `Retry-After`.
public struct SessionStoreError: Error, CustomStringConvertible {
    /// The store operation: `get`, `set`, `touch` or `destroy`.
    public let operation: String
    /// What the store threw.
    public let underlying: any Error

    public var description: String { "session store \(operation) failed: \(underlying)" }
}

/// `reload()` found no session under the id any more (it expired or was destroyed elsewhere).
public struct SessionNotFoundError: Error, CustomStringConvertible {
    public var description: String { "failed to load session" }   // express-session's message
}

/// The session of one request: `request.session`, once ``SessionMiddleware`` has run.
///
/// Values are JSON (``JSONValue``); read and write them with the subscript, or with ``value(_:as:)`` and
/// ``set(_:_:)`` for `Codable` types. The middleware saves the session after the handler returns when it was
/// modified (as express-session decides: see ``SessionMiddleware``), so handlers rarely call ``save()``.
///
/// A session belongs to its request's task: use it from the handler only (it is not `Sendable`).
// Some explanation is required here: why the stored properties are `@exclusivity(unchecked)`. A session belongs to
// one request's task and is used from it alone (it is not `Sendable`), so two accesses to its properties can never
// overlap at run time; the dynamic exclusivity checks the compiler emits for class properties (about 150
// instructions each, a dozen per request) would only ever pass. The static checks still apply.
public final class Session {
    /// What happened to a session during the request (scs's `Status`).
    public enum Status: Sendable, Equatable {
        /// Values are as loaded (or, for a new session, still empty).
        case unmodified
        /// Values differ from what was loaded, or the id changed (``regenerate()``).
        case modified
        /// ``destroy()`` or ``unset()`` was called: the request has no session any more.
        case destroyed
    }

    enum State { case active, destroyed, unset }

    /// The session id (the cookie carries it, signed). Changes on ``regenerate()``.
    ///
    /// A new session's id is made the first time something needs it (a save, the cookie, this property), so a
    /// request that never stores anything costs no random bytes.
    public var id: String {
        if let currentId { return currentId }
        let generated = engine.configuration.genid()
        currentId = generated
        return generated
    }
    /// The cookie's lifetime and attributes. `cookie.maxAge = 60_000` moves the expiry, as in express.
    @exclusivity(unchecked) public var cookie: SessionCookie
    /// Whether the session was created during this request (no valid cookie, nothing in the store, or regenerated).
    @exclusivity(unchecked) public private(set) var isNew: Bool

    /// The values, in order. Prefer the subscript; `"cookie"` is reserved and never stored.
    public var data: JSONObject {
        get { values }
        set {
            guard state == .active else { return ignoredWrite() }
            values = newValue
            replacedAll = true
            changedSinceLoad = true
            changedSinceSave = true
        }
    }

    @exclusivity(unchecked) private var values: JSONObject {
        didSet { valuesJSON = nil }
    }
    @exclusivity(unchecked) private var currentId: String?
    let engine: SessionEngine
    /// Whether the request came over HTTPS (for `secure: .auto`), decided once when the request arrived.
    let requestIsSecure: Bool
    /// A session outside the cookie's path: it works in memory but is never loaded, saved or sent.
    let isDetached: Bool

    // express-session's bookkeeping: `originalId`/`originalHash` as loaded or generated, `savedHash` after a save
    // (or at load when resave is off). Instead of hashing, the values themselves are kept (copy-on-write makes that
    // free) and compared by their serialized form only when something was written. The id only ever changes through
    // regenerate(), so `originalId !== sess.id` is that flag.
    @exclusivity(unchecked) private var regenerated = false
    private let originalValues: JSONObject
    @exclusivity(unchecked) private(set) var savedValues: JSONObject? {
        didSet { savedValuesJSON = nil }
    }
    // The serialized forms the comparisons below use, each made at most once per change: the middleware asks
    // isSaved, then isModified, on the same values.
    @exclusivity(unchecked) private var valuesJSON: [UInt8]?
    @exclusivity(unchecked) private var savedValuesJSON: [UInt8]?
    private lazy var originalValuesJSON: [UInt8] = Session.json(originalValues)
    @exclusivity(unchecked) private var changedSinceLoad = false
    @exclusivity(unchecked) private var changedSinceSave = false
    @exclusivity(unchecked) private(set) var state: State = .active

    // What this request wrote since the last commit, so a commit merges just that onto what other requests stored
    // meanwhile (see SessionStore+Concurrency.swift): the keys written, in order, and whether all values were
    // replaced at once. `base` is the stored version the request last loaded or wrote.
    @exclusivity(unchecked) private var writtenKeys: [String] = []   // a handful per request: a linear `contains` beats a Set
    @exclusivity(unchecked) private var replacedAll = false
    @exclusivity(unchecked) private var base: StoredSession?
    /// Whether the store knows this id (loaded from it or saved to it), for `metrics.created`.
    private var inStore: Bool { base != nil }

    /// A session loaded from the store with its version.
    init(id: String, loaded: StoredSession, engine: SessionEngine, requestIsSecure: Bool) {
        let stored = loaded.data
        self.base = loaded
        self.currentId = id
        self.cookie = stored.cookie
        self.values = stored.values
        self.engine = engine
        self.requestIsSecure = requestIsSecure
        self.isDetached = false
        self.isNew = false
        self.originalValues = stored.values
        if !engine.configuration.resave { savedValues = stored.values }
    }

    /// A new session (express's `store.generate`).
    init(newWith engine: SessionEngine, requestIsSecure: Bool, now: Date, detached: Bool = false) {
        self.currentId = nil
        self.cookie = engine.newCookie(now: now, requestIsSecure: requestIsSecure)
        self.values = JSONObject()
        self.engine = engine
        self.requestIsSecure = requestIsSecure
        self.isDetached = detached
        self.isNew = true
        self.originalValues = JSONObject()
    }

    // MARK: - Values

    /// The value for `key`; setting nil removes it. Writes after ``destroy()`` or ``unset()`` are ignored, and
    /// `"cookie"` is reserved (express keeps the cookie under that name), so writing it is ignored too.
    public subscript(key: String) -> JSONValue? {
        get { values[key] }
        set {
            guard state == .active else { return ignoredWrite() }
            guard key != "cookie" else {
                engine.logger.warning("session key \"cookie\" is reserved; the write was ignored")
                return
            }
            values[key] = newValue
            if !writtenKeys.contains(key) { writtenKeys.append(key) }
            changedSinceLoad = true
            changedSinceSave = true
        }
    }

    /// The value for `key` as a plain Swift value: `req.session["views"] = views` with an `Int`, `let name: String? =
    /// req.session["userName"]`, arrays and string-keyed dictionaries of them. Reading gives nil when the key is
    /// absent or holds another type; setting nil removes the key. The same rules as the `JSONValue` subscript.
    public subscript<T: JSONRepresentable>(key: String) -> T? {
        get { values[key].flatMap { T(json: $0) } }
        set { self[key] = newValue?.jsonValue }
    }

    /// Decodes the value for `key` as `T` (with `JSONDecoder`).
    /// - Returns: nil when the key is absent or null.
    /// - Throws: the decoder's error when the value does not have `T`'s shape.
    public func value<T: Decodable>(_ key: String, as type: T.Type = T.self) throws -> T? {
        guard let value = values[key], !value.isNull else { return nil }
        return try value.decode(as: T.self)
    }

    /// Encodes `value` (with `JSONEncoder`, object keys sorted so equal values always encode alike) and stores it
    /// under `key`.
    /// - Throws: the encoder's error.
    public func set<T: Encodable>(_ key: String, _ value: T) throws {
        self[key] = try JSONValue(encoding: value)
    }

    /// Whether the values (or the id) differ from what the request started with; `.destroyed` after ``destroy()``
    /// or ``unset()``.
    public var status: Status {
        guard state == .active else { return .destroyed }
        return isModified ? .modified : .unmodified
    }

    private func ignoredWrite() {
        engine.logger.warning("write to a destroyed session ignored; call regenerate() to start a new one")
    }

    // MARK: - Operations (express's req.session methods)

    /// Replaces this session with a new one: destroys the old id in the store, then takes a new id, empty values
    /// and a fresh cookie. Call it on login and logout against session fixation.
    ///
    /// Unlike express (which generates the new session even when the destroy failed), a store failure leaves the
    /// session as it was, so a login cannot go on under the old id.
    /// - Throws: ``SessionStoreError`` when the store fails.
    nonisolated(nonsending) public func regenerate() async throws {
        // An id never made was never stored: nothing to destroy. A signed-in session leaves its user's index too.
        if !isDetached, let currentId {
            try await engine.destroy(currentId, owner: SessionOwner(values)?.name)
        }
        currentId = nil
        regenerated = true
        base = nil
        replacedAll = true
        values = JSONObject()
        changedSinceLoad = true
        changedSinceSave = true
        cookie = engine.newCookie(now: engine.configuration.now(), requestIsSecure: requestIsSecure)
        isNew = true
        state = .active
    }

    /// Destroys the session in the store and drops it from the request: no cookie is set and nothing is saved.
    /// (Like express, the browser keeps its cookie; the next request finds no session and starts a new one.)
    /// - Throws: ``SessionStoreError`` when the store fails (the session is dropped from the request anyway).
    nonisolated(nonsending) public func destroy() async throws {
        let owner = SessionOwner(values)?.name
        state = .destroyed
        values = JSONObject()
        base = nil
        guard !isDetached, let currentId else { return }
        try await engine.destroy(currentId, owner: owner)
    }

    // MARK: - Users (see UserSessions.swift)

    /// The user this session belongs to (``signIn(user:client:)``), or nil for a guest.
    public var user: String? { SessionOwner(values)?.name }

    /// Gives the session a new id; with `keepingData`, its values and owner stay and only the id changes (the old
    /// id is deleted from the store at once: it stops working, with no grace period, as it is what an attacker
    /// may hold). `regenerate(keepingData: false)` is ``regenerate()``. Works on a Redis Cluster (no `RENAME`: the
    /// values are written under the new id, then the old key deleted).
    ///
    /// For a signed-in session the new id is written and indexed before the old one is deleted; when the old one
    /// turns out to be gone already (ended by "sign out everywhere" meanwhile), the new one is deleted too and the
    /// session is destroyed (``status`` is `.destroyed`), so a regeneration never rescues a session from being
    /// ended.
    /// - Throws: ``SessionStoreError`` when the store fails.
    nonisolated(nonsending) public func regenerate(keepingData: Bool) async throws {
        guard keepingData, state == .active else { return try await regenerate() }
        try await moveToNewId(values, previousOwner: SessionOwner(values)?.name)
    }

    /// Signs the session in as `user`: a new id (against session fixation; the old one is deleted at once), the
    /// owner recorded in the session and in the user's index. A guest's values are kept (a cart survives the
    /// sign-in); another user's are not. With ``SessionConfiguration/maxSessionsPerUser``, the user's oldest
    /// sessions beyond the limit are ended.
    /// - Parameters:
    ///   - user: the user name: 1 to 256 bytes of UTF-8 without control characters; any such string works (the
    ///     index key is made from its hash).
    ///   - client: a description of the client to show in the user's list of sessions (``SessionClient``); nil
    ///     stores none.
    /// - Throws: ``SessionUserError`` for a bad user name or a store without a user index (nothing is changed);
    ///   ``SessionStoreError`` when the store fails.
    nonisolated(nonsending) public func signIn(user: String, client: SessionClient? = nil) async throws {
        try SessionUserError.validate(user)
        guard engine.users != nil || isDetached else { throw SessionUserError.unsupportedStore }
        // The values the signed-in session starts with; the session itself changes only once the store has them
        // (a failure leaves it as it was, under its old id and owner, even for an application that goes on).
        var signedIn = state == .active ? values : JSONObject()
        let previous = SessionOwner(signedIn)?.name
        if let previous, previous != user {
            signedIn = JSONObject()   // another user's values never carry over
        }
        // A signed-in session is a new session: its absolute lifetime starts now (set below when one is configured).
        signedIn[Session.createdAtKey] = nil
        let owner = SessionOwner(name: user, since: engine.configuration.now().javaScriptMilliseconds,
                                 indexedUntil: nil, client: client)
        signedIn[SessionOwner.key] = owner.jsonValue
        try await moveToNewId(signedIn, previousOwner: previous)
        guard state == .active, !isDetached, let limit = engine.configuration.maxSessionsPerUser,
              let users = engine.users else { return }
        // The newest `limit` sessions stay (this one among them); the older ones end. Two sign-ins at once each
        // end only sessions older than the newest `limit`, so they never end each other.
        let current = id
        let all = try await engine.perform("list") { try await users.sessions(ofUser: user) }
        for ended in all.prefix(max(0, all.count - max(1, limit))) where ended.id != current {
            try await engine.destroy(ended.id, owner: user)
        }
    }

    /// Signs out: the session is destroyed in the store and leaves its user's index, and the request continues
    /// with a new, empty session (as ``regenerate()``). For a guest it is ``regenerate()``.
    /// - Throws: ``SessionStoreError`` when the store fails (the session is then left as it was).
    nonisolated(nonsending) public func signOut() async throws {
        try await regenerate()
    }

    /// Moves the session to a new id with `newValues`. A signed-in session on a store with a user index: the new
    /// session is written, then indexed, then the old one deleted (see UserSessions.swift for why this order).
    /// Otherwise the old id is deleted and the values are saved under the new one at the end of the request, as a
    /// new session. The session changes only when every store call succeeded.
    nonisolated(nonsending) private func moveToNewId(_ newValues: JSONObject, previousOwner: String?) async throws {
        let oldId = isDetached ? nil : currentId
        let wasStored = inStore
        let now = engine.configuration.now()
        let freshCookie = engine.newCookie(now: now, requestIsSecure: requestIsSecure)
        guard !isDetached, var owner = SessionOwner(newValues), let users = engine.users else {
            if let oldId { try await engine.destroy(oldId, owner: previousOwner) }
            currentId = nil
            cookie = freshCookie
            values = newValues
            markRegenerated()
            base = nil
            return
        }
        let newId = engine.configuration.genid()
        let lifetime = users.lifetime(of: SessionData(cookie: freshCookie), now: now)
        let bound = UserIndexTiming.bound(now: now.javaScriptMilliseconds, lifetime: lifetime)
        owner.indexedUntil = bound
        var newValues = newValues
        newValues[SessionOwner.key] = owner.jsonValue
        if engine.configuration.absoluteTimeout != nil, newValues[Session.createdAtKey] == nil {
            // As commit() does for a new session. A rotation keeps the creation time it carries: regenerating
            // must not extend the absolute lifetime.
            newValues[Session.createdAtKey] = .number(String(now.javaScriptMilliseconds))
        }
        // 1. The session under its new id: nobody can use it before this response carries its cookie.
        let write = SessionWrite(cookie: freshCookie, changes: SessionChanges(replacesAll: true), values: newValues,
                                 base: nil)
        guard case .saved(let stored) = try await engine.commit(newId, write, isNew: true) else {
            throw SessionStoreError(operation: "set", underlying: RedisSessionStoreError(
                "the new session expired as it was written (a cookie max age of zero?)"))
        }
        // 2. Its index entry.
        try await engine.perform("index") { try await users.index(newId, user: owner.name, until: bound) }
        // 3. The old id ends now. A signed-in session that is gone already was ended meanwhile (sign out
        //    everywhere, an administrator): the new one goes with it.
        if let oldId {
            let existed = try await engine.destroy(oldId, owner: previousOwner)
            if wasStored, !existed, previousOwner == owner.name {
                try await engine.destroy(newId, owner: owner.name)
                engine.logger.info("session ended by another request while it was regenerated; it stays ended")
                state = .destroyed
                values = JSONObject()
                base = nil
                return
            }
        }
        currentId = newId
        cookie = freshCookie
        values = stored.data.values
        markRegenerated()
        base = stored
        savedValues = values
    }

    private func markRegenerated() {
        regenerated = true
        replacedAll = true
        changedSinceLoad = true
        changedSinceSave = true
        isNew = true
        state = .active
    }

    /// Whether the values carry an owner member (a lookup, no parsing): the middleware's test before the async call
    /// below, so a guest's request pays nothing for it.
    var mayBeSignedIn: Bool { values[SessionOwner.key] != nil }

    /// For a signed-in session whose index entry is due (see ``UserIndexTiming``): rewrites the entry, then records
    /// its new bound in the session, which the end-of-request save writes. Called by the middleware before it
    /// decides whether to save, so that the common request costs nothing more.
    nonisolated(nonsending) func refreshIndexIfDue() async throws {
        guard state == .active, !isDetached, inStore, let users = engine.users,
              var owner = SessionOwner(values) else { return }
        let now = engine.configuration.now()
        let lifetime = users.lifetime(of: storedData, now: now)
        let nowMs = now.javaScriptMilliseconds
        guard UserIndexTiming.isDue(bound: owner.indexedUntil, now: nowMs, lifetime: lifetime) else { return }
        let bound = UserIndexTiming.bound(now: nowMs, lifetime: lifetime)
        let id = self.id
        try await engine.perform("index") { try await users.index(id, user: owner.name, until: bound) }
        owner.indexedUntil = bound
        self[SessionOwner.key] = owner.jsonValue
    }

    /// Drops the session from the request without a store call, as `req.session = null` does in express: with
    /// `unset: .destroy` the store entry is destroyed when the request ends, with `.keep` it stays.
    public func unset() {
        guard state == .active else { return }
        state = .unset
        values = JSONObject()
    }

    /// Reloads values and cookie from the store (express's `session.reload`).
    /// - Throws: ``SessionNotFoundError`` when the store has no such session; ``SessionStoreError`` when it fails.
    nonisolated(nonsending) public func reload() async throws {
        guard !isDetached, state == .active else { return }
        guard let loaded = try await engine.load(id, now: engine.configuration.now(), requestIsSecure: requestIsSecure)
        else { throw SessionNotFoundError() }
        base = loaded
        values = loaded.data.values
        cookie = loaded.data.cookie
        clearWrites()
        changedSinceLoad = true
        changedSinceSave = true
    }

    /// Saves the session to the store now. The middleware saves modified sessions anyway; call this before a
    /// redirect that another server may answer first, or to save on a long-running request.
    /// - Throws: ``SessionStoreError`` when the store fails.
    nonisolated(nonsending) public func save() async throws {
        guard !isDetached, state == .active else { return }
        _ = try await commit(increments: [])
    }

    /// Adds `amount` to the integer under `key` where the session is stored, and returns the new value: exact
    /// however many requests of this session add at once, on any number of server instances (Redis: one script
    /// call; a Redis Cluster too, as the session is one key). An absent or null value counts as 0.
    ///
    /// The request's other unsaved changes go to the store in the same call, and the cookie's lifetime restarts as
    /// the end-of-request save would, so a request that changes nothing else costs no further store call. Values
    /// other requests stored meanwhile become visible in this session. A session outside the cookie's path (never
    /// stored) adds in memory only.
    ///
    /// ```swift
    /// app.get("/views") { request, response in
    ///     let views = try await request.session.increment("views")
    ///     response.send("You have been here \(views) times")
    /// }
    /// ```
    /// - Returns: the value after adding.
    /// - Throws: ``SessionIncrementError`` when the value is not an integer, the sum leaves ±(2^53 - 1) (beyond
    ///   which JavaScript loses digits), `key` is `"cookie"`, or the session was destroyed meanwhile (nothing is
    ///   added in each case; out of a handler the middleware answers 409); ``SessionStoreError`` when the store
    ///   fails (503).
    @discardableResult
    nonisolated(nonsending) public func increment(_ key: String, by amount: Int64 = 1) async throws -> Int64 {
        guard key != "cookie" else { throw SessionIncrementError(key: key, reason: .reservedKey) }
        guard state == .active else { throw SessionIncrementError(key: key, reason: .sessionGone) }
        // This request's own copy first: a value that is no integer fails before any store call.
        let local = try SessionCounter.adding(amount, to: values[key], key: key)
        guard !isDetached else {
            self[key] = .number(String(local))
            return local
        }
        // This call is the request's save: restart the lifetime now, as the end-of-request touch would, so the
        // expiry stored with it is the one that touch would set.
        touch()
        guard try await commit(increments: [(key, amount)]) else {
            throw SessionIncrementError(key: key, reason: .sessionGone)
        }
        return try SessionCounter.value(of: values[key], key: key)
    }

    /// Commits the writes since the last commit, plus `increments`, and takes what the store now holds.
    /// - Returns: false when the session was gone from the store (it is then destroyed here too).
    nonisolated(nonsending) private func commit(increments: [(key: String, amount: Int64)]) async throws -> Bool {
        if !inStore, engine.configuration.absoluteTimeout != nil, values[Session.createdAtKey] == nil {
            // The creation time travels in the session JSON as an ordinary top-level key, so express-session
            // instances sharing the store keep it intact (they drop unknown fields of "cookie", not of the session).
            let created = JSONValue.number(String(engine.configuration.now().javaScriptMilliseconds))
            values[Session.createdAtKey] = created
            if !writtenKeys.contains(Session.createdAtKey) { writtenKeys.append(Session.createdAtKey) }
        }
        let changes = SessionChanges(updates: writtenKeys.map { ($0, values[$0]) }, increments: increments,
                                     replacesAll: replacedAll)
        let write = SessionWrite(cookie: cookie, changes: changes, values: values, base: base)
        switch try await engine.commit(id, write, isNew: !inStore) {
        case .saved(let stored):
            // The stored values may hold other requests' writes too: this request now sees them.
            base = stored
            values = stored.data.values
            savedValues = values
            changedSinceLoad = true
            changedSinceSave = false
            clearWrites()
            return true
        case .gone:
            // Destroyed (logout, regenerate elsewhere) or expired while this request ran: it stays gone.
            engine.logger.info("session destroyed by another request while this one ran; its changes were dropped")
            state = .destroyed
            values = JSONObject()
            base = nil
            return false
        }
    }

    /// The key holding the creation time (JavaScript milliseconds) when an absolute timeout is configured.
    public static let createdAtKey = "evserverCreatedAt"

    /// Whether a loaded session outlived the absolute timeout (counted from its stored creation time).
    static func isPastAbsoluteTimeout(_ data: SessionData, configuration: SessionConfiguration) -> Bool {
        guard let limit = configuration.absoluteTimeout,
              let created = data.values[createdAtKey]?.doubleValue else { return false }
        let age = Double(configuration.now().javaScriptMilliseconds) - created
        return age >= Double(limit.components.seconds) * 1000
    }

    private func clearWrites() {
        writtenKeys.removeAll()
        replacedAll = false
    }

    /// Whether loading already refreshed the store's expiry exactly as the end-of-request touch would: the load
    /// used the configured cookie, so it matches when the stored cookie has the configured max age.
    func expiryRefreshedAtLoad(configuredMaxAge: Int64?) -> Bool {
        guard let base, base.expiryRefreshed, !regenerated else { return false }
        return cookie.originalMaxAge == configuredMaxAge
    }

    /// Restarts the cookie's lifetime from now (express's `session.touch()`, `cookie.resetMaxAge()`). The middleware
    /// does this on every request it saves or touches, so handlers need not.
    public func touch() {
        cookie.resetMaxAge(now: engine.configuration.now())
    }

    // MARK: - Middleware predicates

    /// express's `isModified`: another id, or other values than at load.
    var isModified: Bool {
        if regenerated { return true }
        if !changedSinceLoad { return false }
        if values != originalValues { return true }   // see isSaved
        return currentJSON() != originalValuesJSON
    }

    /// express's `isSaved`: same id, and the values last saved (or loaded, with resave off) are the current ones.
    var isSaved: Bool {
        guard !regenerated, let savedValues else { return false }
        if !changedSinceSave { return true }
        // Values that differ as JSON values always differ as text (numbers keep their literal text, unequal strings
        // have unequal bytes, and escaping is one-to-one), so only equal ones need serializing: two strings that
        // are equal in Swift (canonically equivalent) can still differ in bytes, and so in what express hashes.
        if values != savedValues { return false }
        if savedValuesJSON == nil { savedValuesJSON = Session.json(savedValues) }
        return currentJSON() == savedValuesJSON
    }

    // Values compare by what JSON.stringify would write: express compares hashes of that text.
    private func currentJSON() -> [UInt8] {
        if let valuesJSON { return valuesJSON }
        let json = Session.json(values)
        valuesJSON = json
        return json
    }

    private static func json(_ values: JSONObject) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        values.serialize(into: &out)
        return out
    }

    /// Whether the session's id is `cookieId` (express's `cookieId === req.sessionID`), without making an id.
    func hasId(_ cookieId: String?) -> Bool {
        guard let cookieId, let currentId else { return false }
        return currentId == cookieId
    }

    /// The id, if one was made or loaded.
    var existingId: String? { currentId }

    /// The data to store.
    var storedData: SessionData { SessionData(cookie: cookie, values: values) }
}

// MARK: - Request.session

enum SessionStorageKey: RequestStorageKey {
    typealias Value = Session
}

extension Request {
    /// The request's session. ``SessionMiddleware`` must run before anything reads it; reading it without the
    /// middleware is a programming error and traps.
    ///
    /// For a path outside the session cookie's `path` the middleware attaches a detached session, which works in
    /// memory but is never loaded, saved or sent (express leaves `req.session` undefined there).
    public var session: Session {
        guard let session = storage[SessionStorageKey.self] else {
            preconditionFailure("request.session read before SessionMiddleware ran; add the middleware first")
        }
        return session
    }

    /// The session, or nil when ``SessionMiddleware`` has not run for this request.
    public var sessionIfPresent: Session? { storage[SessionStorageKey.self] }
}
