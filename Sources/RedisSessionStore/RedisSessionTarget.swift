import EvServer
import RedisClient

// Where RedisSessionStore's commands go: one server's client (per loop), a cluster, or the client of the primary
// Sentinel names. The store speaks to all three through this one internal protocol; RedisClient and
// RedisClusterClient already have the typed commands, so most requirements are met by what they are.

/// The commands ``RedisSessionStore`` sends, with the operations whose shape differs on a cluster (listing,
/// multi-key reads, WAIT on the node that took the write) spelled out.
///
/// The two commands of the request path are `nonisolated(nonsending)`: the store's call through the existential
/// then runs on the caller's executor, so neither the witness nor the store, after the call returns, goes through
/// an executor check (RedisClient's implementations are nonsending too; a cluster's get a hop in their thunk).
protocol RedisSessionTarget: Sendable {
    func get(_ key: String) async throws -> [UInt8]?
    /// GETEX of the key `prefix + id` (value and TTL refresh in one command); a single server's client encodes it
    /// without making the key a String first.
    nonisolated(nonsending) func get(prefix: String, id: String, refreshingExpiry seconds: Int) async throws -> [UInt8]?
    @discardableResult func expire(_ key: String, after seconds: Int) async throws -> Bool
    /// DEL; on a cluster, keys of several slots are split into one DEL per slot.
    @discardableResult func delete(_ keys: [String]) async throws -> Int
    func ping() async throws
    /// A command on one key (or keys that share a slot).
    func send(_ arguments: [[UInt8]]) async throws -> RedisValue
    /// A write on one key; then, when `replicas` > 0, `WAIT replicas <remaining deadline>` on the connection that
    /// took it, throwing ``RedisReplicationError`` when fewer replicas acknowledged in time.
    nonisolated(nonsending) func write(_ arguments: [[UInt8]], waitingFor replicas: Int) async throws -> RedisValue
    /// One client per primary, to SCAN them all.
    func scanClients() async throws -> [RedisClient]
    /// The values of `keys` (MGET; on a cluster one MGET per slot), `.null` for a missing key, in `keys`' order.
    func values(of keys: [String]) async throws -> [RedisValue]
}

extension RedisClient: RedisSessionTarget {
    nonisolated(nonsending) func write(_ arguments: [[UInt8]], waitingFor replicas: Int) async throws -> RedisValue {
        guard replicas > 0 else { return try await send(arguments) }
        // One deadline for the write and its WAIT together, not one each.
        return try await withOneDeadline(orAfter: configuration.commandTimeout) { _ in
            let reply = try await send(arguments)
            try await confirmReplication(replicas, on: self)
            return reply
        }
    }

    func scanClients() async throws -> [RedisClient] { [self] }

    func values(of keys: [String]) async throws -> [RedisValue] {
        guard !keys.isEmpty else { return [] }
        let reply = try await send([Array("MGET".utf8)] + keys.map { Array($0.utf8) })
        guard case .array(let values) = reply, values.count == keys.count else {
            throw RedisClientError.unexpectedReply.with("MGET answered \(reply.kindDescription) of another size")
        }
        return values
    }
}

extension RedisClusterClient: RedisSessionTarget {
    nonisolated(nonsending) func get(prefix: String, id: String, refreshingExpiry seconds: Int) async throws -> [UInt8]? {
        try await get(prefix + id, refreshingExpiry: seconds)
    }

    func write(_ arguments: [[UInt8]], waitingFor replicas: Int) async throws -> RedisValue {
        guard replicas > 0 else { return try await send(arguments) }
        // One deadline for the write (with its redirections and retries) and its WAIT together; on the nodes'
        // second connections, so that reads never queue behind a WAIT.
        return try await withOneDeadline(orAfter: configuration.node.commandTimeout) { deadline in
            let (reply, client) = try await execute(arguments, slot: Self.routingSlot(of: arguments), forWaits: true,
                                                    deadline: deadline)
            try await confirmReplication(replicas, on: client)
            return reply
        }
    }

    func scanClients() async throws -> [RedisClient] { try await primaries() }

    func values(of keys: [String]) async throws -> [RedisValue] {
        var found: [String: RedisValue] = [:]
        for group in Self.groupedBySlot(keys) {
            let reply = try await send([Array("MGET".utf8)] + group.map { Array($0.utf8) })
            guard case .array(let values) = reply, values.count == group.count else {
                throw RedisClientError.unexpectedReply.with("MGET answered \(reply.kindDescription) of another size")
            }
            for (key, value) in zip(group, values) { found[key] = value }
        }
        return keys.map { found[$0] ?? .null }
    }
}

/// `WAIT replicas timeout` on `client`'s connection, right after a write on it, where the timeout is what is left
/// of the deadline (``RedisDeadline/current``, else the client's command timeout) minus a fifth, at least 120 ms:
/// Redis notices a blocked client's timeout in its event loop, which wakes every 100 ms (hz 10), so WAIT may answer
/// that much late, and its reply must arrive before the command itself times out (a client that times out on a
/// silent connection drops it).
/// - Throws: ``RedisReplicationError`` when fewer than `replicas` acknowledged.
func confirmReplication(_ replicas: Int, on client: RedisClient) async throws {
    let now = ContinuousClock.now
    let deadline = RedisDeadline.effective ?? now + client.configuration.commandTimeout
    let remaining = deadline - now
    let margin = max(.milliseconds(120), remaining / 5)
    guard remaining > margin else {
        throw RedisReplicationError(required: replicas, acknowledged: 0, detail: "no time left to WAIT")
    }
    let acknowledged = try await client.wait(forReplicas: replicas, timeout: remaining - margin)
    guard acknowledged >= replicas else {
        throw RedisReplicationError(required: replicas, acknowledged: acknowledged,
                                    detail: "WAIT timed out after \(remaining - margin)")
    }
}

/// A write reached its primary but not enough replicas acknowledged it in time (`--redis-wait-replicas`). The
/// write may still be on the primary (and may reach replicas later): the request is answered 503, not "saved".
public struct RedisReplicationError: Error, Sendable, CustomStringConvertible {
    /// How many replicas had to acknowledge.
    public let required: Int
    /// How many did, within the deadline.
    public let acknowledged: Int
    let detail: String

    public var description: String {
        "only \(acknowledged) of \(required) required Redis replicas acknowledged the write (\(detail))"
    }
}
