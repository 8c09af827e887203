import ArgumentParser
import Testing
@testable import EvServerApp

@Suite struct AppConfigurationTests {
    func resolve(_ arguments: [String], _ environment: [String: String] = [:]) throws -> AppConfiguration {
        try ServerOptions.parse(arguments).resolve(environment: environment)
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
    ])
    func badValuesFailWithOneClearLine(arguments: [String], mentions: String) throws {
        let error = #expect(throws: ConfigurationError.self) { try resolve(arguments + ["--secret", "s"]) }
        let message = error?.description ?? ""
        #expect(message.contains(mentions), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test func missingSecretRefusesToStart() throws {
        let error = #expect(throws: ConfigurationError.self) { try resolve([]) }
        #expect(error?.description.contains("SESSION_SECRET") == true)
    }
}
