#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import Logging
// Re-exported: the store's public initializers take the client's types (`RedisConfiguration`,
// `RedisClusterConfiguration`, `RedisSentinelConfiguration`, `RedisClient`) and it throws the client's errors
// (`RedisClientError`, `RedisError`), so every user of the store needs them; with the re-export, code that imports
// only RedisSessionStore (the README's examples: `RedisConfiguration(url:)`, `RedisTLSConfiguration(caFile:)`)
// compiles as it did when the client lived in this module.
@_exported import RedisClient
import Synchronization

/// Sessions in Redis, as connect-redis 7 keeps them, so Node and this server can share them: the value of
/// `<prefix><id>` is express-session's JSON, and Redis owns expiry.
///
/// - `get`: `GET`; a missing key is nil; a value that is not a session is nil and a logged warning (never the id).
/// - `set`: `SET key json EX ttl`, where ttl is the seconds until the cookie's `expires` (rounded up), or the
///   default `ttl` for a browser-session cookie; a ttl of zero or less deletes the key instead.
/// - `touch`: `EXPIRE key ttl` (nothing with `disableTouch`).
/// - `destroy`: `DEL`. `all`, `length`, `clear`: `SCAN MATCH <prefix>* COUNT <scanCount>`, never `KEYS`.
///
/// Errors from Redis (connection lost, timeout, `-ERR`) are thrown; the middleware answers them with 503.
///
/// One server (``init(configuration:prefix:ttl:disableTouch:scanCount:waitForReplicas:logger:)``), a Redis Cluster
/// (``init(cluster:prefix:ttl:disableTouch:scanCount:waitForReplicas:logger:)``: each command on its key's primary,
/// listing over every primary) or the primary Sentinel names
/// (``init(sentinel:prefix:ttl:disableTouch:scanCount:waitForReplicas:logger:)``). With `waitForReplicas` > 0 each
/// write is followed by `WAIT` on the same connection.
public final class RedisSessionStore: SessionStore {
    /// Key prefix (connect-redis's default `sess:`).
    public let prefix: String
    /// Seconds a session lives when its cookie has no `expires`.
    public let ttl: Int
    /// Whether `touch` does nothing (connect-redis's `disableTouch`).
    public let disableTouch: Bool
    /// The `COUNT` hint for `SCAN`, and the batch size for `MGET` and `DEL` in `all` and `clear`.
    public let scanCount: Int
    /// How many replicas must acknowledge each session write (`WAIT n <deadline>` after it) before it counts as
    /// saved; 0 (the default) waits for none. A write that fewer replicas acknowledged in time throws
    /// ``RedisReplicationError`` (the middleware answers 503). Such writes go through a second connection per loop
    /// (per node, on a cluster), as WAIT blocks its connection; a store on one given client has only that one.
    public let waitForReplicas: Int
    private let clients: ClientSource
    private let logger: Logger
    /// Whether ``connectInBackground()`` ran.
    private let connecting = Atomic<Bool>(false)

    /// A store on one client, used from whatever loop calls it.
    /// - Parameters:
    ///   - client: the Redis connection.
    ///   - prefix: key prefix.
    ///   - ttl: seconds a session lives when its cookie has no `expires`.
    ///   - disableTouch: make `touch` a no-op (sessions then expire `ttl` after their last save).
    ///   - scanCount: the `SCAN` `COUNT` hint.
    ///   - waitForReplicas: replicas that must acknowledge each write (`WAIT`); 0 for none.
    public convenience init(client: RedisClient, prefix: String = "sess:", ttl: Int = 86400,
                            disableTouch: Bool = false, scanCount: Int = 100, waitForReplicas: Int = 0,
                            logger: Logger = Logger(label: "evserver.session.redis")) {
        self.init(source: .single(client), prefix: prefix, ttl: ttl, disableTouch: disableTouch, scanCount: scanCount,
                  waitForReplicas: waitForReplicas, logger: logger)
    }

    /// A store that connects to `url` (`redis://[user:password@]host:port/db`) with one client per ``EventLoop``,
    /// made on first use from that loop, so every command runs on the loop of the request that sent it. Calls
    /// from outside any loop use a loop thread the store starts for itself.
    /// - Throws: the URL's parse error.
    public convenience init(url: String, prefix: String = "sess:", ttl: Int = 86400, disableTouch: Bool = false,
                            scanCount: Int = 100, logger: Logger = Logger(label: "evserver.session.redis")) throws {
        self.init(configuration: try RedisConfiguration(url: url), prefix: prefix, ttl: ttl, disableTouch: disableTouch,
                  scanCount: scanCount, logger: logger)
    }

