import Foundation
import Synchronization
import Testing
import EvServer
import RedisSessionStore

// Redis Cluster and Redis Sentinel over TLS, with real processes: every server, cluster bus, replication link and
// sentinel speaks TLS only (`--port 0`), with the test CA's `localhost` certificate. The harness drives and checks
// them with `redis-cli --tls`; the session store reaches them with `node.tls`, `primary.tls` and `sentinelTLS`.
// One of the serialized scale suites (process-heavy, and the failover bound means little under other failovers).

extension ScaleSuites {
    @Suite struct RedisTLSTopologyTests {
        @Test func sessionsAreStoredAndLoadedOnEveryPrimaryOfATLSCluster() async throws {
            let started = ContinuousClock.now
            let certificates = try TestCertificates.shared()
            let cluster = try await TLSRedisCluster.start(certificates: certificates)
            defer { cluster.stop() }
            let tls = RedisTLSConfiguration(caFile: certificates.caFile)
            let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
            // One seed: the other primaries are discovered (over TLS, at the TLS ports CLUSTER SLOTS names). Each
            // write waits for a replica's acknowledgement (WAIT 1): replication runs over TLS too.
            let store = RedisSessionStore(
                cluster: RedisClusterConfiguration(seeds: [cluster.seeds[0]],
                                                   node: RedisConfiguration(tls: tls, commandTimeout: .seconds(2))),
                prefix: prefix, waitForReplicas: 1)

            var ids: [String] = []
            for index in 0..<30 {
                let id = SessionID.generate()
                var data = SessionData()
                data.values = ["n": .number("\(index)")]
                try await store.set(id, data)
                ids.append(id)
            }
            for (index, id) in ids.enumerated() {
                let loaded = try await store.get(id)
                #expect(loaded?.values["n"]?.intValue == index, "\(id) did not load back")
            }
            let perNode = try cluster.keyCounts()
            #expect(perNode.count == 3 && perNode.allSatisfy { $0 > 0 }, "keys per primary: \(perNode)")
            #expect(perNode.reduce(0, +) == 30)
            #expect(try await store.length() == 30)
            #expect(Set(try await store.all().keys) == Set(ids))
            #expect(try await store.removeAll() == 30)
            #expect(try cluster.keyCounts().reduce(0, +) == 0)
            print("RedisTLSTopologyTests: 30 sessions on a 6-node TLS cluster, keys per primary \(perNode), "
                  + "in \(ContinuousClock.now - started) with the cluster's start")
        }

        @Test func writesResumeOnTheNewPrimaryAfterAForcedFailoverOverTLS() async throws {
            let started = ContinuousClock.now
            let certificates = try TestCertificates.shared()
            let topology = try await onThread { try TLSSentinelTopology(certificates: certificates) }
            defer { topology.stop() }
            try await topology.waitUntilSentinelsAgree()

            let tls = RedisTLSConfiguration(caFile: certificates.caFile)
            let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
            let store = RedisSessionStore(sentinel: RedisSentinelConfiguration(
                sentinels: topology.sentinels.map(\.address), masterName: "mymaster",
                primary: RedisConfiguration(tls: tls, commandTimeout: .milliseconds(500)), sentinelTLS: tls),
                prefix: prefix)
            let writer = SessionWriter(store: store)
            writer.start()
            defer { writer.stop() }
            try await writer.waitForSuccesses(10)

            let original = topology.primary.port
            let standby = topology.replica.port
            let triggered = ContinuousClock.now
            let reply = try topology.sentinelCommand(0, ["SENTINEL", "FAILOVER", "mymaster"])
            #expect(reply == "OK\n", "SENTINEL FAILOVER answered \(reply)")

            // The sentinels' switch, as a third sentinel tells it.
            var switched: ContinuousClock.Instant?
            while switched == nil, ContinuousClock.now - triggered < .seconds(20) {
                if topology.primaryPort(accordingTo: 2) == standby { switched = .now }
                try await Task.sleep(for: .milliseconds(20))
            }
            let sentinelAt = try #require(switched, "the sentinels did not switch to \(standby) within 20 s")

            // Writes resume on the new primary: the first acknowledged write that the new primary holds.
            var resumed: ContinuousClock.Instant?
            var checked = 0
            while resumed == nil, ContinuousClock.now - sentinelAt < .seconds(10) {
                let successes = writer.successes(after: sentinelAt)
                for outcome in successes.dropFirst(checked) {
                    checked += 1
                    if try topology.holds(prefix + outcome.id, port: standby) {
                        resumed = outcome.at
                        break
                    }
                }
                if resumed == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            writer.stop()
            let lastError = writer.lastError ?? "none"
            let resumedAt = try #require(
                resumed, "no write reached the new primary \(standby) within 10 s of the switch; last error: \(lastError)")
            let figures = "sentinels switched after \(sentinelAt - triggered), writes on the new primary from "
                + "\(resumedAt - triggered); \(writer.failures(after: triggered)) failed writes (kinds: "
                + "\(writer.failureKinds(after: triggered)))"
            print("RedisTLSTopologyTests: SENTINEL FAILOVER \(original) -> \(standby) over TLS: \(figures); "
                  + "\(ContinuousClock.now - started) with the topology's start")
            #expect(resumedAt - sentinelAt < .seconds(3), "writes resumed too late: \(figures)")
            #expect(writer.unexpectedErrors.isEmpty, "\(writer.unexpectedErrors.prefix(3))")
            // The last acknowledged write is there.
            let last = try #require(writer.lastSuccess)
            #expect(try topology.holds(prefix + last.id, port: standby), "the last acknowledged write is lost")
        }
    }
}

