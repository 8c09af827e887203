import Dispatch
import EvServer
import Logging
import Synchronization

/// A Redis Cluster client on the same connections as ``RedisClient``: one ``RedisClient`` per node per
/// ``EventLoop``, opened on first use from that loop, each command sent to the primary that serves its key's slot.
///
/// - Routing: slot = CRC16(key) mod 16384 with `{hash tag}`s (``RedisClusterSlot``); the slot map comes from
///   `CLUSTER SLOTS` through any reachable node (seeds first, then the nodes the cluster named). Before the first
///   map is known, commands go to a seed and its `MOVED` replies fill the map in.
/// - `MOVED slot host:port`: the slot is updated, the command retried on that node at once, and a topology refresh
///   scheduled (at most one runs at a time, and not more often than
///   ``RedisClusterConfiguration/minimumRefreshInterval``).
/// - `ASK slot host:port` (a slot being migrated): `ASKING` + the command on that node, once; the map is kept.
/// - `TRYAGAIN`, `CLUSTERDOWN`, and a node that cannot be reached (``RedisClientError/notConnected``,
///   ``RedisClientError/connectFailed``: the command was never sent) are retried with back-off (10 ms doubling to
///   200 ms) while the command's deadline allows: ``RedisDeadline/current`` when set, else the start plus
///   ``RedisConfiguration/commandTimeout``. Then the last error is thrown. A command whose connection was lost
///   after it was sent (``RedisClientError/connectionClosed``) or that timed out is *not* retried: it may have run
///   (a refresh is scheduled, as for a lost node).
///
/// Commands are routed by their first key: the argument after the command name, or the first key after `numkeys`
/// for `EVAL`/`EVALSHA`/`FCALL`. Node-level commands (`PING`, `INFO`, `DBSIZE`, `SCAN`, ...) go to one arbitrary
/// node; to run one on every primary, use ``primaries()``. A multi-key command must keep its keys in one slot
/// (Redis answers `CROSSSLOT` otherwise), except ``delete(_:)``, which splits its keys by slot.
///
/// Thread safety: all methods may be called from any thread or task. A call from a task running on an
/// ``EventLoop`` uses that loop's connections; calls from elsewhere use a loop thread the client starts for itself.
public final class RedisClusterClient: Sendable {
    /// The seeds and per-node settings.
    public let configuration: RedisClusterConfiguration
    private let logger: Logger
    private let state: Mutex<ClusterState>
    private let loops = FallbackLoop(name: "redis-cluster")

    /// Creates a client; nothing connects until the first command (or ``refreshTopology()``).
    /// - Parameters:
    ///   - configuration: seeds and per-node settings; must name at least one seed, and database 0.
    ///   - logger: where topology changes and node losses are logged (once per change, never per command).
    public init(configuration: RedisClusterConfiguration,
                logger: Logger = Logger(label: "evserver.redis.cluster")) {
        precondition(!configuration.seeds.isEmpty, "RedisClusterConfiguration needs at least one seed")
        precondition(configuration.node.database == 0, "a Redis Cluster has only database 0")
        self.configuration = configuration
        self.logger = logger
        self.state = Mutex(ClusterState())
    }

    deinit {
        close()
    }

    // MARK: - Commands

    /// Sends one command to the primary serving its first key (see the type's documentation for routing and
    /// retries) and returns the reply.
    /// - Throws: ``RedisError`` when Redis replies with an error (after following redirections);
    ///   ``RedisClientError`` when no reply comes.
    public func send(_ arguments: [[UInt8]]) async throws -> RedisValue {
        precondition(!arguments.isEmpty, "RedisClusterClient.send needs at least a command name")
        let slot = Self.routingSlot(of: arguments)
        return try await withOneDeadline(orAfter: configuration.node.commandTimeout) { deadline in
            try await execute(arguments, slot: slot, forWaits: false, deadline: deadline).reply
        }
    }

    /// Sends one command given as strings (each sent as its UTF-8 bytes) and returns the reply.
    public func send(_ arguments: String...) async throws -> RedisValue {
        try await send(arguments.map { Array($0.utf8) })
    }

    /// [GET](https://redis.io/commands/get/) on the key's primary.
    /// - Returns: the value's bytes, or nil when the key does not exist.
    public func get(_ key: String) async throws -> [UInt8]? {
        try optionalBytes(await send([Array("GET".utf8), Array(key.utf8)]), command: "GET")
    }