    /// A store with one client per ``EventLoop`` (as ``init(url:prefix:ttl:disableTouch:scanCount:logger:)``), for a
    /// configuration built in code: a command timeout, a metrics hook.
    public convenience init(configuration: RedisConfiguration, prefix: String = "sess:", ttl: Int = 86400,
                            disableTouch: Bool = false, scanCount: Int = 100, waitForReplicas: Int = 0,
                            logger: Logger = Logger(label: "evserver.session.redis")) {
        self.init(source: .perLoop(PerLoopClients(configuration: configuration)), prefix: prefix, ttl: ttl,
                  disableTouch: disableTouch, scanCount: scanCount, waitForReplicas: waitForReplicas, logger: logger)
    }

    /// A store on a Redis Cluster: each command goes to the primary of its key's slot (one connection per primary
    /// per loop, opened on first use), following `MOVED` and `ASK`; listing, counting and clearing SCAN every
    /// primary. See ``RedisClusterClient``.
    /// - Parameters:
    ///   - cluster: seeds and per-node settings (credentials, timeout, metrics hook).
    ///   - waitForReplicas: replicas that must acknowledge each write (`WAIT` on the key's primary); 0 for none.
    public convenience init(cluster: RedisClusterConfiguration, prefix: String = "sess:", ttl: Int = 86400,
                            disableTouch: Bool = false, scanCount: Int = 100, waitForReplicas: Int = 0,
                            logger: Logger = Logger(label: "evserver.session.redis")) {
        self.init(source: .cluster(RedisClusterClient(configuration: cluster)), prefix: prefix, ttl: ttl,
                  disableTouch: disableTouch, scanCount: scanCount, waitForReplicas: waitForReplicas, logger: logger)
    }

    /// A store on the primary that Redis Sentinel names for `sentinel.masterName`, followed across failovers; one
    /// connection per loop to the current primary.
    /// - Parameters:
    ///   - sentinel: the sentinels, the primary's name, and the settings for the primary's connections.
    ///   - waitForReplicas: replicas that must acknowledge each write (`WAIT`); 0 for none.
    public convenience init(sentinel: RedisSentinelConfiguration, prefix: String = "sess:", ttl: Int = 86400,
                            disableTouch: Bool = false, scanCount: Int = 100, waitForReplicas: Int = 0,
                            logger: Logger = Logger(label: "evserver.session.redis")) {
        self.init(source: .sentinel(SentinelClients(configuration: sentinel)), prefix: prefix, ttl: ttl,
                  disableTouch: disableTouch, scanCount: scanCount, waitForReplicas: waitForReplicas, logger: logger)
    }

    private init(source: ClientSource, prefix: String, ttl: Int, disableTouch: Bool, scanCount: Int,
                 waitForReplicas: Int, logger: Logger) {
        self.clients = source
        self.prefix = prefix
        self.ttl = ttl
        self.disableTouch = disableTouch
        self.scanCount = max(1, scanCount)
        self.waitForReplicas = max(0, waitForReplicas)
        self.logger = logger
    }

    deinit {
        if case .sentinel(let sentinel) = clients { sentinel.close() }
    }

    /// Connects now rather than at the first request, so that the log says at once whether Redis answers, in one
    /// line either way: `connected to Redis at 10.0.0.5:6379 (single server, TLS, Redis 7.0.15)`, or
    /// `Redis (single server) is not reachable: <reason>; ...` after which the connection keeps retrying with
    /// back-off (and says so when it succeeds) while session requests fail fast. ``SessionMiddleware`` calls it
    /// when it is made. Returns at once; later calls do nothing. A store made on a given client leaves it alone.
    public func connectInBackground() {
        guard !connecting.exchange(true, ordering: .relaxed) else { return }
        if case .single = clients { return }
        Task.detached { [self] in
            // Outside any loop: the store's own loop thread connects (the clients of the server's loops connect on
            // their first request). The outcome is logged by the client; nothing to do with it here.
            _ = try? await self.client().ping()
        }
    }

    /// The Redis key of a session.
    public func key(for id: String) -> String { prefix + id }

