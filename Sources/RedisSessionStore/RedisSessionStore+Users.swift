#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import RedisClient

// The index of each user's sessions in Redis (the rules are in UserSessions.swift): one sorted set per user,
// members the session ids, scores the bounds (JavaScript milliseconds) past which an entry may go. Every command
// names one key, so on a Redis Cluster each goes to its own slot's primary; the index is written by one script on
// its one key (drop passed entries, add or remove, move the key's expiry to the largest bound).

extension RedisSessionStore: UserSessionStore {
    /// The Redis key of `user`'s index: `evserver-users:<prefix><SHA-256 of the name, hex>`, so any name makes a
    /// safe key of fixed length, and the key is outside `<prefix>*` (listing, counting and clearing sessions never
    /// meet it). For a prefix that `evserver-users:` itself starts with, `~evserver-users:<prefix>...`.
    public func indexKey(ofUser user: String) -> String {
        var head = "evserver-users:"
        if head.hasPrefix(prefix) { head = "~" + head }
        return head + prefix + sha256Hex(user)
    }

    public func lifetime(of session: SessionData, now: Date) -> Int64 {
        guard let expires = session.cookie.expires else { return Int64(ttl) * 1000 }
        return max(0, expires.javaScriptMilliseconds - now.javaScriptMilliseconds)
    }

    public func index(_ id: String, user: String, until bound: Int64) async throws {
        _ = try await runIndexScript(user: user, op: IndexOp.add, [Array(String(bound).utf8), Array(id.utf8)])
    }

    public func sessions(ofUser user: String) async throws -> [UserSession] {
        let ids = try await indexedIds(ofUser: user)
        guard !ids.isEmpty else { return [] }
        let now = Date()
        let found = try await inspect(ids)
        var live: [UserSession] = []
        var gone: [[UInt8]] = []
        for (id, value, millisecondsLeft) in found {
            // Gone (expired, destroyed by any path), unreadable, or somebody else's: not this user's session.
            guard let value, millisecondsLeft != -2, let data = decode(value), let owner = SessionOwner(data.values),
                  owner.name == user else {
                gone.append(Array(id.utf8))
                continue
            }
            let expiresAt = millisecondsLeft >= 0 ? now.addingTimeInterval(Double(millisecondsLeft) / 1000) : nil
            let lifetime = data.cookie.originalMaxAge ?? Int64(ttl) * 1000
            live.append(UserSession(
                id: id, user: user, signedInAt: owner.since.map { Date(javaScriptMilliseconds: $0) },
                lastActiveAt: expiresAt.map { $0.addingTimeInterval(-Double(lifetime) / 1000) },
                expiresAt: expiresAt, client: owner.client))
        }
        if !gone.isEmpty { _ = try await runIndexScript(user: user, op: IndexOp.remove, gone) }
        return live.sorted { ($0.signedInAt ?? .distantPast, $0.id) < ($1.signedInAt ?? .distantPast, $1.id) }
    }

    /// Deletes the sessions (one `DEL` per slot), then their entries, then reads the index again for entries that
    /// appeared meanwhile (a session regenerated while this ran: its new id is indexed before its old one is
    /// deleted), up to four times.
    @discardableResult
    public func destroySessions(ofUser user: String, except: String?) async throws -> Int {
        var ended = 0
        var seen = Set<String>()
        for _ in 0..<4 {
            let ids = try await indexedIds(ofUser: user).filter { $0 != except && !seen.contains($0) }
            guard !ids.isEmpty else { break }
            seen.formUnion(ids)
            ended += try await writeClient().delete(ids.map(key(for:)))
            _ = try await runIndexScript(user: user, op: IndexOp.remove, ids.map { Array($0.utf8) })
        }
        return ended
    }

    @discardableResult
    nonisolated(nonsending) public func destroy(_ id: String, ofUser user: String) async throws -> Bool {
        let reply = try await writeClient().write([Keyword.del, keyBytes(for: id)], waitingFor: waitForReplicas)
        _ = try await runIndexScript(user: user, op: IndexOp.remove, [Array(id.utf8)])
        return reply == .integer(1)
    }

