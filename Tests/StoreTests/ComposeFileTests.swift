import Foundation
import Testing
import EvServer

// docker-compose.yml and deploy/haproxy.cfg describe the several-instance deployment; nothing runs them in CI
// (no Docker there), so their shape is checked here: the services, persistence, health checks, start order,
// per-instance names, the secret from the environment, the published port, and a balancer that health-checks
// /readyz and round-robins over app1..app3, the same one scripts/cluster.sh runs on loopback.
//
// There is no YAML parser among the Swift dependencies: python3 with PyYAML turns the file into JSON (anchors and
// `<<` merges resolved), and the checks run on that.

extension ScaleSuites {
    @Suite struct ComposeFileTests {
        static let apps = ["app1", "app2", "app3"]

        @Test func composeDefinesRedisThreeAppsAndABalancer() async throws {
            let compose = try await Self.compose()
            let services = try #require(compose["services"]?.objectValue, "docker-compose.yml has no services")
            #expect(Set(services.keys) == Set(["redis", "lb", "prometheus"] + Self.apps))
            // Everything but Prometheus runs without a profile: `docker compose up` is the whole deployment.
            for (name, service) in services where name != "prometheus" {
                #expect(service["profiles"] == nil, "\(name) is in a profile")
            }
        }

        /// The optional `monitoring` profile: Prometheus with deploy/prometheus.yml, scraping each instance's
        /// /metrics directly (through the balancer every scrape would reach another instance).
        @Test func prometheusIsOptionalAndScrapesEachInstance() async throws {
            let prometheus = try #require(try await Self.compose()["services"]?["prometheus"])
            #expect(Self.words(prometheus["profiles"]) == ["monitoring"])
            let volumes = (prometheus["volumes"]?.arrayValue ?? []).compactMap(\.stringValue)
            #expect(volumes.contains("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"), "\(volumes)")
            #expect(Self.words(prometheus["ports"]) == ["9090:9090"])
            let configuration = try String(contentsOfFile: ClusterScript.packageRoot + "/deploy/prometheus.yml",
                                           encoding: .utf8)
            #expect(configuration.contains("metrics_path: /metrics"))
            #expect(configuration.contains(#"targets: ["app1:3000", "app2:3000", "app3:3000"]"#))
            // The loopback copy make cluster runs is the same file with only the targets rewritten.
            let generated = try await onThread { try ClusterScript.prometheusConfiguration(targets: [13001, 13002, 13003]) }
            let rewritten = configuration.replacingOccurrences(
                of: #"["app1:3000", "app2:3000", "app3:3000"]"#,
                with: #"["127.0.0.1:13001", "127.0.0.1:13002", "127.0.0.1:13003"]"#)
            #expect(generated == rewritten)
            let refused = await #expect(throws: HarnessFailure.self) {
                _ = try await onThread { try ClusterScript.prometheusConfiguration(targets: [13001, 13002]) }
            }
            #expect(refused?.description.contains("expected one line") == true, "\(String(describing: refused))")
        }

        @Test func redisPersistsAndHasAHealthCheck() async throws {
            let redis = try #require(try await Self.compose()["services"]?["redis"])
            let command = Self.words(redis["command"])
            #expect(command.first == "redis-server")
            let appendonly = command.firstIndex(of: "--appendonly").map { command.index(after: $0) }
            #expect(appendonly.map { command.indices.contains($0) && command[$0] == "yes" } == true,
                    "redis must run with --appendonly yes: \(command)")
            let volumes = (redis["volumes"]?.arrayValue ?? []).compactMap(\.stringValue)
            #expect(volumes.contains { $0.hasSuffix(":/data") }, "redis data must live in a volume: \(volumes)")
            let test = Self.words(redis["healthcheck"]?["test"])
            #expect(test.contains("redis-cli") && test.contains("ping"), "redis health check: \(test)")
        }