    /// ``key(for:)`` as bytes, made in one buffer (not a String first, then its bytes).
    func keyBytes(for id: String) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(prefix.utf8.count + id.utf8.count)
        key.append(contentsOf: prefix.utf8)
        key.append(contentsOf: id.utf8)
        return key
    }

    /// The command timeout: a request's session calls share one timeout's worth of Redis time (see
    /// ``RedisTimeBudget``), so a slow load leaves less time for the save and a request never waits on Redis longer
    /// than the timeout in all.
    public var requestTimeBudget: Duration? {
        switch clients {
        case .single(let client): client.configuration.commandTimeout
        case .perLoop(let perLoop): perLoop.configuration.commandTimeout
        case .cluster(let cluster): cluster.configuration.node.commandTimeout
        case .sentinel(let sentinel): sentinel.configuration.primary.commandTimeout
        }
    }

    // MARK: - SessionStore

    public func get(_ id: String) async throws -> SessionData? {
        try await load(id, touchingWith: nil)?.data
    }

    /// `GETEX key EX ttl` (one round trip: the read refreshes the expiry as `touch` would), or `GET` with a nil
    /// cookie or `disableTouch`. A value that is not a session (not JSON, or another Redis type at the key) is nil
    /// and a logged warning.
    nonisolated(nonsending) public func load(_ id: String, touchingWith cookie: SessionCookie?) async throws
        -> StoredSession? {
        let client = try client()
        let refresh = disableTouch ? nil : cookie.map { ttl(for: SessionData(cookie: $0)) }
        let bytes: [UInt8]?
        do {
            if let refresh, refresh > 0 {
                bytes = try await client.get(prefix: prefix, id: id, refreshingExpiry: refresh)
            } else {
                bytes = try await client.get(key(for: id))
            }
        } catch let error as RedisError where error.code == "WRONGTYPE" {
            logger.warning("a non-string Redis value sits at a session key; treating it as no session",
                           metadata: ["prefix": "\(prefix)"])
            return nil
        }
        guard let bytes else { return nil }
        guard let data = decode(bytes) else { return nil }
        return StoredSession(data: data, version: bytes, expiryRefreshed: refresh.map { $0 > 0 } ?? false)
    }

    /// One `EVALSHA` of ``RedisSessionStore/commitScript``, whatever other requests do: the request's changes
    /// (keys set and removed, increments, the cookie) are applied onto the value stored when the script runs, so
    /// there is nothing to conflict with and nothing to retry. A loaded session whose key is gone (destroyed,
    /// regenerated away, expired) is never re-created.
    nonisolated(nonsending) public func commit(_ id: String, _ write: SessionWrite) async throws
        -> SessionCommitResult {
        let client = try writeClient()
        let key = keyBytes(for: id)
        let data = try write.data(onto: write.base?.data.values ?? JSONObject())
        let seconds = ttl(for: data)
        guard seconds > 0 else {
            // An expired cookie: connect-redis deletes instead of writing.
            _ = try await client.write([Keyword.del, key], waitingFor: waitForReplicas)
            return .gone
        }
        let json = data.jsonBytes()
        let reply = try await evalWriting(RedisSessionStore.commitScript, on: client, key: key,
                                          arguments: RedisSessionStore.commitArguments(write, json: json, ttl: seconds))
        switch reply {
        case .integer(1):
            // Nobody wrote since the load: stored exactly as this request computed it.
            return .saved(StoredSession(data: data, version: json, expiryRefreshed: true))
        case .bulkString(let merged):
            // Another request wrote meanwhile: the script merged onto its value and returned the result.
            guard let decoded = decode(merged) else {
                return .saved(StoredSession(data: data, version: merged, expiryRefreshed: true))
            }
            return .saved(StoredSession(data: decoded, version: merged, expiryRefreshed: true))
        case .null:
            return .gone
        case .integer(0):
            logger.warning("the stored session value is not a JSON object; left as it is, this request's changes dropped",
                           metadata: ["prefix": "\(prefix)"])
            return .gone
        case .array(let items) where items.count == 2:
            // An increment that cannot apply onto the stored value: nothing was written.
            guard case .bulkString(let reason) = items[0], case .bulkString(let key) = items[1] else { fallthrough }
            throw SessionIncrementError(key: String(decoding: key, as: UTF8.self),
                                        reason: reason == Array("range".utf8) ? .outOfRange : .notAnInteger)
        default:
            throw RedisSessionStoreError("unexpected reply to the session commit script: \(reply.kindDescription)")
        }
    }

    /// A script that writes `key`, through ``RedisSessionTarget/write(_:waitingFor:)`` so that `waitForReplicas`
    /// applies.
    func evalWriting(_ script: RedisScript, on client: any RedisSessionTarget, key: [UInt8],
                             arguments: [[UInt8]]) async throws -> RedisValue {
        try await script.run(keyBytes: [key], arguments: arguments) {
            try await client.write($0, waitingFor: waitForReplicas)
        }
    }

    func decode(_ bytes: [UInt8]) -> SessionData? {
        do {
            return try SessionData(json: bytes)
        } catch {
            logger.warning("undecodable session value in Redis; treating it as no session",
                           metadata: ["prefix": "\(prefix)", "error": "\(error)", "bytes": "\(bytes.count)"])
            return nil
        }
    }

    public func set(_ id: String, _ session: SessionData) async throws {
        let seconds = ttl(for: session)
        if seconds > 0 {
            let reply = try await writeClient().write([Keyword.set, Array(key(for: id).utf8), session.jsonBytes(),
                                                  Keyword.ex, Array(String(seconds).utf8)],
                                                 waitingFor: waitForReplicas)
            guard case .simpleString = reply else {
                throw RedisSessionStoreError("unexpected reply to SET: \(reply.kindDescription)")
            }
        } else {
            _ = try await writeClient().write([Keyword.del, Array(key(for: id).utf8)], waitingFor: waitForReplicas)
        }
    }

    nonisolated(nonsending) public func touch(_ id: String, _ session: SessionData) async throws {
        guard !disableTouch else { return }
        // A ttl <= 0 makes Redis delete the key, which is right for an expired session (connect-redis does the same).
        try await client().expire(key(for: id), after: ttl(for: session))
    }

    nonisolated(nonsending) public func destroy(_ id: String) async throws {
        _ = try await writeClient().write([Keyword.del, Array(key(for: id).utf8)], waitingFor: waitForReplicas)
    }

    public func all() async throws -> [String: SessionData] {
        let client = try client()
        var keys: [String] = []
        try await forEachIDPage { ids in keys += ids.map(key(for:)) }
        var result: [String: SessionData] = [:]
        var start = 0
        while start < keys.count {
            let batch = Array(keys[start..<min(start + scanCount, keys.count)])
            start += batch.count
            let values = try await client.values(of: batch)
            for (key, value) in zip(batch, values) {
                guard case .bulkString(let bytes) = value else { continue }   // expired between SCAN and MGET
                do {
                    result[String(key.dropFirst(prefix.count))] = try SessionData(json: bytes)
                } catch {
                    logger.warning("undecodable session value in Redis; skipped",
                                   metadata: ["prefix": "\(prefix)", "error": "\(error)"])
                }
            }
        }
        return result
    }

    public func length() async throws -> Int {
        var count = 0
        try await forEachIDPage { count += $0.count }
        return count
    }

    public func clear() async throws {
        try await removeAll()
    }

    // MARK: - Inspection (beyond the SessionStore contract)

    /// Calls `body` with each page of session ids (prefix removed) that `SCAN MATCH <prefix>* COUNT <scanCount>`
    /// returns, without the duplicates SCAN may return while Redis rehashes. Never `KEYS`: safe on a large keyspace.
    /// On a cluster every primary is scanned in turn (and an id seen on two nodes, during a slot migration, is
    /// reported once).
    public func forEachIDPage(_ body: ([String]) async throws -> Void) async throws {
        var seen = Set<String>()
        for client in try await client().scanClients() {
            var cursor = "0"
            repeat {
                let page = try await client.scan(cursor: cursor, match: matchPattern, count: scanCount)
                cursor = page.cursor
                let ids = page.keys.filter { seen.insert($0).inserted }.map { String($0.dropFirst(prefix.count)) }
                if !ids.isEmpty { try await body(ids) }
            } while cursor != "0"
        }
    }

    /// The bytes stored at the session's key (`GET`), undecoded, or nil: for inspection tools.
    public func rawValue(of id: String) async throws -> [UInt8]? {
        try await client().get(key(for: id))
    }

    /// Seconds until the session expires in Redis (`TTL`), or nil when there is no such session.
    public func timeToLive(_ id: String) async throws -> Int? {
        guard case .integer(let seconds) = try await client().send([Array("TTL".utf8), Array(key(for: id).utf8)]),
              seconds != -2 else {
            return nil
        }
        return seconds
    }

    /// Deletes every session under the prefix, one `DEL` per `SCAN` page (deleting while scanning is safe: SCAN
    /// still returns every key that exists throughout).
    /// - Returns: how many sessions were deleted.
    @discardableResult
    public func removeAll() async throws -> Int {
        let client = try client()
        var removed = 0
        try await forEachIDPage { ids in removed += try await client.delete(ids.map(key(for:))) }
        return removed
    }

    /// `PING` on the calling loop's connection; with one client per loop, also fails while another loop's client
    /// is still reconnecting: a readiness check answered by one loop speaks for every loop the balancer may reach.
    public func ping() async throws {
        try await client().ping()
        if case .perLoop(let perLoop) = clients {
            let reconnecting = perLoop.disconnectedCount()
            guard reconnecting == 0 else {
                throw RedisClientError.notConnected.with(
                    "\(reconnecting) other event loop(s) still reconnecting to Redis")
            }
        }
    }

    // MARK: - Helpers

    /// connect-redis's `_getTTL`: `Math.ceil((expires - Date.now()) / 1000)`, else the default ttl.
    func ttl(for session: SessionData, now: Date = Date()) -> Int {
        RedisSessionStore.ttl(for: session, defaultTTL: ttl, now: now)
    }

    static func ttl(for session: SessionData, defaultTTL: Int, now: Date) -> Int {
        guard let expires = session.cookie.expires else { return defaultTTL }
        let ms = expires.javaScriptMilliseconds - now.javaScriptMilliseconds
        let seconds = ms >= 0 ? (ms + 999) / 1000 : -((-ms) / 1000)   // ceil, also for negatives
        return Int(clamping: seconds)
    }

    /// `<prefix>*`, with the prefix's glob characters escaped (connect-redis does not, so a prefix like `s[1]:`
    /// would match other keys there).
    var matchPattern: String {
        var pattern = ""
        for character in prefix {
            if "*?[]\\".contains(character) { pattern.append("\\") }
            pattern.append(character)
        }
        return pattern + "*"
    }

    /// Where writes go: with `waitForReplicas`, a one-server store's second connection per loop (WAIT blocks its
    /// connection, and reads must not queue behind it; a cluster picks its nodes' second connections itself). A
    /// store on one given client, or on Sentinel's primary, has only the one connection.
    func writeClient() throws -> any RedisSessionTarget {
        guard waitForReplicas > 0, case .perLoop(let perLoop) = clients else { return try client() }
        return try perLoop.waitClient()
    }

    func client() throws -> any RedisSessionTarget {
        switch clients {
        case .single(let client): client
        case .perLoop(let perLoop): try perLoop.client()
        case .cluster(let cluster): cluster
        case .sentinel(let sentinel): try sentinel.client()
        }
    }
}

