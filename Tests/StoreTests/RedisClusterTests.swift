import Foundation
import Synchronization
import Testing
import EvServer
@testable import RedisSessionStore
@testable import EvServerApp

// Redis Cluster, for real: six redis-server processes in cluster mode (3 primaries + 3 replicas) on free loopback
// ports, joined by `redis-cli --cluster create`, started by each test and killed at its end. The whole session flow
// runs through evserver's routes on it; listing and counting walk every primary; a slot migrated by hand (MOVED and
// ASK) costs no error; a killed primary costs errors only on its own slots, and only until its replica is promoted.

@Suite struct RedisClusterSlotTests {
    @Test func crc16AndSlotsMatchTheClusterSpecification() {
        #expect(RedisClusterSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(RedisClusterSlot.crc16([UInt8]()) == 0)
        // CLUSTER KEYSLOT examples from redis.io.
        #expect(RedisClusterSlot.slot(forKey: "somekey") == 11058)
        #expect(RedisClusterSlot.slot(forKey: "foo{hash_tag}") == 2515)
        #expect(RedisClusterSlot.slot(forKey: "bar{hash_tag}") == 2515)
        #expect(RedisClusterSlot.slot(forKey: "foo") == 12182)
    }

    @Test func hashTagsFollowTheFirstBracePairWithSomethingInside() {
        func slot(_ key: String) -> Int { RedisClusterSlot.slot(forKey: key) }
        #expect(slot("{user1000}.following") == slot("{user1000}.followers"))
        #expect(slot("{user1000}.following") == slot("user1000"))
        // "foo{}{bar}": the first pair is empty, so the whole key is hashed.
        #expect(slot("foo{}{bar}") == Int(RedisClusterSlot.crc16(Array("foo{}{bar}".utf8)) & 0x3FFF))
        // "foo{{bar}}zap": the tag is "{bar" (from the first "{" to the next "}").
        #expect(slot("foo{{bar}}zap") == slot("{bar"))
        // "foo{bar}{zap}": only the first pair counts.
        #expect(slot("foo{bar}{zap}") == slot("bar"))
        // An open brace without a close one: the whole key.
        #expect(slot("foo{bar") == Int(RedisClusterSlot.crc16(Array("foo{bar".utf8)) & 0x3FFF))
        #expect(RedisClusterSlot.slot(forKey: Array("{a}x".utf8)) == slot("a"))
    }

    @Test func commandsAreRoutedByTheirFirstKey() {
        func slot(_ words: String...) -> Int? { RedisClusterClient.routingSlot(of: words.map { Array($0.utf8) }) }
        let session = RedisClusterSlot.slot(forKey: "sess:abc")
        #expect(slot("GET", "sess:abc") == session)
        #expect(slot("SET", "sess:abc", "{}", "EX", "60") == session)
        #expect(slot("EVALSHA", "0123", "1", "sess:abc", "x") == session)
        #expect(slot("eval", "return 1", "1", "sess:abc") == session)
        #expect(slot("EVALSHA", "0123", "0", "x") == nil)
        #expect(slot("PING") == nil)
        #expect(slot("SCAN", "0", "MATCH", "sess:*") == nil)
        #expect(slot("WAIT", "1", "100") == nil)
        let groups = RedisClusterClient.groupedBySlot(["{a}1", "b", "{a}2", "c", "b"])
        #expect(groups == [["{a}1", "{a}2"], ["b", "b"], ["c"]])
    }