        @Test func everyAppHasItsNameTheSharedSecretAHealthCheckAndWaitsForRedis() async throws {
            let services = try #require(try await Self.compose()["services"])
            var names: [String] = []
            for name in Self.apps {
                let app = try #require(services[name], "no service \(name)")
                let environment = try #require(app["environment"]?.objectValue, "\(name) has no environment map")
                #expect(environment["INSTANCE_NAME"]?.stringValue == name)
                names.append(environment["INSTANCE_NAME"]?.stringValue ?? "")
                // From the environment (.env), required, never a literal in the file.
                let secret = environment["SESSION_SECRET"]?.stringValue ?? ""
                #expect(secret.hasPrefix("${SESSION_SECRET:?") && secret.hasSuffix("}"),
                        "\(name): SESSION_SECRET must come from the environment and be required: \(secret)")
                #expect(environment["REDIS_URL"]?.stringValue == "redis://redis:6379/0")
                #expect(environment["EVSERVER_HOST"]?.stringValue == "0.0.0.0", "\(name) must listen beyond loopback")
                let port = environment["PORT"]?.stringValue ?? ""
                let test = Self.words(app["healthcheck"]?["test"])
                #expect(test.contains { $0.hasSuffix(":\(port)/readyz") }, "\(name) health check must hit /readyz: \(test)")
                #expect(app["depends_on"]?["redis"]?["condition"]?.stringValue == "service_healthy", "\(name)")
                #expect(app["build"] != nil || app["image"] != nil)
                // Longer than evserver's 10 s drain, so docker stop does not SIGKILL a draining instance.
                #expect(Self.seconds(app["stop_grace_period"]?.stringValue) ?? 10 > 10, "\(name): stop_grace_period")
            }
            #expect(Set(names).count == Self.apps.count, "instance names must differ: \(names)")
        }

        @Test func balancerIsPublishedOn8080AndWaitsForHealthyApps() async throws {
            let lb = try #require(try await Self.compose()["services"]?["lb"])
            #expect(lb["image"]?.stringValue?.hasPrefix("haproxy:") == true)
            let ports = (lb["ports"]?.arrayValue ?? []).compactMap(\.stringValue)
            #expect(ports.contains { $0 == "8080:8080" || $0.hasSuffix(":8080:8080") }, "lb ports: \(ports)")
            for name in Self.apps {
                #expect(lb["depends_on"]?[name]?["condition"]?.stringValue == "service_healthy", "lb -> \(name)")
            }
            let volumes = (lb["volumes"]?.arrayValue ?? []).compactMap(\.stringValue)
            #expect(volumes.contains { $0.hasPrefix("./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg") },
                    "lb must mount deploy/haproxy.cfg: \(volumes)")
        }

        @Test func haproxyRoundRobinsOverTheAppsWithReadyzChecks() async throws {
            let config = try String(contentsOfFile: ClusterScript.packageRoot + "/deploy/haproxy.cfg", encoding: .utf8)
            let shape = HAProxyShape(config)
            #expect(shape.binds == [":8080"])
            #expect(shape.backend.contains("balance roundrobin"))
            #expect(shape.backend.contains("option httpchk GET /readyz"))
            #expect(shape.backend.contains("http-check expect status 200"))
            #expect(shape.servers.map(\.name) == Self.apps)
            #expect(shape.servers.map(\.address) == Self.apps.map { "\($0):3000" })
            #expect(shape.servers.allSatisfy { $0.options.contains("check") }, "every server must be health-checked")
        }

        @Test func clusterScriptRunsTheSameBalancerOnLoopback() async throws {
            let deployed = HAProxyShape(try String(contentsOfFile: ClusterScript.packageRoot + "/deploy/haproxy.cfg",
                                                   encoding: .utf8))
            let generated = HAProxyShape(try await onThread {
                try ClusterScript.haproxyConfiguration(listenPort: 18080, backends: [13001, 13002, 13003])
            })
            #expect(generated.binds == ["127.0.0.1:18080"], "cluster.sh must listen on loopback only")
            #expect(generated.backend == deployed.backend, "the backends differ apart from addresses")
            #expect(generated.defaults == deployed.defaults)
            #expect(generated.servers.map(\.name) == deployed.servers.map(\.name))
            #expect(generated.servers.map(\.options) == deployed.servers.map(\.options))
            #expect(generated.servers.map(\.address) == ["127.0.0.1:13001", "127.0.0.1:13002", "127.0.0.1:13003"])
        }

        @Test func clusterScriptRejectsATemplateWithoutItsShape() async throws {
            // Fewer ports than servers: the generator must fail, not produce a half-rewritten configuration.
            let failure = await #expect(throws: HarnessFailure.self) {
                _ = try await onThread {
                    try ClusterScript.haproxyConfiguration(listenPort: 18080, backends: [13001, 13002])
                }
            }
            #expect(failure?.description.contains("expected one bind on :8080 and servers app1..app2") == true)
        }

        // MARK: - Helpers

        /// docker-compose.yml as JSON, through python3 + PyYAML: the python3 on PATH (pip's PyYAML), else Debian's
        /// /usr/bin/python3 (python3-yaml).
        static func compose() async throws -> JSONValue {
            try await onThread { try composeBlocking() }
        }

        /// ``compose()``, blocking the calling thread while python runs.
        static func composeBlocking() throws -> JSONValue {
            let script = """
                import json, sys
                try:
                    import yaml
                except ImportError:
                    sys.exit(3)
                with open(sys.argv[1]) as f:
                    json.dump(yaml.safe_load(f), sys.stdout)
                """
            var interpreters: [String] = []
            for candidate in [ChildProcess.find("python3"), "/usr/bin/python3"].compactMap({ $0 })
            where FileManager.default.isExecutableFile(atPath: candidate) && !interpreters.contains(candidate) {
                interpreters.append(candidate)
            }
            var tried: [String] = []
            for python in interpreters {
                let result = try ChildProcess.run(python, ["-c", script, ClusterScript.packageRoot + "/docker-compose.yml"],
                                                  timeout: .seconds(30))
                if result.status == .exited(3) {
                    tried.append(python)
                    continue
                }
                guard result.status == .exited(0) else {
                    throw HarnessFailure("\(python) could not read docker-compose.yml (\(result.status)): \(result.error)")
                }
                return try JSONValue(parsing: result.output)
            }
            throw HarnessFailure(tried.isEmpty
                ? "python3 is not installed; ComposeFileTests need it with PyYAML to read docker-compose.yml"
                : "PyYAML is missing for \(tried.joined(separator: " and ")): pip install pyyaml, or apt-get install "
                    + "python3-yaml (scripts/test.sh could add python3-yaml to ensure_packages)")
        }

        /// A compose command or test (a list, or a string split on spaces).
        static func words(_ value: JSONValue?) -> [String] {
            if let array = value?.arrayValue { return array.compactMap(\.stringValue) }
            return value?.stringValue?.split(separator: " ").map(String.init) ?? []
        }

        /// "15s", "1m30s" -> seconds.
        static func seconds(_ text: String?) -> Int? {
            guard let text, !text.isEmpty else { return nil }
            var total = 0, number = 0
            for character in text {
                if let digit = character.wholeNumberValue {
                    number = number * 10 + digit
                } else {
                    switch character {
                    case "h": total += number * 3600
                    case "m": total += number * 60
                    case "s": total += number
                    default: return nil
                    }
                    number = 0
                }
            }
            return total + number
        }
    }
}

/// The parts of an haproxy configuration the deployment depends on: binds, the `defaults` lines, and the backend's
/// lines with its servers taken apart (name, address, options).
struct HAProxyShape {
    struct Server: Equatable {
        let name: String
        let address: String
        let options: [String]
    }

    var binds: [String] = []
    var defaults: [String] = []
    var backend: [String] = []
    var servers: [Server] = []

    init(_ text: String) {
        var section = ""
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let first = words.first else { continue }
            if !raw.hasPrefix(" ") && !raw.hasPrefix("\t") {
                section = first
                continue
            }
            switch (section, first) {
            case ("frontend", "bind"): binds.append(words.count > 1 ? words[1] : "")
            case ("defaults", _): defaults.append(words.joined(separator: " "))
            case ("backend", "server") where words.count >= 3:
                servers.append(Server(name: words[1], address: words[2], options: Array(words.dropFirst(3))))
            case ("backend", _): backend.append(words.joined(separator: " "))
            default: break
            }
        }
    }
}