/// An unexpected reply while listing sessions.
public struct RedisSessionStoreError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

private enum ClientSource: Sendable {
    case single(RedisClient)
    case perLoop(PerLoopClients)
    case cluster(RedisClusterClient)
    case sentinel(SentinelClients)
}

/// One client per event loop, made lazily. Redis connections belong to one loop thread, so each loop that
/// serves requests gets its own connection rather than hopping to a shared one.
private final class PerLoopClients: Sendable {
    let configuration: RedisConfiguration
    // Keyed by the loop's identity; each client holds its loop strongly, so an identifier is never reused while
    // its entry exists. A short list rather than a dictionary: there are as many loops as server threads, and
    // comparing a few identities is cheaper than hashing one for the lookup every command makes.
    private let clients = Mutex<[(loop: ObjectIdentifier, client: RedisClient)]>([])
    /// A second connection per loop for writes followed by WAIT, made only when asked for: WAIT blocks its
    /// connection, and the loop's reads must not queue behind it.
    private let waitClients = Mutex<[(loop: ObjectIdentifier, client: RedisClient)]>([])
    private let loops = FallbackLoop(name: "redis-session-store")

    init(configuration: RedisConfiguration) {
        var configuration = configuration
        // One story in the log for all of the store's connections (one per loop, and the start-up one).
        configuration.connectionLog = RedisConnectionLog()
        self.configuration = configuration
    }

    func client() throws -> RedisClient {
        let loop = try loops.current()
        return clients.withLock { Self.client(in: &$0, loop: loop, configuration: configuration) }
    }

    /// The calling loop's second client, for writes followed by WAIT.
    func waitClient() throws -> RedisClient {
        let loop = try loops.current()
        return waitClients.withLock { Self.client(in: &$0, loop: loop, configuration: configuration) }
    }

    private static func client(in clients: inout [(loop: ObjectIdentifier, client: RedisClient)], loop: EventLoop,
                               configuration: RedisConfiguration) -> RedisClient {
        let id = ObjectIdentifier(loop)
        for entry in clients where entry.loop == id { return entry.client }
        let client = RedisClient(configuration: configuration, loop: loop)
        clients.append((id, client))
        return client
    }

    /// How many of the clients made so far are not connected.
    func disconnectedCount() -> Int {
        clients.withLock { clients in clients.count { !$0.client.isConnected } }
    }

    deinit {
        for client in clients.withLock({ $0.map(\.client) }) + waitClients.withLock({ $0.map(\.client) }) {
            client.close()
        }
        loops.shutdown()
    }
}