    @Test func seedListsParseAndBadOnesSayWhy() throws {
        let seeds = try RedisAddress.list(parsing: " 127.0.0.1:7000, redis-a:7001,[::1]:7002,127.0.0.1:7000 ")
        #expect(seeds == [RedisAddress(host: "127.0.0.1", port: 7000), RedisAddress(host: "redis-a", port: 7001),
                          RedisAddress(host: "::1", port: 7002)])
        #expect(seeds[2].description == "[::1]:7002")
        #expect(throws: RedisConfigurationError.self) { try RedisAddress.list(parsing: " , ") }
        #expect(throws: (any Error).self) { try RedisAddress(parsing: "127.0.0.1") }
        #expect(throws: (any Error).self) { try RedisAddress(parsing: "127.0.0.1:70000") }
        #expect(throws: (any Error).self) { try RedisAddress(parsing: ":7000") }
        #expect(throws: (any Error).self) { try RedisAddress(parsing: "a b:7000") }
    }
}

extension ScaleSuites {
    @Suite struct RedisClusterTests {
        @Test func wholeSessionFlowThroughEvServerOnASixNodeCluster() async throws {
            let cluster = try await PrivateRedisCluster.start()
            defer { cluster.stop() }
            // One seed only: the rest of the cluster is discovered.
            let server = try ClusterDemoServer(["--redis-cluster", cluster.seed(0)])
            defer { Task { await server.stop() } }

            let client = try server.client()
            #expect(try client.request("GET", "/").status == 200)
            let cookie = try #require(client.cookieJar["connect.sid"], "no session cookie")
            let id = try #require(DemoServer.sessionID(fromCookie: cookie))
            #expect(try client.request("GET", "/login").text == "Welcome Aditya@123")
            let write = try client.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                           body: #"{"color":"blue"}"#)
            #expect(write.status == 200)
            let shown = try JSONValue(parsing: try client.request("GET", "/session").body)
            #expect(shown["id"]?.stringValue == id)
            #expect(shown["data"]?["color"] == "blue")
            #expect(try await cluster.value(of: server.prefix + id)?.contains("blue") == true)

            // Once the topology is known, a read costs one command: GETEX on the session's primary.
            let before = try await cluster.sessionCommandsOnPrimaries()
            for _ in 0..<10 { #expect(try client.request("GET", "/login").status == 200) }
            let after = try await cluster.sessionCommandsOnPrimaries()
            #expect(after - before == 10, "10 reads cost \(after - before) commands")

            // Regenerate: a new id (an empty session, as express makes it), the old key gone.
            #expect(try client.request("POST", "/session/regenerate").status == 200)
            let newID = try #require(client.cookieJar["connect.sid"].flatMap(DemoServer.sessionID(fromCookie:)))
            #expect(newID != id)
            #expect(try await cluster.value(of: server.prefix + id) == nil)
            #expect(try client.request("GET", "/").status == 200)
            #expect(try await cluster.value(of: server.prefix + newID)?.contains("Aditya@123") == true)

            // Twenty writes of twenty keys at once, on one session: all land (the CAS script runs on the key's
            // primary).
            let port = server.server.port
            let regenerated = try #require(client.cookieJar["connect.sid"])
            let statuses = try await inParallelThreads(20) { index -> Int in
                let client = try TestHTTPClient(port: port)
                client.cookieJar["connect.sid"] = regenerated
                return try client.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                          body: #"{"key\#(index)":\#(index)}"#).status
            }
            #expect(statuses == Array(repeating: 200, count: 20))
            let data = try JSONValue(parsing: try client.request("GET", "/session").body)["data"]
            for index in 0..<20 { #expect(data?["key\(index)"]?.intValue == index, "key\(index) lost") }

            // An exact counter on the cluster: 32 connections x 5 increments at once, on the session's primary.
            let counts = try await inParallelThreads(32) { _ -> [Int] in
                let client = try TestHTTPClient(port: port)
                client.cookieJar["connect.sid"] = regenerated
                return try (0..<5).map { _ in try client.request("GET", "/views").status }
            }.flatMap { $0 }
            #expect(counts == Array(repeating: 200, count: 160))
            let counted = try JSONValue(parsing: try client.request("GET", "/session").body)["data"]
            #expect(counted?["views"]?.intValue == 160)
            #expect(counted?["key0"]?.intValue == 0)

            // Logout: the session is gone from the cluster.
            #expect(try client.request("POST", "/logout").status < 400)
            #expect(try await cluster.value(of: server.prefix + newID) == nil)

            // Forty sessions spread over the three primaries; listing and counting see each once.
            var ids: Set<String> = []
            for _ in 0..<40 {
                let visitor = try server.client()
                _ = try visitor.request("GET", "/")
                ids.insert(try #require(visitor.cookieJar["connect.sid"].flatMap(DemoServer.sessionID(fromCookie:))))
            }
            let perPrimary = try await cluster.keyCountsOnPrimaries()
            #expect(perPrimary.count == 3 && perPrimary.allSatisfy { $0 > 0 }, "keys per primary: \(perPrimary)")
            let store = RedisSessionStore(cluster: RedisClusterConfiguration(seeds: cluster.seeds),
                                          prefix: server.prefix)
            #expect(try await store.length() == 40)
            #expect(Set(try await store.all().keys) == ids)

            // The inspection CLI on the cluster.
            let count = try await onThread {
                try ChildProcess.run(EvServerExecutable.path(), ["sessions", "count", "--redis-cluster",
                                                                 cluster.seed(1), "--prefix", server.prefix],
                                     environment: ChildProcess.environmentWithoutEvServerSettings,
                                     timeout: .seconds(30))
            }
            #expect(count.status == .exited(0), "\(count.error)")
            #expect(count.output == "40\n")
            #expect(try await store.removeAll() == 40)
            #expect(try await store.length() == 0)
            print("RedisClusterTests: session flow on 6 nodes; keys per primary \(perPrimary); "
                + "`evserver sessions count` = \(count.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }

        @Test func waitForReplicasAcknowledgesOrFailsWithinTheDeadline() async throws {
            let cluster = try await PrivateRedisCluster.start()
            defer { cluster.stop() }
            let prefix = "test:\(UUID().uuidString.prefix(8)):"
            // A generous deadline where replicas must answer (the machine may be busy with other tests), a short
            // one where they cannot.
            let patient = RedisClusterConfiguration(seeds: cluster.seeds,
                                                    node: RedisConfiguration(commandTimeout: .seconds(3)))
            let seeds = RedisClusterConfiguration(seeds: cluster.seeds,
                                                  node: RedisConfiguration(commandTimeout: .milliseconds(500)))
            let one = RedisSessionStore(cluster: patient, prefix: prefix, waitForReplicas: 1)
            for index in 0..<10 {
                try await one.set("s\(index)", sessionData(["n": .number("\(index)")]))
            }
            #expect(try await one.length() == 10)

            // Each primary has one replica: two can never acknowledge, and the write says so in time.
            let two = RedisSessionStore(cluster: seeds, prefix: prefix, waitForReplicas: 2)
            let started = ContinuousClock.now
            await #expect(throws: RedisReplicationError.self) {
                try await two.set("s0", sessionData(["n": .number("0")]))
            }
            let took = ContinuousClock.now - started
            #expect(took < .milliseconds(700), "WAIT took \(took) with a 500 ms deadline")
            print("RedisClusterTests: WAIT 1 acknowledged 10 writes; WAIT 2 failed after \(took)")
        }

        @Test func waitOnOneServerFailsTheWriteWithoutHoldingUpReads() async throws {
            let directory = NSTemporaryDirectory() + "evserver-wait-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory + "/replica", withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let primary = try PrivateRedis(arguments: ["--dir", directory, "--repl-diskless-sync-delay", "0"])
            defer { primary.stop() }
            let replica = try PrivateRedis(arguments: ["--dir", directory + "/replica",
                                                       "--replicaof", "127.0.0.1", "\(primary.port)"])
            defer { replica.stop() }
            let deadline = ContinuousClock.now + .seconds(10)
            while true {
                let primaryInfo = try await PrivateRedisCluster.info(primary.port, "replication")
                let replicaInfo = try await PrivateRedisCluster.info(replica.port, "replication")
                if primaryInfo.contains("connected_slaves:1"), replicaInfo.contains("master_link_status:up") { break }
                guard ContinuousClock.now < deadline else { throw HarnessFailure("the replica did not sync in 10 s") }
                try await Task.sleep(for: .milliseconds(20))
            }
            // 2 s: on a loaded machine a freshly synced replica can take most of a second to acknowledge.
            let store = RedisSessionStore(
                configuration: RedisConfiguration(port: primary.port, commandTimeout: .seconds(2)),
                waitForReplicas: 1)
            try await store.set("a", sessionData(["n": 1]))

            // No replica any more: the write waits its deadline and fails; a read meanwhile, on the same loop, is
            // not queued behind the WAIT.
            replica.stop()
            let write = Task { try await store.set("b", sessionData(["n": 2])) }
            try await Task.sleep(for: .milliseconds(100))
            let started = ContinuousClock.now
            #expect(try await store.get("a")?.values["n"] == 1)
            let read = ContinuousClock.now - started
            await #expect(throws: RedisReplicationError.self) { try await write.value }
            #expect(read < .milliseconds(300), "a read took \(read) while a WAIT blocked")
            print("RedisClusterTests: one server, WAIT 1 without a replica: write refused; a read meanwhile took \(read)")
        }

        @Test func slotMigrationIsFollowedThroughAskAndMoved() async throws {
            let cluster = try await PrivateRedisCluster.start()
            defer { cluster.stop() }
            let client = RedisClusterClient(configuration: RedisClusterConfiguration(seeds: cluster.seeds))
            defer { client.close() }
            let tag = "{mig\(UUID().uuidString.prefix(6))}"
            let slot = RedisClusterSlot.slot(forKey: tag)
            let old = "\(tag):old"
            try await client.set(old, to: Array("before".utf8))
            try await client.refreshTopology()
            let source = try #require(client.primary(forSlot: slot))
            let target = try #require(try await cluster.primaries().first { $0 != source.port })
            let sourceID = try await cluster.nodeID(source.port)
            let targetID = try await cluster.nodeID(target)

            // Half-way: the slot is migrating. A new key goes to the target (ASK), the old one is still read on the
            // source.
            _ = try await cluster.command(target, "CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", sourceID)
            _ = try await cluster.command(source.port, "CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", targetID)
            try await client.set("\(tag):new", to: Array("during".utf8))
            #expect(try await client.get("\(tag):new") == Array("during".utf8))
            #expect(try await client.get(old) == Array("before".utf8))
            #expect(try await cluster.command(target, "DBSIZE").integer == 1, "the new key is not on the target")

            // The old key moves too; reading it is now an ASK to the target.
            _ = try await cluster.command(source.port, "MIGRATE", "127.0.0.1", "\(target)", "", "0", "5000",
                                          "KEYS", old)
            #expect(try await client.get(old) == Array("before".utf8))

            // Done: every node is told; the client's map still names the source, which answers MOVED.
            for port in cluster.ports {
                _ = try? await cluster.command(port, "CLUSTER", "SETSLOT", "\(slot)", "NODE", targetID)
            }
            #expect(client.primary(forSlot: slot) == source)
            #expect(try await client.get(old) == Array("before".utf8))
            #expect(client.primary(forSlot: slot)?.port == target)

            // A session store on the same cluster, through the whole thing with a key of that slot.
            let store = RedisSessionStore(cluster: RedisClusterConfiguration(seeds: cluster.seeds), prefix: tag)
            try await store.set("s", sessionData(["a": "b"]))
            #expect(try await store.get("s")?.values["a"] == "b")
            print("RedisClusterTests: slot \(slot) migrated \(source.port) -> \(target) under ASK and MOVED")
        }

        @Test func killedPrimaryFailsOnlyItsOwnSlotsUntilItsReplicaIsPromoted() async throws {
            let nodeTimeout = 1000
            let cluster = try await PrivateRedisCluster.start(nodeTimeout: nodeTimeout)
            defer { cluster.stop() }
            let prefix = "test:\(UUID().uuidString.prefix(8)):"
            let configuration = RedisClusterConfiguration(
                seeds: cluster.seeds, node: RedisConfiguration(commandTimeout: .milliseconds(300)))
            let store = RedisSessionStore(cluster: configuration, prefix: prefix)
            let writer = RedisSessionStore(
                cluster: RedisClusterConfiguration(seeds: cluster.seeds, node: RedisConfiguration(commandTimeout: .seconds(3))),
                prefix: prefix, waitForReplicas: 1)
            let topology = RedisClusterClient(configuration: configuration)
            defer { topology.close() }
            try await topology.refreshTopology()

            // Sessions on every primary, each write acknowledged by a replica (WAIT 1).
            var byPrimary: [Int: [String]] = [:]
            for index in 0..<60 {
                let id = "s\(index)"
                try await writer.set(id, sessionData(["n": .number("\(index)")]))
                let port = try #require(topology.primary(forSlot: RedisClusterSlot.slot(forKey: prefix + id))?.port)
                byPrimary[port, default: []].append(id)
            }
            #expect(byPrimary.count == 3)
            let victim = try #require(byPrimary.keys.sorted().first)
            let doomed = byPrimary[victim]!
            let safe = byPrimary.filter { $0.key != victim }.flatMap(\.value)

            let replica = try await cluster.replica(of: victim)
            cluster.kill(port: victim)
            let killed = ContinuousClock.now
            var errorsElsewhere = 0
            var errorsOnVictim = 0
            var promotedAfter: Duration?
            var servedAgainAfter: Duration?
            var slowest = Duration.zero
            while ContinuousClock.now - killed < .milliseconds(3 * nodeTimeout) + .seconds(5) {
                for id in safe.prefix(5) {
                    do { _ = try await store.get(id) } catch { errorsElsewhere += 1 }
                }
                if promotedAfter == nil, try await cluster.command(replica, "ROLE").array?.first?.string == "master" {
                    promotedAfter = ContinuousClock.now - killed
                }
                let started = ContinuousClock.now
                do {
                    if try await store.get(doomed[0]) != nil {
                        servedAgainAfter = ContinuousClock.now - killed
                        break
                    }
                } catch {
                    errorsOnVictim += 1
                }
                slowest = max(slowest, ContinuousClock.now - started)
                try await Task.sleep(for: .milliseconds(50))
            }
            let recovery = try #require(servedAgainAfter, "the killed primary's slots were never served again")
            let promotion = promotedAfter ?? recovery
            print("RedisClusterTests: primary \(victim) killed (cluster-node-timeout \(nodeTimeout) ms); replica "
                + "\(replica) promoted after \(promotion); the slots served again after \(recovery) "
                + "(\(errorsOnVictim) failed reads meanwhile, slowest \(slowest)); "
                + "\(errorsElsewhere) errors on the other primaries")
            #expect(errorsElsewhere == 0)
            // Redis itself takes about 1.5 to 2.5 x cluster-node-timeout to declare the primary failed and promote
            // its replica; the client's share is what follows the promotion.
            #expect(recovery - promotion < .milliseconds(nodeTimeout) + .seconds(2),
                    "served again only \(recovery - promotion) after the promotion")
            #expect(slowest < .milliseconds(700), "a failed read took \(slowest) with a 300 ms budget")
            // Every write acknowledged by a replica before the kill is still there.
            for id in doomed + safe {
                #expect(try await store.get(id) != nil, "\(id) lost")
            }
        }
    }
}

/// Session data with these values and a default cookie.
private func sessionData(_ values: JSONObject) -> SessionData {
    var data = SessionData()
    data.values = values
    return data
}

// MARK: - The evserver demo, in process, on a cluster

/// The demo app on a free port, configured with `arguments` (e.g. `--redis-cluster`), with a prefix of its own.
final class ClusterDemoServer: Sendable {
    let server: RunningServer
    let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"

    init(_ arguments: [String]) throws {
        let options = try ServerOptions.parse(["--port", "0", "--secret", "test secret", "--prefix", prefix,
                                               "--threads", "2"] + arguments)
        let demo = try DemoApp(configuration: try options.resolve(environment: [:]))
        server = try demo.makeApplication().start(host: "127.0.0.1", port: 0, threads: 2)
    }

    func client() throws -> TestHTTPClient { try TestHTTPClient(port: server.port) }
    func stop() async { await server.shutdown(timeout: .seconds(2)) }
}

// MARK: - A private Redis Cluster

/// Six redis-server processes in cluster mode (3 primaries, 3 replicas) on free loopback ports, each with its
/// cluster bus on a free port of its own (`cluster-port`), joined by `redis-cli --cluster create`; killed by
/// ``stop()`` (also on deinit).
final class PrivateRedisCluster: Sendable {
    let nodes: [PrivateRedis]
    let ports: [Int]
    let directory = NSTemporaryDirectory() + "evserver-cluster-\(UUID().uuidString.prefix(8))"

    private init(nodeTimeout: Int) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var nodes: [PrivateRedis] = []
        do {
            for index in 0..<6 {
                // A directory per node: a replica writes the RDB it receives from its primary into its directory,
                // and PrivateRedis's default (/tmp) is shared with every other private server.
                let nodeDirectory = "\(directory)/node-\(index)"
                try FileManager.default.createDirectory(atPath: nodeDirectory, withIntermediateDirectories: true)
                nodes.append(try PrivateRedis(arguments: [
                    "--dir", nodeDirectory,
                    "--cluster-enabled", "yes", "--cluster-config-file", "\(nodeDirectory)/nodes.conf",
                    "--cluster-node-timeout", "\(nodeTimeout)", "--cluster-port", "\(try TestRedis.unusedPort())",
                    // A failed primary must not stop the other primaries from serving their slots.
                    "--cluster-require-full-coverage", "no",
                    // Replicas sync at once (the default waits 5 s for more replicas to share a diskless sync).
                    "--repl-diskless-sync-delay", "0",
                ]))
            }
        } catch {
            for node in nodes { node.stop() }
            throw error
        }
        self.nodes = nodes
        ports = nodes.map(\.port)
        guard let cli = ChildProcess.find("redis-cli") else {
            stop()
            throw HarnessFailure("redis-cli is not installed (apt-get install redis-tools)")
        }
        let created = try ChildProcess.run(cli, ["--cluster", "create"] + ports.map { "127.0.0.1:\($0)" }
                                           + ["--cluster-replicas", "1", "--cluster-yes"], timeout: .seconds(30))
        guard created.status == .exited(0) else {
            stop()
            throw HarnessFailure("redis-cli --cluster create failed (\(created.status)): "
                                 + String((created.output + created.error).suffix(1500)))
        }
    }

    /// Starts a cluster (on a thread of its own: waiting for processes must not hold a pool thread) and waits
    /// until every node says `cluster_state:ok` and every replica is in sync with its primary.
    static func start(nodeTimeout: Int = 2000) async throws -> PrivateRedisCluster {
        let started = ContinuousClock.now
        let cluster = try await onThread { try PrivateRedisCluster(nodeTimeout: nodeTimeout) }
        do {
            try await cluster.waitUntilReady()
        } catch {
            cluster.stop()
            throw error
        }
        print("PrivateRedisCluster: 6 nodes up and in sync in \(ContinuousClock.now - started)")
        return cluster
    }

    deinit { stop() }

    func stop() {
        for node in nodes { node.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    var seeds: [RedisAddress] { ports.map { RedisAddress(host: "127.0.0.1", port: $0) } }
    func seed(_ index: Int) -> String { "127.0.0.1:\(ports[index])" }

    /// Kills one node (SIGKILL, as a crash would).
    func kill(port: Int) {
        nodes.first { $0.port == port }?.stop()
    }

    /// One command on one node, on a connection of its own.
    func command(_ port: Int, _ arguments: String...) async throws -> RedisValue {
        let client = PrivateRedis.client(port: port)
        defer { client.close() }
        return try await client.send(arguments.map { Array($0.utf8) })
    }

    func nodeID(_ port: Int) async throws -> String {
        guard let id = try await command(port, "CLUSTER", "MYID").string else {
            throw HarnessFailure("CLUSTER MYID on \(port) answered no string")
        }
        return id
    }

    /// The ports of the nodes that say they are primaries (`ROLE`), among those still running.
    func primaries() async throws -> [Int] {
        var primaries: [Int] = []
        for port in ports {
            guard case .array(let role)? = try? await command(port, "ROLE") else { continue }
            if role.first?.string == "master" { primaries.append(port) }
        }
        return primaries
    }

    /// `INFO section` of the server on `port`.
    static func info(_ port: Int, _ section: String) async throws -> String {
        let client = PrivateRedis.client(port: port)
        defer { client.close() }
        return try await client.send("INFO", section).string ?? ""
    }

    /// The port of `primary`'s first replica (`ROLE` on the primary).
    func replica(of primary: Int) async throws -> Int {
        let reply = try await command(primary, "ROLE")
        guard case .array(let role) = reply, role.count == 3,
              case .array(let replicas) = role[2], case .array(let first)? = replicas.first, first.count >= 2,
              let port = first[1].integer ?? first[1].string.flatMap({ Int($0) }) else {
            throw HarnessFailure("ROLE on \(primary) names no replica: \(reply)")
        }
        return port
    }

    /// How many key commands (GET, GETEX, SET, EXPIRE, DEL, EVAL, EVALSHA) the primaries have run, summed.
    func sessionCommandsOnPrimaries() async throws -> Int {
        let counted: Set<String> = ["get", "getex", "set", "expire", "del", "eval", "evalsha", "mget"]
        var total = 0
        for port in try await primaries() {
            guard let node = nodes.first(where: { $0.port == port }) else { continue }
            let counts = try await node.commandCounts()
            total += counted.reduce(0) { $0 + (counts[$1] ?? 0) }
        }
        return total
    }

    /// DBSIZE of each primary.
    func keyCountsOnPrimaries() async throws -> [Int] {
        var counts: [Int] = []
        for port in try await primaries() { counts.append(try await command(port, "DBSIZE").integer ?? -1) }
        return counts
    }

    /// A key's value, read on the primary that serves it (through a cluster client of its own).
    func value(of key: String) async throws -> String? {
        let client = RedisClusterClient(configuration: RedisClusterConfiguration(seeds: seeds))
        defer { client.close() }
        return try await client.get(key).map { String(decoding: $0, as: UTF8.self) }
    }

    private func waitUntilReady() async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            // Every node sees an ok cluster of six; three primaries each with a connected replica, three replicas
            // each in sync (a node that is to become a replica reports itself a primary for a moment).
            var ready = true
            var primariesWithReplica = 0
            var replicasInSync = 0
            for port in ports {
                let info = (try? await command(port, "CLUSTER", "INFO").string) ?? ""
                let replication = (try? await command(port, "INFO", "replication").string) ?? ""
                if !info.contains("cluster_state:ok") || !info.contains("cluster_known_nodes:6") { ready = false }
                if replication.contains("role:master"), replication.contains("connected_slaves:1") {
                    primariesWithReplica += 1
                }
                if replication.contains("role:slave"), replication.contains("master_link_status:up") {
                    replicasInSync += 1
                }
            }
            if ready, primariesWithReplica == 3, replicasInSync == 3 { return }
            guard ContinuousClock.now < deadline else {
                throw HarnessFailure("the private Redis Cluster on ports \(ports) did not become ready within 20 s")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
