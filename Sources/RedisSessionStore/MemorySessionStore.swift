#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import Logging
import Synchronization

/// Sessions in this process's memory, for development, tests and single-instance deployments.
///
/// It behaves like a real store: it keeps each session as its serialized JSON (so what `get` returns is a copy,
/// as from Redis), and it expires entries at their cookie's `expires`, or `defaultTTL` seconds after the last
/// `set`/`touch` for a browser-session cookie. Expired entries are dropped when read and swept at most once a
/// minute by writes, so memory does not grow with abandoned sessions.
public final class MemorySessionStore: UserSessionStore {
    private struct Entry {
        var json: [UInt8]
        var expiresAt: Date
    }

    private struct State {
        var entries: [String: Entry] = [:]
        /// Each user's sessions: id -> bound (JavaScript milliseconds), as RedisSessionStore's sorted sets.
        var users: [String: [String: Int64]] = [:]
        var lastSweep: Date
    }

    private let state: Mutex<State>
    /// The clock (injectable for tests).
    public let now: @Sendable () -> Date
    /// Lifetime in seconds of a session whose cookie has no `expires`.
    public let defaultTTL: Int
    private let logger: Logger
    private static let sweepInterval: TimeInterval = 60

    /// - Parameters:
    ///   - defaultTTL: lifetime in seconds of a session whose cookie has no `expires` (connect-redis's `ttl`).
    ///   - now: the clock.
    public init(defaultTTL: Int = 86400, now: @escaping @Sendable () -> Date = { Date() },
                logger: Logger = Logger(label: "evserver.session.memory")) {
        self.defaultTTL = defaultTTL
        self.now = now
        self.logger = logger
        self.state = Mutex(State(lastSweep: now()))
    }