    /// [GETEX](https://redis.io/commands/getex/) key EX seconds on the key's primary.
    /// - Returns: the value's bytes, or nil when the key does not exist.
    public func get(_ key: String, refreshingExpiry seconds: Int) async throws -> [UInt8]? {
        try optionalBytes(await send([Array("GETEX".utf8), Array(key.utf8), Array("EX".utf8),
                                      Array(String(seconds).utf8)]), command: "GETEX")
    }

    /// [SET](https://redis.io/commands/set/) key value [EX seconds] on the key's primary.
    public func set(_ key: String, to value: [UInt8], expiresIn seconds: Int? = nil) async throws {
        var arguments = [Array("SET".utf8), Array(key.utf8), value]
        if let seconds { arguments += [Array("EX".utf8), Array(String(seconds).utf8)] }
        let reply = try await send(arguments)
        guard case .simpleString = reply else { throw unexpected(reply, command: "SET", expected: "OK") }
    }

    /// [EXPIRE](https://redis.io/commands/expire/) on the key's primary; returns whether the key existed.
    @discardableResult
    public func expire(_ key: String, after seconds: Int) async throws -> Bool {
        let reply = try await send([Array("EXPIRE".utf8), Array(key.utf8), Array(String(seconds).utf8)])
        guard case .integer(let value) = reply else { throw unexpected(reply, command: "EXPIRE", expected: "integer") }
        return value == 1
    }

    /// [DEL](https://redis.io/commands/del/): one `DEL` per slot among `keys`; returns how many keys were removed.
    @discardableResult
    public func delete(_ keys: [String]) async throws -> Int {
        var removed = 0
        for group in Self.groupedBySlot(keys) {
            let reply = try await send([Array("DEL".utf8)] + group.map { Array($0.utf8) })
            guard case .integer(let value) = reply else { throw unexpected(reply, command: "DEL", expected: "integer") }
            removed += value
        }
        return removed
    }

    /// Runs a prepared script with EVALSHA on the primary of `keys[0]` (all keys must share a slot), falling back
    /// to EVAL when that node does not have it cached (`NOSCRIPT`).
    public func eval(_ script: RedisScript, keys: [String], arguments: [[UInt8]] = []) async throws -> RedisValue {
        try await script.run(keys: keys, arguments: arguments) { try await send($0) }
    }

