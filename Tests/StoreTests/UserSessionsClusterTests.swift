import EvServer
import Foundation
import Synchronization
import Testing
@testable import EvServerApp
@testable import RedisSessionStore

// Sessions per user on the 6-node loopback Redis Cluster (the index and the sessions on different slots) and on
// the primary a sentinel names, three instances (stores of their own) in front of each.

extension ScaleSuites {
    @Suite struct UserSessionsClusterTests {
        @Test func usersAndDevicesOnASixNodeCluster() async throws {
            let cluster = try await PrivateRedisCluster.start()
            defer { cluster.stop() }
            let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
            func store() -> RedisSessionStore {
                RedisSessionStore(cluster: RedisClusterConfiguration(seeds: cluster.seeds), prefix: prefix)
            }
            // Instance 2 gives its sessions a 3 s max age.
            let instances = [try UsersTestServer(store: store()), try UsersTestServer(store: store()),
                             try UsersTestServer(store: store(), maxAge: 3000)]
            defer { for instance in instances { Task { await instance.stop() } } }
            let inspector = store()

            // Three devices on three instances: listed, 3.
            let user = freshUser()
            let (devices, signedIn) = try signInOneDevicePerInstance(instances, as: user)
            let listed = try await inspector.sessions(ofUser: user)
            if ContinuousClock.now - signedIn < .milliseconds(2500) {   // (else the short one may be gone already)
                #expect(Set(listed.map(\.id)) == Set(devices.compactMap(\.sessionID)))
            }
            let indexSlot = RedisClusterSlot.slot(forKey: inspector.indexKey(ofUser: user))
            let sessionSlots = Set(devices.compactMap(\.sessionID).map { RedisClusterSlot.slot(forKey: prefix + $0) })
            #expect(!sessionSlots.contains(indexSlot) || sessionSlots.count > 1, "index and sessions share slots")

            // The short one expires: gone from the list within the documented time (at once).
            let short = try #require(devices[2].sessionID)
            try await Task.sleep(until: signedIn + .milliseconds(3300))
            let afterExpiry = try await inspector.sessions(ofUser: user).map(\.id)
            #expect(afterExpiry.count == 2 && !afterExpiry.contains(short))

            // Regenerate keeping the data: no RENAME across slots; the old id stops working at once.
            _ = try devices[1].freshRequest("POST", "/write/5")
            let old = try #require(devices[1].sessionID)
            #expect(try devices[1].freshRequest("POST", "/rotate").status == 200)
            let new = try #require(devices[1].sessionID)
            #expect(new != old)
            #expect(try await inspector.get(old) == nil)
            #expect(try JSONValue(parsing: try devices[1].freshRequest("GET", "/whoami").body)["n"]?.intValue == 5)
            #expect(Set(try await inspector.sessions(ofUser: user).map(\.id)) == [devices[0].sessionID, new])

            // Destroy-all from device 0: device 1 is a guest on every instance.
            #expect(try JSONValue(parsing: try devices[0].freshRequest("POST", "/everywhere").body)["ended"]?.intValue == 1)
            for instance in instances {
                #expect(try devices[1].through(instance.server.port).user() == nil)
                #expect(try devices[0].through(instance.server.port).user() == user)
            }

            // The limit: with two at most, a third sign-in ends the oldest.
            let limited = try UsersTestServer(store: store(), maxSessionsPerUser: 2)
            let capped = freshUser()
            var capDevices: [TestHTTPClient] = []
            for _ in 0..<3 {
                let device = try limited.client()
                #expect(try device.freshRequest("POST", "/signin/\(capped)").status == 200)
                capDevices.append(device)
                try await Task.sleep(for: .milliseconds(5))
            }
            let cappedUsers = try capDevices.map { try $0.user() }
            await limited.stop()
            #expect(cappedUsers == [nil, capped, capped])
            #expect(try await inspector.sessions(ofUser: capped).map(\.id) == capDevices.dropFirst().map(\.sessionID))

            // The race, on the cluster.
            try await signOutEverywhereWhileOthersWrite(instances, label: "cluster")

            // 10,000 users x 3 sessions with a 3 s lifetime, then all expire: their index keys go too.
            // (A prefix of their own, and the keys left by the steps above removed, so that every key counts.)
            for instance in instances { await instance.stop() }
            _ = try await inspector.removeAll()
            for owner in [user, capped] { try await inspector.destroySessions(ofUser: owner, except: nil) }
            let loadPrefix = "test:\(UUID().uuidString.prefix(8)):load:"
            let load = RedisSessionStore(cluster: RedisClusterConfiguration(seeds: cluster.seeds), prefix: loadPrefix)
            let started = ContinuousClock.now
            let lastBound = try await createSignedInSessions(load, users: 10_000, perUser: 3, lifetime: 3000)
            let created = ContinuousClock.now - started
            let indexPattern = "evserver-users:" + loadPrefix + "*"
            let indexKeysNow = try await countKeys(cluster, matching: indexPattern)
            let sessionKeysNow = try await countKeys(cluster, matching: loadPrefix + "*")
            let wait = Double(lastBound - Date().javaScriptMilliseconds) / 1000 + 0.5
            if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
            let indexKeysAfter = try await countKeys(cluster, matching: indexPattern)
            let sessionKeysAfter = try await countKeys(cluster, matching: loadPrefix + "*")
            #expect(indexKeysNow > 0 && sessionKeysNow > 0, "nothing was created?")
            #expect(indexKeysAfter == 0, "\(indexKeysAfter) index keys outlived their sessions")
            #expect(sessionKeysAfter == 0)
            // Redis's active expiry frees them without anyone reading them: DBSIZE reaches 0 on every primary
            // (the index keys of the steps above, whose sessions were deleted by SCAN and not through the index,
            // excepted: they expire at their own bound, a day away; they are what the DEL below removes).
            let leftover = try await countKeys(cluster, matching: "evserver-users:" + prefix + "*")
            for port in try await cluster.primaries() {
                let client = PrivateRedis.client(port: port)
                defer { client.close() }
                var cursor = "0"
                repeat {
                    let page = try await client.scan(cursor: cursor, match: "evserver-users:" + prefix + "*", count: 1000)
                    cursor = page.cursor
                    for key in page.keys { _ = try await client.send("DEL", key) }
                } while cursor != "0"
            }
            let freed = ContinuousClock.now
            var sizes = try await cluster.keyCountsOnPrimaries()
            while sizes.reduce(0, +) > 0, ContinuousClock.now - freed < .seconds(20) {
                try await Task.sleep(for: .milliseconds(200))
                sizes = try await cluster.keyCountsOnPrimaries()
            }
            #expect(sizes.reduce(0, +) == 0, "keys left on the primaries: \(sizes)")
            print("UserSessionsClusterTests: 30,000 sessions of 10,000 users created in \(created); "
                + "\(indexKeysNow) index keys and \(sessionKeysNow) session keys right after; "
                + "after the last bound: \(indexKeysAfter) index keys, \(sessionKeysAfter) session keys; "
                + "DBSIZE 0 on every primary \(ContinuousClock.now - freed) after that "
                + "(\(leftover) index keys of the earlier steps deleted by hand)")
        }
    }
}

