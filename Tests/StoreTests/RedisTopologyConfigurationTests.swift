import Foundation
import Testing
import RedisSessionStore
@testable import EvServerApp

/// `--redis-url` / `--redis-cluster` / `--redis-sentinel` (exactly one), credentials for every mode, and
/// `--redis-wait-replicas`.
@Suite struct RedisTopologyConfigurationTests {
    func resolve(_ arguments: [String], _ environment: [String: String] = [:]) throws -> AppConfiguration {
        try ServerOptions.parse(["--secret", "s"] + arguments).resolve(environment: environment)
    }

    func failure(_ arguments: [String], _ environment: [String: String] = [:]) -> String {
        do {
            _ = try resolve(arguments, environment)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func defaultIsTheSingleServerURLWithoutWait() throws {
        let config = try resolve([])
        guard case .single = config.redisTopology else { Issue.record("not single: \(config.redisTopology)"); return }
        #expect(config.redisWaitReplicas == 0)
        #expect(config.redisDescription == "redis://127.0.0.1:6379")
    }

    @Test func clusterSeedsComeFromTheFlagOrTheEnvironment() throws {
        let flagged = try resolve(["--redis-cluster", "127.0.0.1:7000, 127.0.0.1:7001", "--redis-timeout", "250"])
        guard case .cluster(let seeds) = flagged.redisTopology else { Issue.record("not a cluster"); return }
        #expect(seeds == [RedisAddress(host: "127.0.0.1", port: 7000), RedisAddress(host: "127.0.0.1", port: 7001)])
        #expect(flagged.redis.commandTimeout == .milliseconds(250))
        #expect(flagged.redisDescription == "cluster 127.0.0.1:7000,127.0.0.1:7001")

        let environment = try resolve([], ["REDIS_CLUSTER": "redis-1:6379", "REDIS_WAIT_REPLICAS": "1"])
        guard case .cluster(let fromEnvironment) = environment.redisTopology else { Issue.record("not a cluster"); return }
        #expect(fromEnvironment == [RedisAddress(host: "redis-1", port: 6379)])
        #expect(environment.redisWaitReplicas == 1)
    }

    @Test func sentinelNeedsItsMasterName() throws {
        let config = try resolve(["--redis-sentinel", "127.0.0.1:26379,127.0.0.1:26380", "--sentinel-master", "mymaster"])
        guard case .sentinel(let sentinels, let name, let password) = config.redisTopology else {
            Issue.record("not sentinel")
            return
        }
        #expect(sentinels.count == 2 && name == "mymaster" && password == nil)
        let withPassword = try resolve(["--redis-sentinel", "s:26379", "--sentinel-master", "m"],
                                       ["REDIS_SENTINEL_PASSWORD": "sentinel-secret"])
        guard case .sentinel(_, _, let given) = withPassword.redisTopology else { Issue.record("not sentinel"); return }
        #expect(given == "sentinel-secret")
        #expect(!withPassword.redisDescription.contains("sentinel-secret"))
        #expect(failure(["--sentinel-password", "x"])
                == "--sentinel-password is only meaningful with --redis-sentinel (or REDIS_SENTINEL)")
        #expect(try resolve([], ["REDIS_SENTINEL": "s:26379", "REDIS_SENTINEL_MASTER": "m"]).redisDescription
                == "sentinel m@s:26379")
        #expect(failure(["--redis-sentinel", "127.0.0.1:26379"])
                == "--redis-sentinel needs the primary's name: --sentinel-master NAME (or REDIS_SENTINEL_MASTER)")
        #expect(failure(["--sentinel-master", "m"])
                == "--sentinel-master is only meaningful with --redis-sentinel (or REDIS_SENTINEL)")
    }

    @Test func twoModesAtTheSameLevelAreOneClearError() {
        #expect(failure(["--redis-url", "redis://h:1", "--redis-cluster", "h:2"]).hasPrefix(
            "--redis-url and --redis-cluster both given: use exactly one of --redis-url, --redis-cluster, --redis-sentinel"))
        #expect(failure(["--redis-cluster", "h:2", "--redis-sentinel", "h:3", "--sentinel-master", "m"])
            .hasPrefix("--redis-cluster and --redis-sentinel both given"))
        #expect(failure([], ["REDIS_URL": "redis://h:1", "REDIS_CLUSTER": "h:2"])
            .hasPrefix("REDIS_URL and REDIS_CLUSTER both given"))
        #expect(failure(["--redis-cluster", "h"]).hasPrefix("--redis-cluster: invalid Redis address"))
        #expect(failure(["--redis-cluster", ","]).hasPrefix("--redis-cluster: invalid Redis address: the address list is empty"))
    }

    @Test func aModeFlagOverridesAnotherModeInTheEnvironment() throws {
        // docker compose sets REDIS_URL; `--redis-cluster` on the command line wins, as any flag wins over its variable.
        let config = try resolve(["--redis-cluster", "h:7000"], ["REDIS_URL": "redis://:pw@redis:6379/3"])
        guard case .cluster = config.redisTopology else { Issue.record("not a cluster"); return }
        #expect(config.redis.password == nil && config.redis.database == 0)
    }

    @Test func credentialsApplyToEveryModeAndAreGivenOnce() throws {
        let cluster = try resolve(["--redis-cluster", "h:7000", "--redis-username", "app", "--redis-password", "pw"])
        #expect(cluster.redis.username == "app" && cluster.redis.password == "pw")
        let single = try resolve([], ["REDIS_PASSWORD": "secret"])
        #expect(single.redis.password == "secret" && single.redis.username == nil)
        #expect(failure(["--redis-url", "redis://:pw@h:1", "--redis-password", "other"])
                == "--redis-password and credentials in --redis-url both given: give the credentials once")
        #expect(failure(["--redis-username", "app"])
                == "--redis-username needs a password: --redis-password (or REDIS_PASSWORD)")
        #expect(!failure(["--redis-url", "redis://:pw@h:1", "--redis-password", "other"]).contains("pw"))
    }

    @Test func waitReplicasIsABoundedInteger() throws {
        #expect(try resolve(["--redis-wait-replicas", "2"]).redisWaitReplicas == 2)
        #expect(failure(["--redis-wait-replicas", "101"]) == "--redis-wait-replicas: '101' is not an integer in 0...100")
        #expect(failure([], ["REDIS_WAIT_REPLICAS": "many"]) == "REDIS_WAIT_REPLICAS: 'many' is not an integer in 0...100")
    }
}

extension ScaleSuites {
    @Suite struct RedisTopologyCommandLineTests {
        @Test func conflictingModesExitWithOneLineBeforeBinding() async throws {
            let port = try TestRedis.unusedPort()
            let result = try await onThread {
                try ChildProcess.run(EvServerExecutable.path(), [
                    "--port", "\(port)", "--secret", "s", "--redis-url", "redis://127.0.0.1:1", "--redis-cluster",
                    "127.0.0.1:7000",
                ], environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(20))
            }
            #expect(result.status == .exited(2), "a configuration error is a usage error: \(result.error)")
            let lines = result.error.split(separator: "\n").filter { !$0.isEmpty }
            #expect(lines.count == 1, "stderr: \(result.error)")
            #expect(lines.first?.contains("--redis-url and --redis-cluster both given") == true, "\(result.error)")
        }
    }
}