    /// [PING](https://redis.io/commands/ping/): succeeds when one of the cluster's nodes answers (the cluster is
    /// reachable; a single failed primary does not make it fail, as the other slots are still served).
    public func ping() async throws {
        let loop = try currentLoop()
        var lastError: any Error = RedisClusterError("no node to ping")
        for address in candidates(on: loop) {
            do {
                let reply = try await client(for: address, on: loop).send([Array("PING".utf8)])
                guard case .simpleString = reply else { throw unexpected(reply, command: "PING", expected: "PONG") }
                return
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// Refreshes the slot map and returns one client per primary, for the calling loop: to run node-level commands
    /// such as `SCAN` or `DBSIZE` on each. The clients belong to this cluster client: do not close them.
    /// - Throws: ``RedisClusterError`` when no node answers `CLUSTER SLOTS`.
    public func primaries() async throws -> [RedisClient] {
        let loop = try currentLoop()
        try await refresh(on: loop)
        let addresses = state.withLock { $0.primaries }
        return try addresses.map { try client(for: $0, on: loop) }
    }

    /// Asks a reachable node for the slot map now (`CLUSTER SLOTS`), whatever the rate limit.
    /// - Throws: ``RedisClusterError`` (with each node's failure) when no node answers.
    public func refreshTopology() async throws {
        try await refresh(on: try currentLoop())
    }

    /// The primary currently believed to serve `slot`, or nil before the slot map is known.
    public func primary(forSlot slot: Int) -> RedisAddress? {
        state.withLock { $0.primary(forSlot: slot) }
    }

    /// Closes every node connection; later commands fail with ``RedisClientError/connectionClosed``. Idempotent.
    public func close() {
        let clients = state.withLock { state -> [RedisClient] in
            state.closed = true
            defer { state.clients.removeAll() }
            return Array(state.clients.values)
        }
        for client in clients { client.close() }
        loops.shutdown()
    }

    // MARK: - Routing and retries

    /// Runs `arguments` on the node serving `slot` (any node when nil), following redirections and retrying as
    /// the type's documentation says, until `deadline`. The caller runs it inside
    /// ``withOneDeadline(orAfter:isolation:_:)``, so that every attempt shares that deadline: a node's client
    /// (which honours ``RedisDeadline``) never gives a retry a fresh commandTimeout of its own.
    /// - Parameter forWaits: use the nodes' second connections, the ones writes followed by `WAIT` go through (a
    ///   `WAIT` blocks its connection; other commands must not queue behind it).
    /// - Returns: the reply and the client of the node that gave it (WAIT must go to that same connection).
    package func execute(_ arguments: [[UInt8]], slot: Int?, forWaits: Bool,
                         deadline: ContinuousClock.Instant) async throws -> (reply: RedisValue, client: RedisClient) {
        let loop = try currentLoop()
        var redirections = 0
        var asking: RedisAddress?
        var backoff = Duration.milliseconds(10)
        while true {
            let address = asking ?? target(forSlot: slot)
            let client = try client(for: address, on: loop, forWaits: forWaits)
            let failure: any Error
            do {
                let reply = try await asking != nil ? client.sendAsking(arguments) : client.send(arguments)
                return (reply, client)
            } catch let error as RedisError {
                switch error.code {
                case "MOVED", "ASK":
                    guard let redirection = Redirection(error.message, from: address) else { throw error }
                    redirections += 1
                    guard redirections <= configuration.maximumRedirections else {
                        scheduleRefresh(on: loop)
                        throw RedisClusterError("\(redirections) redirections for one command (last: "
                                                + "\(error.message)); the cluster's nodes disagree on the slot map")
                    }
                    if error.code == "MOVED" {
                        asking = nil
                        state.withLock { $0.assign(slot: redirection.slot, to: redirection.address) }
                        scheduleRefresh(on: loop)
                    } else {
                        asking = redirection.address
                    }
                    continue   // a redirection is followed at once: the node named is there
                case "TRYAGAIN":
                    // A multi-key command during a slot migration: the keys are split between two nodes.
                    failure = error
                case "CLUSTERDOWN":
                    scheduleRefresh(on: loop)
                    failure = error
                default:
                    throw error
                }
            } catch let error as RedisClientError where error == .notConnected || error == .connectFailed {
                // Never sent: the node is down or unreachable. A failover may be under way; the refresh finds the
                // promoted replica once the cluster has promoted it.
                scheduleRefresh(on: loop)
                failure = error
            } catch let error as RedisClientError where error == .connectionClosed || error == .timeout {
                // It may have run: not retried. The node may be gone, or cut off: look at the map again.
                scheduleRefresh(on: loop)
                throw error
            }
            asking = nil
            let now = ContinuousClock.now
            guard now + backoff < deadline else { throw failure }
            try await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .milliseconds(200))
        }
    }

    /// The slot a command is routed by: its first key's, or nil for commands without keys.
    package static func routingSlot(of arguments: [[UInt8]]) -> Int? {
        guard arguments.count > 1 else { return nil }
        switch commandName(arguments[0]) {
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            guard arguments.count > 3, let keys = Int(String(decoding: arguments[2], as: UTF8.self)), keys > 0 else {
                return nil
            }
            return RedisClusterSlot.slot(forKey: arguments[3])
        case "PING", "ECHO", "INFO", "DBSIZE", "TIME", "WAIT", "CLUSTER", "CONFIG", "CLIENT", "COMMAND", "SCRIPT",
             "FUNCTION", "SCAN", "KEYS", "RANDOMKEY", "FLUSHDB", "FLUSHALL", "ROLE", "LASTSAVE", "READONLY",
             "READWRITE", "ASKING", "AUTH", "HELLO", "SLOWLOG", "LATENCY", "MEMORY", "DEBUG", "SHUTDOWN":
            return nil
        default:
            return RedisClusterSlot.slot(forKey: arguments[1])
        }
    }

    /// `keys` split into groups that share a slot (each group keeps the keys' order).
    package static func groupedBySlot(_ keys: [String]) -> [[String]] {
        var groups: [Int: [String]] = [:]
        var order: [Int] = []
        for key in keys {
            let slot = RedisClusterSlot.slot(forKey: key)
            if groups[slot] == nil { order.append(slot) }
            groups[slot, default: []].append(key)
        }
        return order.map { groups[$0]! }
    }

    /// Where to send a command for `slot`: its primary, or (slot unknown, or no slot) some known node or seed.
    private func target(forSlot slot: Int?) -> RedisAddress {
        state.withLock { state in
            if let slot, let primary = state.primary(forSlot: slot) { return primary }
            return state.anyNode(seeds: configuration.seeds)
        }
    }

    // MARK: - Connections

    /// The loop of the calling task, or the client's own loop thread for callers outside any loop.
    private func currentLoop() throws -> EventLoop {
        try loops.current()
    }

    /// The client for `address` on `loop` (its second one, for writes followed by WAIT, with `forWaits`), created
    /// (and connecting) on first use.
    private func client(for address: RedisAddress, on loop: EventLoop, forWaits: Bool = false) throws -> RedisClient {
        try state.withLock { state in
            guard !state.closed else {
                throw RedisClientError.connectionClosed.with("the cluster client was closed")
            }
            let key = ClientKey(loop: ObjectIdentifier(loop), address: address, forWaits: forWaits)
            if let client = state.clients[key] { return client }
            var logger = self.logger
            logger[metadataKey: "node"] = "\(address)"
            var node = configuration.node.pointing(to: address)
            node.role = "cluster node"
            let client = RedisClient(configuration: node, loop: loop,
                                     logger: logger)
            state.clients[key] = client
            return client
        }
    }

    /// Nodes worth asking for the topology or a PING, best first: known primaries already connected on `loop`,
    /// the other known nodes, then the seeds.
    private func candidates(on loop: EventLoop) -> [RedisAddress] {
        state.withLock { state in
            let known = state.primaries + state.replicas
            var seen = Set<RedisAddress>()
            let all = (known + configuration.seeds).filter { seen.insert($0).inserted }
            let connected = all.filter {
                state.clients[ClientKey(loop: ObjectIdentifier(loop), address: $0, forWaits: false)]?.isConnected ?? false
            }
            let others = all.filter { !connected.contains($0) }
            return connected.shuffled() + others
        }
    }

    // MARK: - Topology

    /// Starts a topology refresh on `loop` unless one is running or the last one started less than
    /// ``RedisClusterConfiguration/minimumRefreshInterval`` ago.
    private func scheduleRefresh(on loop: EventLoop) {
        let now = ContinuousClock.now
        let start = state.withLock { state -> Bool in
            guard !state.refreshing, !state.closed else { return false }
            if let last = state.lastScheduledRefresh, now - last < configuration.minimumRefreshInterval { return false }
            state.refreshing = true
            state.lastScheduledRefresh = now
            return true
        }
        guard start else { return }
        Task(executorPreference: loop) {
            do {
                try await self.refresh(on: loop)
            } catch {
                self.logger.debug("cluster topology refresh failed: \(error)")
            }
            self.state.withLock { $0.refreshing = false }
        }
    }

    /// Asks the candidates, one after the other, for `CLUSTER SLOTS` and installs the first answer.
    private func refresh(on loop: EventLoop) async throws {
        var failures: [String] = []
        for address in candidates(on: loop) {
            do {
                let reply = try await client(for: address, on: loop).send([Array("CLUSTER".utf8),
                                                                           Array("SLOTS".utf8)])
                let topology = try Topology(clusterSlots: reply, askedNode: address)
                let changed = state.withLock { $0.install(topology) }
                if changed {
                    logger.info("Redis Cluster topology", metadata: [
                        "primaries": "\(topology.primaries.map(\.description).joined(separator: ","))",
                        "replicas": "\(topology.replicas.count)",
                        "slots_covered": "\(topology.coveredSlots)",
                    ])
                }
                return
            } catch let error as RedisClientError where error == .connectionClosed && state.withLock({ $0.closed }) {
                throw error
            } catch {
                failures.append("\(address): \(error)")
            }
        }
        throw RedisClusterError("no cluster node answered CLUSTER SLOTS (" + failures.joined(separator: "; ") + ")")
    }
}

/// The cluster as a whole misbehaved: no node answers `CLUSTER SLOTS`, or the nodes keep redirecting a command.
public struct RedisClusterError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, one line.
    public let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - State

private struct ClientKey: Hashable {
    let loop: ObjectIdentifier
    let address: RedisAddress
    /// The node's second connection, for writes followed by WAIT.
    let forWaits: Bool
}

/// What the client knows of the cluster, and its connections; always used under the client's lock.
private struct ClusterState {
    /// The primaries; `slots` holds indices into it.
    var primaries: [RedisAddress] = []
    var replicas: [RedisAddress] = []
    /// For each slot, the index of its primary in `primaries`, or -1 when unknown.
    var slots = [Int16](repeating: -1, count: RedisClusterSlot.count)
    /// Keyed by loop and node. Each client holds its loop strongly, so a loop's identifier is not reused while
    /// its entries exist.
    var clients: [ClientKey: RedisClient] = [:]
    var refreshing = false
    var lastScheduledRefresh: ContinuousClock.Instant?
    var closed = false
    /// Rotates the node used for keyless commands and unknown slots.
    var nextAny = 0

    func primary(forSlot slot: Int) -> RedisAddress? {
        let index = Int(slots[slot])
        return index >= 0 ? primaries[index] : nil
    }

    mutating func anyNode(seeds: [RedisAddress]) -> RedisAddress {
        let pool = primaries.isEmpty ? seeds : primaries
        nextAny &+= 1
        return pool[nextAny % pool.count]
    }

    /// What a `MOVED` says: `slot` is now served by `address`.
    mutating func assign(slot: Int, to address: RedisAddress) {
        guard slots.indices.contains(slot) else { return }
        if let index = primaries.firstIndex(of: address) {
            slots[slot] = Int16(index)
        } else if primaries.count < Int(Int16.max) {
            primaries.append(address)
            slots[slot] = Int16(primaries.count - 1)
        }
    }

    /// Installs a fresh slot map; returns whether the set of primaries or the map changed.
    mutating func install(_ topology: Topology) -> Bool {
        let changed = topology.primaries != primaries || topology.slots != slots
        primaries = topology.primaries
        replicas = topology.replicas
        slots = topology.slots
        return changed
    }
}

/// A parsed `CLUSTER SLOTS` reply.
private struct Topology {
    var primaries: [RedisAddress] = []
    var replicas: [RedisAddress] = []
    var slots = [Int16](repeating: -1, count: RedisClusterSlot.count)

    var coveredSlots: Int { slots.lazy.filter { $0 >= 0 }.count }

    /// `[[start, end, [host, port, id, ...], [replica host, port, id, ...]...], ...]`. An empty host or `?` means
    /// "the node you asked" (Redis 7 announces no address for a node it knows none for).
    init(clusterSlots reply: RedisValue, askedNode: RedisAddress) throws {
        guard case .array(let ranges) = reply else {
            throw RedisClusterError("CLUSTER SLOTS answered \(reply.kindDescription), expected an array")
        }
        func node(_ value: RedisValue) throws -> RedisAddress {
            guard case .array(let parts) = value, parts.count >= 2, let host = parts[0].string,
                  let port = parts[1].integer, (1...65535).contains(port) else {
                throw RedisClusterError("CLUSTER SLOTS: a node entry is not [host, port, ...]")
            }
            return RedisAddress(host: host.isEmpty || host == "?" ? askedNode.host : host, port: port)
        }
        for range in ranges {
            guard case .array(let parts) = range, parts.count >= 3, let start = parts[0].integer,
                  let end = parts[1].integer, 0 <= start, start <= end, end < RedisClusterSlot.count else {
                throw RedisClusterError("CLUSTER SLOTS: a range is not [start, end, primary, ...]")
            }
            let primary = try node(parts[2])
            let index: Int
            if let known = primaries.firstIndex(of: primary) {
                index = known
            } else {
                primaries.append(primary)
                index = primaries.count - 1
            }
            for slot in start...end { slots[slot] = Int16(index) }
            for replica in parts.dropFirst(3) {
                let address = try node(replica)
                if !replicas.contains(address) { replicas.append(address) }
            }
        }
        guard !primaries.isEmpty else { throw RedisClusterError("CLUSTER SLOTS: no slot is served") }
    }
}

/// A `MOVED slot host:port` or `ASK slot host:port` error reply.
private struct Redirection {
    let slot: Int
    let address: RedisAddress

    /// - Parameter node: the node that replied; its host stands in for an empty one (`MOVED 3999 :7002`, which
    ///   Redis 7 sends when it knows no address to announce).
    init?(_ message: String, from node: RedisAddress) {
        let words = message.split(separator: " ")
        guard words.count == 3, let slot = Int(words[1]), (0..<RedisClusterSlot.count).contains(slot) else {
            return nil
        }
        let target = words[2].hasPrefix(":") ? node.host + words[2] : String(words[2])
        guard let address = try? RedisAddress(parsing: target) else { return nil }
        self.slot = slot
        self.address = address
    }
}
