import ArgumentParser
import EvServer
import Logging
import RedisSessionStore

#if canImport(Glibc)
import Glibc
#endif
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
            Exit status: 0 done; 1 failed (Redis unreachable, no such session, a port in use); 2 usage (an unknown flag, a bad value, a missing argument).
            """,
        subcommands: [ServeCommand.self, SessionsCommand.self],
        defaultSubcommand: ServeCommand.self
    )

    /// ArgumentParser's own `main`, with one exit status convention for the server and every subcommand:
    /// 0 done (and `--help`), 1 a failure at run time, 2 a usage error, whether ArgumentParser found it (an unknown
    /// flag, a missing argument: its 64) or the configuration did (``ConfigurationError``: a bad value).
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        // `evserver --help`: the overview and the server's flags, which is what someone starting a server wants.
        if arguments == ["--help"] || arguments == ["-h"] {
            print(helpMessage() + "\n\n" + helpMessage(for: ServeCommand.self))
            return
        }
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            guard code != .success else { exit(withError: error) }   // --help, help <command>: printed on stdout
            let message = fullMessage(for: error)
            if !message.isEmpty { printToStandardError(message) }
            if code == .validationFailure, let index = arguments.firstIndex(of: "sessions"), index > 0 {
                printToStandardError("The Redis flags of `sessions` go after it: evserver sessions <subcommand> [flags]")
            }
            let usage = error is ConfigurationError || code == .validationFailure
            exit(withError: ExitCode(usage ? Self.usageStatus : (code.rawValue == 0 ? 1 : code.rawValue)))
        }
    }

    /// The exit status of a usage error.
    static let usageStatus: Int32 = 2
}

/// `evserver [serve]`: the server, the default subcommand. A subcommand of its own so that its flags are its own:
/// `evserver sessions ...` takes the Redis flags and refuses `--threads` and the like instead of ignoring them.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the server (the default: `evserver [flags]` is `evserver serve [flags]`)."
    )

    @OptionGroup var options: ServerOptions

    /// Runs the demo server until SIGINT or SIGTERM (then shuts down gracefully).
    func run() async throws {
        let config = try options.resolve(environment: ProcessInfo.processInfo.environment)
        bootstrapLogging(format: config.logFormat, instance: config.instance)
        let logger = Logger(label: "evserver")
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

/// A run-time failure of a command (no such session, Redis unreachable): one line on stderr, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One line on stderr.
func printToStandardError(_ line: String) {
    let text = line + "\n"
    _ = write(STDERR_FILENO, text, text.utf8.count)
}
