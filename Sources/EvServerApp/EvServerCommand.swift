import ArgumentParser
import EvServer
import Logging
import RedisSessionStore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// Wiring only, in the order of libevent's sample/http-server.c main(): options -> configuration -> store and
// routes -> bind -> run.

@main
struct EvServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evserver",
        abstract: "An HTTP server on libevent with express-session-compatible sessions in Redis.",
        discussion: """
            Every option also reads an environment variable (shown in its help); the flag wins.
            Example: evserver --secret "$(openssl rand -hex 32)" --redis-url redis://127.0.0.1:6379/0
            TLS: --redis-url "rediss://:$REDIS_PASSWORD@host:6379"; with --redis-cluster or --redis-sentinel: --redis-tls true
            Inspect sessions: evserver sessions list|show -- ID|count|destroy -- ID|clear --yes
            """,
        subcommands: [SessionsCommand.self]
    )

    @OptionGroup var options: ServerOptions

    /// Runs the demo server until SIGINT or SIGTERM (then shuts down gracefully).
    func run() async throws {
        bootstrapLogging()
        let logger = Logger(label: "evserver")
        let config = try options.resolve(environment: ProcessInfo.processInfo.environment)
        if config.secrets.contains(where: { $0.utf8.count < 32 }) {
            logger.warning("a session secret is shorter than 32 bytes; use at least 32 random bytes in production")
        }
        if let warning = config.redisTLSWarning { logger.warning("\(warning)") }
        let demo = try DemoApp(configuration: config)
        let app = demo.makeApplication()
        logger.info("evserver starting", metadata: [
            "instance": "\(config.instance)", "listen": "\(config.host):\(config.port)",
            "store": "\(config.store.rawValue)", "threads": "\(config.threads)",
            "redis": "\(config.store == .redis ? config.redisDescription : "-")",
        ])
        // Suspends until shutdown (SIGINT/SIGTERM drain gracefully); handlers run on the server's own loop threads.
        try await app.listen(host: config.host, port: config.port, threads: config.threads)
    }
}

/// Logs to stderr at LOG_LEVEL (trace, debug, info, notice, warning, error, critical), else `defaultLevel`.
func bootstrapLogging(defaultLevel: Logger.Level = .info) {
    let configured = ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) }
    let level = configured ?? defaultLevel
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}