// MARK: - A TLS Redis Cluster

/// Six redis-server processes in cluster mode (3 primaries, 3 replicas), TLS only on client port, cluster bus
/// (`--tls-cluster yes`) and replication (`--tls-replication yes`), joined by `redis-cli --tls --cluster create`.
/// Killed by ``stop()`` (also on deinit).
final class TLSRedisCluster: Sendable {
    let nodes: [PrivateRedis]
    let certificates: TestCertificates
    let directory = NSTemporaryDirectory() + "evserver-tls-cluster-\(UUID().uuidString.prefix(8))"

    var seeds: [RedisAddress] { nodes.map { RedisAddress(host: "127.0.0.1", port: $0.port) } }

    private init(certificates: TestCertificates) throws {
        self.certificates = certificates
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var nodes: [PrivateRedis] = []
        do {
            for index in 0..<6 {
                let nodeDirectory = "\(directory)/node-\(index)"
                try FileManager.default.createDirectory(atPath: nodeDirectory, withIntermediateDirectories: true)
                nodes.append(try PrivateRedis(arguments: [
                    "--dir", nodeDirectory,
                    "--cluster-enabled", "yes", "--cluster-config-file", "\(nodeDirectory)/nodes.conf",
                    "--cluster-node-timeout", "2000", "--cluster-port", "\(try TestRedis.unusedPort())",
                    "--tls-cluster", "yes", "--tls-replication", "yes", "--repl-diskless-sync-delay", "0",
                ], tls: .serving(certificates.server, certificates: certificates)))
            }
        } catch {
            for node in nodes { node.stop() }
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        self.nodes = nodes
        guard let cli = ChildProcess.find("redis-cli") else {
            stop()
            throw HarnessFailure("redis-cli is not installed (apt-get install redis-tools)")
        }
        let tlsOptions = Array(RedisCLI.tlsArguments(port: nodes[0].port, certificates: certificates).dropFirst(4))
        let created = try ChildProcess.run(cli, tlsOptions + ["--cluster", "create"]
                                           + nodes.map { "127.0.0.1:\($0.port)" }
                                           + ["--cluster-replicas", "1", "--cluster-yes"], timeout: .seconds(30))
        guard created.status == .exited(0) else {
            stop()
            throw HarnessFailure("redis-cli --tls --cluster create failed (\(created.status)): "
                                 + String((created.output + created.error).suffix(1500)))
        }
    }

    /// Starts the cluster on a thread of its own and waits until every node says `cluster_state:ok` and every
    /// replica is in sync.
    static func start(certificates: TestCertificates) async throws -> TLSRedisCluster {
        let started = ContinuousClock.now
        let cluster = try await onThread { try TLSRedisCluster(certificates: certificates) }
        do {
            let deadline = ContinuousClock.now + .seconds(20)
            while try await onThread({ try !cluster.isReady() }) {
                guard ContinuousClock.now < deadline else {
                    throw HarnessFailure("the TLS cluster on \(cluster.nodes.map(\.port)) was not ready in 20 s")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        } catch {
            cluster.stop()
            throw error
        }
        print("TLSRedisCluster: 6 TLS nodes up and in sync in \(ContinuousClock.now - started)")
        return cluster
    }

    deinit { stop() }

    func stop() {
        for node in nodes { node.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func isReady() throws -> Bool {
        var replicasInSync = 0
        for node in nodes {
            let info = try RedisCLI.run(port: node.port, certificates: certificates, ["CLUSTER", "INFO"])
            guard info.contains("cluster_state:ok"), info.contains("cluster_known_nodes:6") else { return false }
            let replication = try RedisCLI.run(port: node.port, certificates: certificates, ["INFO", "replication"])
            if replication.contains("role:slave"), replication.contains("master_link_status:up") { replicasInSync += 1 }
        }
        return replicasInSync == 3
    }

    /// The nodes that say they are primaries (`ROLE`).
    func primaries() throws -> [PrivateRedis] {
        try nodes.filter { node in
            try RedisCLI.run(port: node.port, certificates: certificates, ["ROLE"]).hasPrefix("master\n")
        }
    }

    /// DBSIZE of each primary, through redis-cli.
    func keyCounts() throws -> [Int] {
        try primaries().map { node in
            let output = try RedisCLI.run(port: node.port, certificates: certificates, ["DBSIZE"])
            return Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }
    }
}

// MARK: - A TLS Sentinel topology

/// A primary and its replica (replicating over TLS) and three sentinels (quorum 2) with TLS ports only, talking TLS
/// to the servers they monitor (`tls-replication yes`). Checked through redis-cli.
final class TLSSentinelTopology: Sendable {
    let primary: PrivateRedis
    let replica: PrivateRedis
    let sentinels: [PrivateSentinel]
    let certificates: TestCertificates
    let directory = NSTemporaryDirectory() + "evserver-tls-sentinel-\(UUID().uuidString.prefix(8))"

    init(certificates: TestCertificates, sentinelCount: Int = 3) throws {
        self.certificates = certificates
        for path in [directory + "/primary", directory + "/replica"] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        var tls = PrivateRedis.TLS.serving(certificates.server, certificates: certificates)
        tls.arguments += ["--tls-replication", "yes"]
        primary = try PrivateRedis(arguments: ["--repl-diskless-sync-delay", "0", "--dir", directory + "/primary"],
                                   tls: tls)
        do {
            replica = try PrivateRedis(arguments: ["--repl-diskless-sync-delay", "0", "--dir", directory + "/replica",
                                                   "--replicaof", "127.0.0.1", "\(primary.port)"], tls: tls)
        } catch {
            primary.stop()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        // In sync before the sentinels start: their first INFO of the primary is how they learn of the replica.
        let deadline = ContinuousClock.now + .seconds(10)
        while !((try? RedisCLI.run(port: replica.port, certificates: certificates, ["INFO", "replication"]))?
            .contains("master_link_status:up") ?? false) {
            guard ContinuousClock.now < deadline else {
                replica.stop()
                primary.stop()
                try? FileManager.default.removeItem(atPath: directory)
                throw HarnessFailure("the TLS replica on \(replica.port) did not sync with \(primary.port) in 10 s")
            }
            usleep(50_000)
        }
        let primaryPort = primary.port
        var sentinels: [PrivateSentinel] = []
        do {
            for _ in 0..<sentinelCount {
                sentinels.append(try PrivateSentinel(monitoring: primaryPort, quorum: sentinelCount / 2 + 1, tls: tls))
            }
        } catch {
            for sentinel in sentinels { sentinel.stop() }
            replica.stop()
            primary.stop()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        self.sentinels = sentinels
    }

    deinit { stop() }

    func stop() {
        for sentinel in sentinels { sentinel.stop() }
        replica.stop()
        primary.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// redis-cli output of `command` on sentinel `index`.
    func sentinelCommand(_ index: Int, _ command: [String]) throws -> String {
        try RedisCLI.run(port: sentinels[index].port, certificates: certificates, command)
    }

    /// The primary's port as sentinel `index` names it, nil if it does not answer.
    func primaryPort(accordingTo index: Int) -> Int? {
        guard let output = try? sentinelCommand(index, ["SENTINEL", "get-master-addr-by-name", "mymaster"]) else {
            return nil
        }
        let lines = output.split(whereSeparator: \.isNewline)
        return lines.count == 2 ? Int(lines[1]) : nil
    }

    /// Whether the server on `port` has `key` (redis-cli EXISTS).
    func holds(_ key: String, port: Int) throws -> Bool {
        try RedisCLI.run(port: port, certificates: certificates, ["EXISTS", key])
            .trimmingCharacters(in: .whitespacesAndNewlines) == "1"
    }

    /// Waits until every sentinel knows the others and sees the replica's link up (needed to agree on a failover).
    func waitUntilSentinelsAgree(timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        for index in sentinels.indices {
            while true {
                let master = try await onThread { try self.sentinelCommand(index, ["SENTINEL", "master", "mymaster"]) }
                let replicas = try await onThread {
                    try self.sentinelCommand(index, ["SENTINEL", "replicas", "mymaster"])
                }
                let fields = Self.fields(master)
                if fields["num-other-sentinels"] == "\(sentinels.count - 1)",
                   replicas.contains("master-link-status\nok") { break }
                guard ContinuousClock.now < deadline else {
                    throw HarnessFailure("TLS sentinel \(sentinels[index].port) does not see its peers and the "
                                         + "replica: \(fields["num-other-sentinels"] ?? "?") other sentinels, "
                                         + "\(fields["num-slaves"] ?? "?") replicas")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// redis-cli's flat `name\nvalue\n...` output as a dictionary.
    private static func fields(_ output: String) -> [String: String] {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var fields: [String: String] = [:]
        var index = 0
        while index + 1 < lines.count {
            fields[lines[index]] = lines[index + 1]
            index += 2
        }
        return fields
    }
}

// MARK: - A session writer

/// Saves a new session every 10 ms through a RedisSessionStore, recording each outcome.
final class SessionWriter: Sendable {
    struct Outcome: Sendable {
        let at: ContinuousClock.Instant
        let id: String
        /// nil: acknowledged.
        let error: String?
        let expected: Bool
    }

    private let store: RedisSessionStore
    private let outcomes = Mutex<[Outcome]>([])
    private let running = Atomic<Bool>(false)
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(store: RedisSessionStore) { self.store = store }

    func start() {
        running.store(true, ordering: .releasing)
        task.withLock { $0 = Task { [self] in await write() } }
    }

    private func write() async {
        var index = 0
        while running.load(ordering: .acquiring) {
            index += 1
            let id = SessionID.generate()
            var data = SessionData()
            data.values = ["n": .number("\(index)")]
            let outcome: Outcome
            do {
                try await store.set(id, data)
                outcome = Outcome(at: .now, id: id, error: nil, expected: true)
            } catch let error as RedisClientError {
                outcome = Outcome(at: .now, id: id, error: "\(error)", expected: true)
            } catch let error as RedisError {
                outcome = Outcome(at: .now, id: id, error: "\(error)", expected: true)
            } catch let error as SessionStoreError {
                outcome = Outcome(at: .now, id: id, error: "\(error)", expected: true)
            } catch {
                outcome = Outcome(at: .now, id: id, error: "\(type(of: error)): \(error)", expected: false)
            }
            outcomes.withLock { $0.append(outcome) }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    func stop() {
        running.store(false, ordering: .releasing)
    }

    func waitForSuccesses(_ count: Int, timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while outcomes.withLock({ $0.filter { $0.error == nil }.count }) < count {
            guard ContinuousClock.now < deadline else {
                throw HarnessFailure("fewer than \(count) sessions saved within \(timeout); last error: "
                                     + (lastError ?? "none"))
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func successes(after instant: ContinuousClock.Instant) -> [Outcome] {
        outcomes.withLock { $0.filter { $0.error == nil && $0.at > instant } }
    }

    func failures(after instant: ContinuousClock.Instant) -> Int {
        outcomes.withLock { $0.filter { $0.error != nil && $0.at > instant }.count }
    }

    func failureKinds(after instant: ContinuousClock.Instant) -> [String: Int] {
        outcomes.withLock { all in
            var kinds: [String: Int] = [:]
            for outcome in all where outcome.at > instant {
                guard let error = outcome.error else { continue }
                kinds[String(error.prefix(80)), default: 0] += 1
            }
            return kinds
        }
    }

    var lastSuccess: Outcome? { outcomes.withLock { $0.last { $0.error == nil } } }
    var lastError: String? { outcomes.withLock { $0.last { $0.error != nil }?.error } }
    var unexpectedErrors: [String] { outcomes.withLock { $0.filter { !$0.expected }.compactMap(\.error) } }
}
