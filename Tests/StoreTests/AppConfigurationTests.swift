import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import RedisSessionStore
import Testing
@testable import EvServerApp

@Suite struct AppConfigurationTests {
    func resolve(_ arguments: [String], _ environment: [String: String] = [:]) throws -> AppConfiguration {
        try ServerOptions.parse(arguments).resolve(environment: environment)
    }

    /// A negative or otherwise bad number is named with its flag and the value it got, not taken for an option.
    @Test func aBadNumberNamesTheFlagAndTheValue() throws {
        for (arguments, message) in [
            (["--max-age", "-5"], "--max-age: '-5' is not an integer in 1...315360000"),
            (["--port", "-1"], "--port: '-1' is not an integer in 0...65535"),
            (["--threads", "many"], "--threads: 'many' is not an integer in 1...256"),
        ] {
            do {
                _ = try resolve(arguments + ["--secret", String(repeating: "s", count: 32)])
                Issue.record("\(arguments) was accepted")
            } catch {
                #expect("\(error)" == message, "\(arguments)")
            }
        }
    }

    @Test func defaultsMatchTheContract() throws {
        let config = try resolve(["--secret", "s"])
        #expect(config.host == "127.0.0.1")
        #expect(config.port == 3000)
        #expect(config.threads == AppConfiguration.coreCount)
        #expect(config.store == .redis)
        #expect(config.redisURL == "redis://127.0.0.1:6379/0")
        #expect(config.cookieName == "connect.sid")
        #expect(config.maxAge == nil)
        #expect(config.prefix == "sess:")
        #expect(!config.rolling && !config.resave && !config.saveUninitialized)
        #expect(config.cookieSameSite == .lax)
        #expect(config.trustProxy == .none)
        #expect(config.maxBody == 65536)
        #expect(config.redis.commandTimeout == .milliseconds(1000))
        #expect(config.shutdownTimeout == 10)
        #expect(config.maxConnections == 10_000)
    }

    @Test func environmentIsReadAndFlagsWin() throws {
        let environment = [
            "EVSERVER_HOST": "0.0.0.0", "PORT": "4000", "EVSERVER_THREADS": "2", "SESSION_STORE": "memory",
            "REDIS_URL": "redis://:pw@redis:6380/2", "SESSION_SECRET": "new,old", "SESSION_COOKIE_NAME": "sid",
            "SESSION_MAX_AGE": "60", "SESSION_PREFIX": "app:", "SESSION_ROLLING": "true", "SESSION_RESAVE": "1",
            "SESSION_SAVE_UNINITIALIZED": "yes", "SESSION_COOKIE_SECURE": "auto", "SESSION_COOKIE_SAMESITE": "strict",
            "TRUST_PROXY": "on", "INSTANCE_NAME": "app7", "EVSERVER_MAX_BODY": "1024", "REDIS_TIMEOUT_MS": "250",
            "SESSION_IDLE_TIMEOUT": "600", "SESSION_ABSOLUTE_TIMEOUT": "3600", "EVSERVER_SHUTDOWN_TIMEOUT": "30",
            "EVSERVER_MAX_CONNECTIONS": "20000",
        ]
        let config = try resolve([], environment)
        #expect(config.host == "0.0.0.0")
        #expect(config.port == 4000)
        #expect(config.threads == 2)
        #expect(config.store == .memory)
        #expect(config.redis.port == 6380 && config.redis.database == 2 && config.redis.password == "pw")
        #expect(config.secrets == ["new", "old"])
        #expect(config.cookieName == "sid")
        #expect(config.maxAge == 60)
        #expect(config.prefix == "app:")
        #expect(config.rolling && config.resave && config.saveUninitialized)
        #expect(config.cookieSecure == .auto)
        #expect(config.cookieSameSite == .strict)
        #expect(config.trustProxy == .all)
        #expect(config.instance == "app7")
        #expect(config.maxBody == 1024)
        #expect(config.redis.commandTimeout == .milliseconds(250))
        #expect(config.idleTimeout == 600)
        #expect(config.absoluteTimeout == 3600)
        #expect(config.shutdownTimeout == 30)
        #expect(config.maxConnections == 20_000)

        let flagged = try resolve(["--port", "5000", "--instance", "flag", "--rolling", "false"], environment)
        #expect(flagged.port == 5000)
        #expect(flagged.instance == "flag")
        #expect(!flagged.rolling)
    }