    public func get(_ id: String) async throws -> SessionData? {
        let now = self.now()
        let json: [UInt8]? = state.withLock { state in
            guard let entry = state.entries[id] else { return nil }
            guard entry.expiresAt > now else {
                state.entries[id] = nil
                return nil
            }
            return entry.json
        }
        guard let json else { return nil }
        do {
            return try SessionData(json: json)
        } catch {
            logger.warning("undecodable session value; treating it as no session", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Reads and, with a cookie, refreshes the expiry as `touch` would, under one lock.
    nonisolated(nonsending) public func load(_ id: String, touchingWith cookie: SessionCookie?) async throws
        -> StoredSession? {
        let now = self.now()
        let refreshed = cookie.map { expiry(of: SessionData(cookie: $0), now: now) }
        let json: [UInt8]? = state.withLock { state in
            guard let entry = state.entries[id] else { return nil }
            guard entry.expiresAt > now else {
                state.entries[id] = nil
                return nil
            }
            if let refreshed, refreshed > now { state.entries[id]?.expiresAt = refreshed }
            return entry.json
        }
        guard let json else { return nil }
        do {
            return StoredSession(data: try SessionData(json: json), version: json, expiryRefreshed: refreshed != nil)
        } catch {
            logger.warning("undecodable session value; treating it as no session", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// The changes applied onto the stored value, written under the lock if nobody wrote since it was read (else
    /// applied again onto the newer value: a request never fails for another's write); a loaded session that is
    /// gone is not re-created. Increments add to the value as stored, so counters are exact.
    nonisolated(nonsending) public func commit(_ id: String, _ write: SessionWrite) async throws
        -> SessionCommitResult {
        enum Outcome { case written, gone, changed([UInt8]) }
        var base = write.base
        while true {
            let data = try write.data(onto: base?.data.values ?? JSONObject())
            let json = data.jsonBytes()
            let now = self.now()
            let expiresAt = expiry(of: data, now: now)
            let expected = base?.versionBytes
            let outcome: Outcome = state.withLock { state in
                sweepIfDue(&state, now: now)
                let current = state.entries[id].flatMap { $0.expiresAt > now ? $0.json : nil }
                switch (current, expected) {
                case (nil, .some): return .gone
                case (.some(let current), let expected) where current != expected: return .changed(current)
                default:
                    guard expiresAt > now else {
                        state.entries[id] = nil
                        return .gone
                    }
                    state.entries[id] = Entry(json: json, expiresAt: expiresAt)
                    return .written
                }
            }
            switch outcome {
            case .written: return .saved(StoredSession(data: data, version: json, expiryRefreshed: true))
            case .gone: return .gone
            case .changed(let current):
                guard let decoded = try? SessionData(json: current) else { return .gone }
                base = StoredSession(data: decoded, version: current, expiryRefreshed: false)
            }
        }
    }

    public func set(_ id: String, _ session: SessionData) async throws {
        let json = session.jsonBytes()
        let now = self.now()
        let expiresAt = expiry(of: session, now: now)
        state.withLock { state in
            sweepIfDue(&state, now: now)
            if expiresAt > now {
                state.entries[id] = Entry(json: json, expiresAt: expiresAt)
            } else {
                state.entries[id] = nil
            }
        }
    }

    nonisolated(nonsending) public func destroy(_ id: String) async throws {
        _ = state.withLock { $0.entries.removeValue(forKey: id) }
    }

    /// As express's MemoryStore: when the session is still there, its stored cookie is replaced by `session`'s and
    /// its expiry moves; its values are left as stored.
    nonisolated(nonsending) public func touch(_ id: String, _ session: SessionData) async throws {
        let now = self.now()
        let stored: [UInt8]? = state.withLock { state in
            guard let entry = state.entries[id], entry.expiresAt > now else { return nil }
            return entry.json
        }
        guard let stored, var current = try? SessionData(json: stored) else { return }
        current.cookie = session.cookie
        let json = current.jsonBytes()
        let expiresAt = expiry(of: session, now: now)
        state.withLock { state in
            // Only if nobody wrote or destroyed it meanwhile: a concurrent save carries its own cookie and expiry,
            // and writing back the copy read above would undo it.
            guard state.entries[id]?.json == stored else { return }
            if expiresAt > now {
                state.entries[id] = Entry(json: json, expiresAt: expiresAt)
            } else {
                state.entries[id] = nil
            }
        }
    }

    public func all() async throws -> [String: SessionData] {
        let now = self.now()
        let live: [(String, [UInt8])] = state.withLock { state in
            sweep(&state, now: now)
            return state.entries.map { ($0.key, $0.value.json) }
        }
        var result: [String: SessionData] = [:]
        for (id, json) in live {
            if let data = try? SessionData(json: json) { result[id] = data }
        }
        return result
    }

    public func length() async throws -> Int {
        let now = self.now()
        return state.withLock { state in
            sweep(&state, now: now)
            return state.entries.count
        }
    }

    public func clear() async throws {
        state.withLock { state in
            state.entries.removeAll()
            state.users.removeAll()
        }
    }

    public func ping() async throws {}

    // MARK: - Expiry

    private func expiry(of session: SessionData, now: Date) -> Date {
        session.cookie.expires ?? now.addingTimeInterval(TimeInterval(defaultTTL))
    }

    private func sweepIfDue(_ state: inout State, now: Date) {
        guard now.timeIntervalSince(state.lastSweep) >= MemorySessionStore.sweepInterval else { return }
        sweep(&state, now: now)
    }

    private func sweep(_ state: inout State, now: Date) {
        state.entries = state.entries.filter { $0.value.expiresAt > now }
        // An index entry goes with its session (and in any case at its bound): memory follows the live sessions.
        let entries = state.entries
        state.users = state.users.compactMapValues { index in
            let kept = index.filter { entries[$0.key] != nil }
            return kept.isEmpty ? nil : kept
        }
        state.lastSweep = now
    }

    // MARK: - Users (UserSessionStore; the rules are in UserSessions.swift)

    public func lifetime(of session: SessionData, now: Date) -> Int64 {
        max(0, expiry(of: session, now: now).javaScriptMilliseconds - now.javaScriptMilliseconds)
    }

    public func index(_ id: String, user: String, until bound: Int64) async throws {
        let now = self.now().javaScriptMilliseconds
        state.withLock { state in
            var index = state.users[user, default: [:]].filter { $0.value >= now }
            index[id] = max(index[id] ?? bound, bound)
            state.users[user] = index
        }
    }

    public func sessions(ofUser user: String) async throws -> [UserSession] {
        let now = self.now()
        let found: [(String, [UInt8], Date)] = state.withLock { state in
            let nowMs = now.javaScriptMilliseconds
            guard let index = state.users[user] else { return [] }
            var found: [(String, [UInt8], Date)] = []
            var kept: [String: Int64] = [:]
            for (id, bound) in index where bound >= nowMs {
                guard let entry = state.entries[id], entry.expiresAt > now else { continue }
                found.append((id, entry.json, entry.expiresAt))
                kept[id] = bound
            }
            state.users[user] = kept.isEmpty ? nil : kept
            return found
        }
        var live: [UserSession] = []
        var gone: [String] = []
        for (id, json, expiresAt) in found {
            guard let data = try? SessionData(json: json), let owner = SessionOwner(data.values), owner.name == user
            else {
                gone.append(id)
                continue
            }
            let lifetime = data.cookie.originalMaxAge ?? Int64(defaultTTL) * 1000
            live.append(UserSession(id: id, user: user, signedInAt: owner.since.map { Date(javaScriptMilliseconds: $0) },
                                    lastActiveAt: expiresAt.addingTimeInterval(-Double(lifetime) / 1000),
                                    expiresAt: expiresAt, client: owner.client))
        }
        if !gone.isEmpty {
            state.withLock { state in for id in gone { state.users[user]?[id] = nil } }
        }
        return live.sorted { ($0.signedInAt ?? .distantPast, $0.id) < ($1.signedInAt ?? .distantPast, $1.id) }
    }

    @discardableResult
    public func destroySessions(ofUser user: String, except: String?) async throws -> Int {
        let now = self.now()
        return state.withLock { state in
            guard let index = state.users[user] else { return 0 }
            var ended = 0
            for id in index.keys where id != except {
                if let entry = state.entries.removeValue(forKey: id), entry.expiresAt > now { ended += 1 }
                state.users[user]?[id] = nil
            }
            if state.users[user]?.isEmpty == true { state.users[user] = nil }
            return ended
        }
    }

    @discardableResult
    nonisolated(nonsending) public func destroy(_ id: String, ofUser user: String) async throws -> Bool {
        let now = self.now()
        return state.withLock { state in
            let entry = state.entries.removeValue(forKey: id)
            state.users[user]?[id] = nil
            if state.users[user]?.isEmpty == true { state.users[user] = nil }
            return entry.map { $0.expiresAt > now } ?? false
        }
    }

    /// How many users have an index (to test that indexes go with their sessions).
    var indexedUserCount: Int { state.withLock { $0.users.count } }

    // MARK: - Test support

    /// Stores raw bytes under `id`, bypassing encoding (to test how undecodable values are handled).
    func storeRaw(_ id: String, _ bytes: [UInt8], expiresAt: Date? = nil) {
        let expiresAt = expiresAt ?? now().addingTimeInterval(TimeInterval(defaultTTL))
        state.withLock { $0.entries[id] = Entry(json: bytes, expiresAt: expiresAt) }
    }

    /// When the entry for `id` expires, if it is held (expired or not).
    func expiry(of id: String) -> Date? { state.withLock { $0.entries[id]?.expiresAt } }

    /// How many entries are held, expired or not (to test sweeping).
    var storedCount: Int { state.withLock { $0.entries.count } }
}