/// Signs in `users` x `perUser` sessions through the store calls ``Session/signIn(user:client:)`` makes (the
/// session written, then its index entry), `lifetime` ms each, 256 at a time.
/// - Returns: the largest bound written.
func createSignedInSessions(_ store: RedisSessionStore, users: Int, perUser: Int, lifetime: Int64) async throws
    -> Int64 {
    let run = UUID().uuidString.prefix(6)
    return try await withThrowingTaskGroup(of: Int64.self) { group in
        var largest: Int64 = 0
        for user in 0..<users {
            if user >= 256, let bound = try await group.next() { largest = max(largest, bound) }
            group.addTask {
                var largest: Int64 = 0
                let name = "load-\(run)-\(user)"
                for _ in 0..<perUser {
                    let now = Date()
                    var cookie = SessionCookie()
                    cookie.setMaxAge(lifetime, now: now)
                    let bound = UserIndexTiming.bound(now: now.javaScriptMilliseconds,
                                                      lifetime: store.lifetime(of: SessionData(cookie: cookie), now: now))
                    var values = JSONObject()
                    values[SessionOwner.key] = SessionOwner(name: name, since: now.javaScriptMilliseconds,
                                                            indexedUntil: bound, client: nil).jsonValue
                    let id = SessionID.generate()
                    _ = try await store.commit(id, SessionWrite(cookie: cookie, changes: SessionChanges(replacesAll: true),
                                                                values: values, base: nil))
                    try await store.index(id, user: name, until: bound)
                    largest = max(largest, bound)
                }
                return largest
            }
        }
        for try await bound in group { largest = max(largest, bound) }
        return largest
    }
}

/// Keys matching `pattern` on every primary (SCAN: logically expired keys are not returned).
func countKeys(_ cluster: PrivateRedisCluster, matching pattern: String) async throws -> Int {
    var total = 0
    for port in try await cluster.primaries() {
        let client = PrivateRedis.client(port: port)
        defer { client.close() }
        total += try await countKeys(client, matching: pattern)
    }
    return total
}