    @Test(arguments: [
        (["--port", "70000"], "--port"),
        (["--port", "abc"], "--port"),
        (["--store", "postgres"], "unknown store"),
        (["--redis-url", "http://x"], "redis url"),
        (["--redis-url", "redis://host:99999"], "redis url"),
        (["--threads", "0"], "--threads"),
        (["--cookie-secure", "maybe"], "--cookie-secure"),
        (["--cookie-samesite", "loose"], "--cookie-samesite"),
        (["--rolling", "perhaps"], "--rolling"),
        (["--cookie-name", "a b"], "--cookie-name"),
        (["--prefix", "sess*"], "--prefix"),
        (["--max-body=-1"], "--max-body"),
        (["--idle-timeout", "0"], "--idle-timeout"),
        (["--trust-proxy", "10.0.0.0/33"], "--trust-proxy"),
        (["--absolute-timeout", "soon"], "--absolute-timeout"),
        (["--shutdown-timeout=-5"], "--shutdown-timeout"),
        (["--max-connections", "0"], "--max-connections"),
        (["--instance", "app\r\nSet-Cookie: x=y"], "--instance"),
        (["--instance", "a\u{0}b"], "--instance"),
    ])
    func badValuesFailWithOneClearLine(arguments: [String], mentions: String) throws {
        let error = #expect(throws: ConfigurationError.self) { try resolve(arguments + ["--secret", "s"]) }
        let message = error?.description ?? ""
        #expect(message.contains(mentions), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test func cookieSecureFalseIsStoredAsExpressStoresSecureFalse() throws {
        // Left out: express without the option (no `secure` member stored); `false`: express's `secure: false`.
        #expect(try resolve(["--secret", "s"]).cookieSecure == .never)
        #expect(try resolve(["--secret", "s", "--cookie-secure", "false"]).cookieSecure == .off)
        #expect(try resolve(["--secret", "s"], ["SESSION_COOKIE_SECURE": "false"]).cookieSecure == .off)
        #expect(try resolve(["--secret", "s", "--cookie-secure", "0"]).cookieSecure == .off)
        #expect(try resolve(["--secret", "s", "--cookie-secure", "true"]).cookieSecure == .always)
        #expect(try resolve(["--secret", "s", "--cookie-secure", "AUTO"]).cookieSecure == .auto)
        #expect(try resolve(["--secret", "s", "--cookie-secure", "false"], ["SESSION_COOKIE_SECURE": "true"])
            .cookieSecure == .off)
    }

    @Test func missingSecretRefusesToStart() throws {
        let error = #expect(throws: ConfigurationError.self) { try resolve([]) }
        #expect(error?.description.contains("SESSION_SECRET") == true)
    }

    // MARK: - TLS to Redis

    /// PEM-named files that exist (their content is never parsed here) and a directory, in a fresh temp directory.
    struct TLSFiles {
        let directory: String
        var ca: String { directory + "/ca.pem" }
        var certificate: String { directory + "/client.crt" }
        var key: String { directory + "/client.key" }
        var unreadable: String { directory + "/unreadable.pem" }

        init() throws {
            directory = FileManager.default.temporaryDirectory.path + "/evserver-tls-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for path in [ca, certificate, key, unreadable] {
                #expect(FileManager.default.createFile(atPath: path, contents: Data("-----BEGIN-----\n".utf8)))
            }
            try FileManager.default.setAttributes([.posixPermissions: 0], ofItemAtPath: unreadable)
        }

        /// `$CA`, `$CERT`, `$KEY`, `$DIR`, `$UNREADABLE` in `arguments` replaced by the paths.
        func substitute(_ arguments: [String]) -> [String] {
            arguments.map {
                $0.replacing("$CA", with: ca).replacing("$CERT", with: certificate)
                    .replacing("$KEY", with: key).replacing("$DIR", with: directory)
                    .replacing("$UNREADABLE", with: unreadable)
            }
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    @Test func plainByDefaultInEveryMode() throws {
        #expect(try resolve(["--secret", "s"]).redis.tls == nil)
        let cluster = try resolve(["--secret", "s", "--redis-cluster", "10.0.0.1:7000"])
        guard case .cluster(let configuration) = cluster.redisDeployment(redis: cluster.redis) else {
            Issue.record("not a cluster: \(cluster.redisTopology)")
            return
        }
        #expect(configuration.node.tls == nil)
        let sentinel = try resolve(["--secret", "s", "--redis-sentinel", "10.0.0.1:26379", "--sentinel-master", "m",
                                    "--redis-tls", "false"])
        guard case .sentinel(let configuration) = sentinel.redisDeployment(redis: sentinel.redis) else {
            Issue.record("not Sentinel: \(sentinel.redisTopology)")
            return
        }
        #expect(configuration.primary.tls == nil && configuration.sentinelTLS == nil)
        #expect(sentinel.redisTLSWarning == nil)
    }

    @Test func redissURLTurnsTLSOnWithVerificationAndTheSystemCAs() throws {
        let config = try resolve(["--secret", "s",
                                  "--redis-url", "rediss://:pw@my-cache.xxxxxx.use1.cache.amazonaws.com:6379"])
        #expect(config.redis.tls == RedisTLSConfiguration())
        #expect(config.redis.tls?.verifiesPeer == true)
        #expect(config.redis.host == "my-cache.xxxxxx.use1.cache.amazonaws.com" && config.redis.password == "pw")
        #expect(config.redisDescription == "rediss://:***@my-cache.xxxxxx.use1.cache.amazonaws.com:6379")
        #expect(config.redisTLSWarning == nil)
        // --redis-tls may repeat what the scheme says.
        #expect(try resolve(["--secret", "s", "--redis-url", "rediss://h", "--redis-tls", "true"]).redis.tls != nil)
        #expect(try resolve(["--secret", "s", "--redis-tls", "false"]).redis.tls == nil)
    }

    @Test func tlsFlagsAndVariablesResolveAndFlagsWin() throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let flagged = try resolve(["--secret", "s", "--redis-url", "rediss://cache:6380", "--redis-tls-ca", files.ca,
                                   "--redis-tls-cert", files.certificate, "--redis-tls-key", files.key,
                                   "--redis-tls-server-name", "cache.internal", "--redis-tls-insecure", "false"])
        #expect(flagged.redis.tls == RedisTLSConfiguration(caFile: files.ca, certificateFile: files.certificate,
                                                           keyFile: files.key, serverName: "cache.internal"))

        let environment = [
            "REDIS_URL": "rediss://cache:6380", "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": files.ca,
            "REDIS_TLS_CERT_FILE": files.certificate, "REDIS_TLS_KEY_FILE": files.key,
            "REDIS_TLS_SERVER_NAME": "from-env.internal", "REDIS_TLS_INSECURE": "true",
        ]
        let fromEnvironment = try resolve(["--secret", "s"], environment)
        #expect(fromEnvironment.redis.tls == RedisTLSConfiguration(
            caFile: files.ca, certificateFile: files.certificate, keyFile: files.key, serverName: "from-env.internal",
            verifiesPeer: false))

        let overridden = try resolve(["--secret", "s", "--redis-tls-server-name", "flag.internal",
                                      "--redis-tls-insecure", "false", "--redis-tls-ca", files.certificate], environment)
        #expect(overridden.redis.tls?.serverName == "flag.internal")
        #expect(overridden.redis.tls?.verifiesPeer == true)
        #expect(overridden.redis.tls?.caFile == files.certificate)
        #expect(overridden.redis.tls?.keyFile == files.key)
    }

    @Test func clusterWithRedisTLSSetsTheNodesTLS() throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let expected = RedisTLSConfiguration(caFile: files.ca, serverName: "cluster.internal")
        for config in [
            try resolve(["--secret", "s", "--redis-cluster", "10.0.0.1:7000,10.0.0.2:7000", "--redis-tls", "true",
                         "--redis-tls-ca", files.ca, "--redis-tls-server-name", "cluster.internal"]),
            try resolve(["--secret", "s"], ["REDIS_CLUSTER": "10.0.0.1:7000", "REDIS_TLS": "yes",
                                            "REDIS_TLS_CA_FILE": files.ca, "REDIS_TLS_SERVER_NAME": "cluster.internal"]),
        ] {
            guard case .cluster(let cluster) = config.redisDeployment(redis: config.redis) else {
                Issue.record("not a cluster: \(config.redisTopology)")
                continue
            }
            #expect(cluster.node.tls == expected)
            #expect(config.redisDescription.hasSuffix("(TLS)"), "\(config.redisDescription)")
        }
    }

    @Test func sentinelWithRedisTLSSetsThePrimaryAndTheSentinelsTLS() throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let config = try resolve(["--secret", "s", "--redis-sentinel", "10.0.0.1:26379,10.0.0.2:26379",
                                  "--sentinel-master", "mymaster", "--redis-tls", "true",
                                  "--redis-tls-cert", files.certificate, "--redis-tls-key", files.key])
        guard case .sentinel(let sentinel) = config.redisDeployment(redis: config.redis) else {
            Issue.record("not Sentinel: \(config.redisTopology)")
            return
        }
        let expected = RedisTLSConfiguration(certificateFile: files.certificate, keyFile: files.key)
        #expect(sentinel.primary.tls == expected)
        #expect(sentinel.sentinelTLS == expected)
        #expect(sentinel.masterName == "mymaster")
    }

    @Test func insecureTLSIsAllowedWithACAFileAndWarnsLoudly() throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let config = try resolve(["--secret", "s", "--redis-url", "rediss://cache", "--redis-tls-insecure", "true",
                                  "--redis-tls-ca", files.ca])
        #expect(config.redis.tls == RedisTLSConfiguration(caFile: files.ca, verifiesPeer: false))
        let warning = try #require(config.redisTLSWarning)
        #expect(warning.contains("verification is OFF") && warning.contains("read and change sessions"))
        #expect(!warning.contains("\n"))
        // The memory store talks to no Redis: nothing to warn about.
        #expect(try resolve(["--secret", "s", "--store", "memory", "--redis-url", "rediss://cache",
                             "--redis-tls-insecure", "true"]).redisTLSWarning == nil)
    }

    @Test(arguments: [
        (["--redis-tls", "true"], "--redis-tls true conflicts with a redis:// URL"),
        (["--redis-url", "redis://cache", "--redis-tls", "on"], "--redis-tls true conflicts with a redis:// URL"),
        (["--redis-url", "rediss://cache", "--redis-tls", "false"], "--redis-tls false conflicts with a rediss:// URL"),
        (["--redis-cluster", "10.0.0.1:7000", "--redis-tls", "maybe"], "--redis-tls: 'maybe' is not true or false"),
        (["--redis-tls-ca", "$CA"], "--redis-tls-ca needs a rediss:// URL or --redis-tls true"),
        (["--redis-tls-cert", "$CERT", "--redis-tls-key", "$KEY"],
         "--redis-tls-cert needs a rediss:// URL or --redis-tls true"),
        (["--redis-tls-key", "$KEY"], "--redis-tls-key needs a rediss:// URL or --redis-tls true"),
        (["--redis-tls-server-name", "cache"], "--redis-tls-server-name needs a rediss:// URL or --redis-tls true"),
        (["--redis-tls-insecure", "true"], "--redis-tls-insecure needs a rediss:// URL or --redis-tls true"),
        (["--redis-cluster", "10.0.0.1:7000", "--redis-tls", "false", "--redis-tls-ca", "$CA"],
         "--redis-tls-ca needs a rediss:// URL or --redis-tls true"),
        (["--redis-sentinel", "10.0.0.1:26379", "--sentinel-master", "m", "--redis-tls-ca", "$CA"],
         "--redis-tls-ca needs a rediss:// URL or --redis-tls true"),
        (["--redis-url", "rediss://cache", "--redis-tls-insecure", "perhaps"],
         "--redis-tls-insecure: 'perhaps' is not true or false"),
        (["--redis-url", "rediss://cache", "--redis-tls-cert", "$CERT"],
         "redis tls: a TLS client certificate needs its key file"),
        (["--redis-cluster", "10.0.0.1:7000", "--redis-tls", "true", "--redis-tls-key", "$KEY"],
         "redis tls: a TLS client key file needs its certificate file"),
        (["--redis-url", "rediss://cache", "--redis-tls-ca", ""], "redis tls: the TLS CA file path is empty"),
        (["--redis-url", "rediss://cache", "--redis-tls-server-name", "my cache"], "redis tls: invalid TLS server name"),
        (["--redis-url", "rediss://cache", "--redis-tls-ca", "$DIR/missing.pem"],
         "--redis-tls-ca: '$DIR/missing.pem' does not exist"),
        (["--redis-url", "rediss://cache", "--redis-tls-cert", "$CERT", "--redis-tls-key", "$DIR/nope.key"],
         "--redis-tls-key: '$DIR/nope.key' does not exist"),
        (["--redis-url", "rediss://cache", "--redis-tls-cert", "$DIR", "--redis-tls-key", "$KEY"],
         "--redis-tls-cert: '$DIR' is a directory"),
        (["--redis-url", "rediss://cache", "--redis-tls-insecure", "true", "--redis-tls-ca", "$DIR/gone.pem"],
         "--redis-tls-ca: '$DIR/gone.pem' does not exist"),
    ])
    func badTLSSettingsFailWithOneClearLine(arguments: [String], mentions: String) throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let error = #expect(throws: ConfigurationError.self) {
            try resolve(files.substitute(arguments) + ["--secret", "s"])
        }
        let message = error?.description ?? ""
        #expect(message.contains(files.substitute([mentions])[0]), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test(arguments: [
        (["REDIS_TLS": "true"], "REDIS_TLS true conflicts with a redis:// URL"),
        (["REDIS_URL": "rediss://cache", "REDIS_TLS": "0"], "REDIS_TLS false conflicts with a rediss:// URL"),
        (["REDIS_TLS_CA_FILE": "$CA"], "REDIS_TLS_CA_FILE needs a rediss:// URL or --redis-tls true"),
        (["REDIS_TLS_CERT_FILE": "$CERT", "REDIS_TLS_KEY_FILE": "$KEY"],
         "REDIS_TLS_CERT_FILE needs a rediss:// URL or --redis-tls true"),
        (["REDIS_TLS_SERVER_NAME": "cache"], "REDIS_TLS_SERVER_NAME needs a rediss:// URL or --redis-tls true"),
        (["REDIS_TLS_INSECURE": "true"], "REDIS_TLS_INSECURE needs a rediss:// URL or --redis-tls true"),
        (["REDIS_CLUSTER": "10.0.0.1:7000", "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": "$DIR/missing.pem"],
         "REDIS_TLS_CA_FILE: '$DIR/missing.pem' does not exist"),
    ])
    func badTLSVariablesFailNamingTheVariable(environment: [String: String], mentions: String) throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let substituted = environment.mapValues { files.substitute([$0])[0] }
        let error = #expect(throws: ConfigurationError.self) { try resolve(["--secret", "s"], substituted) }
        let message = error?.description ?? ""
        #expect(message.contains(files.substitute([mentions])[0]), "\(message)")
        #expect(!message.contains("\n"))
    }

    // Root reads any file whatever its mode, so the check can only be seen failing as another user.
    @Test(.enabled(if: geteuid() != 0, "root can read a file of mode 000"))
    func unreadableCAFileFailsWithOneClearLine() throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let error = #expect(throws: ConfigurationError.self) {
            try resolve(["--secret", "s", "--redis-url", "rediss://cache", "--redis-tls-ca", files.unreadable])
        }
        #expect(error?.description == "--redis-tls-ca: '\(files.unreadable)' is not readable by this user")
    }

    @Test func sessionsCommandResolvesTheTLSFlagsToo() throws {
        let files = try TLSFiles()
        defer { files.remove() }
        let config = try SessionsOptions.parse(["--redis-cluster", "10.0.0.1:7000", "--redis-tls", "true",
                                                "--redis-tls-ca", files.ca]).resolve()
        guard case .cluster(let cluster) = config.redisDeployment(redis: config.redis) else {
            Issue.record("not a cluster: \(config.redisTopology)")
            return
        }
        #expect(cluster.node.tls == RedisTLSConfiguration(caFile: files.ca))
        let error = #expect(throws: ConfigurationError.self) {
            try SessionsOptions.parse(["--redis-url", "redis://cache", "--redis-tls-ca", files.ca]).resolve()
        }
        #expect(error?.description == "--redis-tls-ca needs a rediss:// URL or --redis-tls true")
    }

    @Test func helpListsEveryTLSFlagWithItsVariable() {
        // The server's flags (`evserver --help` prints these after the overview) and the sessions CLI's.
        for help in [EvServerCommand.helpMessage(for: ServeCommand.self, columns: 1000),
                     EvServerCommand.helpMessage(for: SessionsCommand.List.self, columns: 1000)] {
            for (flag, variable) in [("--redis-tls ", "REDIS_TLS,"), ("--redis-tls-ca", "REDIS_TLS_CA_FILE"),
                                     ("--redis-tls-cert", "REDIS_TLS_CERT_FILE"), ("--redis-tls-key", "REDIS_TLS_KEY_FILE"),
                                     ("--redis-tls-server-name", "REDIS_TLS_SERVER_NAME"),
                                     ("--redis-tls-insecure", "REDIS_TLS_INSECURE")] {
                #expect(help.contains(flag), "\(flag) missing from --help")
                #expect(help.contains("env \(variable)"), "\(variable) missing from --help")
            }
        }
    }
}