    /// The ids in `user`'s index whose bound has not passed (the passed ones are dropped in the same script).
    public func indexedIds(ofUser user: String) async throws -> [String] {
        let reply = try await runIndexScript(user: user, op: IndexOp.list, [])
        guard case .array(let items) = reply else {
            throw RedisSessionStoreError("unexpected reply to the user index script: \(reply.kindDescription)")
        }
        return items.compactMap { item in
            guard case .bulkString(let bytes) = item else { return nil }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    // MARK: - Helpers

    /// One GET and one PTTL per id, sent together (pipelined on each connection; on a cluster, to each key's
    /// primary), at most 256 ids in flight. The request's shared time budget is charged the wall time once, not
    /// each command's wait.
    private func inspect(_ ids: [String]) async throws -> [(String, [UInt8]?, Int)] {
        let client = try client()
        let budget = RedisTimeBudget.current
        let start = ContinuousClock.now
        defer { budget?.record(ContinuousClock.now - start) }
        return try await RedisTimeBudget.$current.withValue(nil) {
            try await withThrowingTaskGroup(of: (Int, [UInt8]?, Int).self) { group in
                var results = [(String, [UInt8]?, Int)](repeating: ("", nil, -2), count: ids.count)
                for (position, id) in ids.enumerated() {
                    if position >= 256, let (done, value, ttl) = try await group.next() {
                        results[done] = (ids[done], value, ttl)
                    }
                    let key = key(for: id)
                    group.addTask {
                        async let value = client.get(key)
                        async let left = client.send([Array("PTTL".utf8), Array(key.utf8)])
                        let ttl: Int
                        switch try await left {
                        case .integer(let milliseconds): ttl = milliseconds
                        default: ttl = -2
                        }
                        do {
                            return (position, try await value, ttl)
                        } catch let error as RedisError where error.code == "WRONGTYPE" {
                            return (position, nil, -2)   // not a session: forgotten like a gone one
                        }
                    }
                }
                for try await (position, value, ttl) in group { results[position] = (ids[position], value, ttl) }
                return results
            }
        }
    }

    private func runIndexScript(user: String, op: [UInt8], _ rest: [[UInt8]]) async throws -> RedisValue {
        let key = Array(indexKey(ofUser: user).utf8)
        let now = Array(String(Date().javaScriptMilliseconds).utf8)
        return try await evalWriting(Self.indexScript, on: writeClient(), key: key, arguments: [now, op] + rest)
    }

    private enum IndexOp {
        static let add = Array("a".utf8)
        static let remove = Array("r".utf8)
        static let list = Array("l".utf8)
    }

    /// A user's index. KEYS[1]: the index; ARGV[1]: now (JavaScript milliseconds); ARGV[2]: 'a' (add ARGV[4] with
    /// bound ARGV[3], or raise its bound), 'r' (remove the ids ARGV[3...]) or 'l' (list). Entries whose bound
    /// passed are dropped first; after a write the key expires at its largest bound (an index whose sessions are
    /// all gone leaves nothing behind). 'a' and 'r' return the entry count, 'l' the ids. Written without ZADD GT
    /// (Redis 6.2) so it runs on older servers too.
    static let indexScript = RedisScript(#"""
        local key, op = KEYS[1], ARGV[2]
        redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
        if op == 'l' then return redis.call('ZRANGE', key, 0, -1) end
        if op == 'a' then
          local old = redis.call('ZSCORE', key, ARGV[4])
          if not old or tonumber(old) < tonumber(ARGV[3]) then redis.call('ZADD', key, ARGV[3], ARGV[4]) end
        else
          for i = 3, #ARGV do redis.call('ZREM', key, ARGV[i]) end
        end
        local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
        if top[2] then redis.call('PEXPIREAT', key, top[2]) end
        return redis.call('ZCARD', key)
        """#)
}