extension ScaleSuites {
    /// The same on the primary Sentinel names: three instances (stores of their own) following one sentinel.
    @Suite struct UserSessionsSentinelTests {
        @Test func usersAndDevicesThroughSentinel() async throws {
            let primary = try PrivateRedis()
            defer { primary.stop() }
            let sentinel = try PrivateSentinel(monitoring: primary.port, quorum: 1)
            defer { sentinel.stop() }
            let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
            let configuration = RedisSentinelConfiguration(sentinels: [sentinel.address], masterName: "mymaster")
            let instances = try (0..<3).map { _ in
                try UsersTestServer(store: RedisSessionStore(sentinel: configuration, prefix: prefix))
            }
            let user = freshUser()
            var devices: [TestHTTPClient] = []
            do {
                // The stores find the primary in the background: the first sign-in may meet 503 for a moment.
                let deadline = ContinuousClock.now + .seconds(10)
                for instance in instances {
                    let device = try instance.client()
                    while try device.freshRequest("POST", "/signin/\(user)").status != 200 {
                        guard ContinuousClock.now < deadline else { throw HarnessFailure("no primary found") }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    devices.append(device)
                }
                let listed = try await instances[2].store.sessions(ofUser: user).map(\.id)
                #expect(Set(listed) == Set(devices.compactMap(\.sessionID)))
                #expect(try devices[1].freshRequest("POST", "/rotate").status == 200)
                #expect(try JSONValue(parsing: try devices[0].freshRequest("POST", "/everywhere").body)["ended"]?.intValue == 2)
                for device in devices.dropFirst() {
                    for instance in instances { #expect(try device.through(instance.server.port).user() == nil) }
                }
                #expect(try await instances[1].store.sessions(ofUser: user).map(\.id) == [devices[0].sessionID])
                // Everything sat on the primary the sentinel names.
                let direct = primary.client()
                defer { direct.close() }
                let indexKey = (instances[0].store as? RedisSessionStore)?.indexKey(ofUser: user) ?? ""
                #expect(try await direct.send("ZCARD", indexKey).integer == 1)
            } catch {
                for instance in instances { await instance.stop() }
                throw error
            }
            for instance in instances { await instance.stop() }
        }
    }
}

extension ScaleSuites {
    /// 10,000 users x 3 sessions on one private redis-server, then all expire: nothing is left, index keys included.
    @Suite struct UserIndexLeakTests {
        @Test func tenThousandUsersLeaveNoIndexKeyBehind() async throws {
            let redis = try PrivateRedis()
            defer { redis.stop() }
            let prefix = "load:sess:"
            let store = try RedisSessionStore(url: "redis://127.0.0.1:\(redis.port)/0", prefix: prefix)
            let started = ContinuousClock.now
            let lastBound = try await createSignedInSessions(store, users: 10_000, perUser: 3, lifetime: 3000)
            let created = ContinuousClock.now - started
            let client = redis.client()
            defer { client.close() }
            func count(_ pattern: String) async throws -> Int { try await countKeys(client, matching: pattern) }
            let indexKeysNow = try await count("evserver-users:*")
            let sessionKeysNow = try await count(prefix + "*")
            func usedMemory() async throws -> String {
                let memory = try await client.send("INFO", "memory").string ?? ""
                return memory.split(separator: "\r\n").first { $0.hasPrefix("used_memory_human:") }.map(String.init) ?? "?"
            }
            let usedWhileLive = try await usedMemory()
            let wait = Double(lastBound - Date().javaScriptMilliseconds) / 1000 + 0.5
            if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
            #expect(indexKeysNow > 0 && sessionKeysNow > 0)
            #expect(try await count("evserver-users:*") == 0)
            #expect(try await count(prefix + "*") == 0)
            // Active expiry frees them with nobody reading them.
            let freed = ContinuousClock.now
            var size = try await client.send("DBSIZE").integer ?? -1
            while size > 0, ContinuousClock.now - freed < .seconds(20) {
                try await Task.sleep(for: .milliseconds(200))
                size = try await client.send("DBSIZE").integer ?? -1
            }
            #expect(size == 0)
            print("UserIndexLeakTests: 30,000 sessions of 10,000 users created in \(created) on one server; "
                + "\(indexKeysNow) index keys, \(sessionKeysNow) session keys (\(usedWhileLive)); after the last "
                + "bound 0 and 0, DBSIZE 0 \(ContinuousClock.now - freed) later (\(try await usedMemory()))")
        }
    }
}
