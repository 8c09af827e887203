import ArgumentParser
import EvServer
import RedisClient
import RedisSessionStore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// `evserver sessions ...`: look at and manage the sessions in Redis with the server's own configuration (URL, prefix).
// Listing walks the keyspace with SCAN ... COUNT (never KEYS), so it is safe on a large production keyspace.

/// Options shared by the `sessions` subcommands.
struct SessionsOptions: ParsableArguments {
    /// The server's flags (`--redis-url`, `--prefix`, ...): given before or after `sessions`, they mean the same.
    @OptionGroup var server: ServerOptions

    @Option(name: .customLong("scan-count"), help: "COUNT hint for each SCAN step (default 1000).")
    var scanCount: Int = 1000

    @Flag(help: "Print JSON instead of text.")
    var json = false

    /// Resolves the Redis settings (URL, cluster or sentinel, credentials) and the prefix like the server does:
    /// flag, then environment, then default.
    func resolve() throws -> AppConfiguration {
        let environment = ProcessInfo.processInfo.environment
        var config = AppConfiguration()
        try server.resolveRedis(into: &config, environment: environment)
        try server.resolvePrefix(into: &config, environment: environment)
        guard scanCount > 0 else { throw ConfigurationError("--scan-count must be positive") }
        return config
    }

    /// The session id an argument names: a raw id, or the `connect.sid` cookie's value as a browser shows it
    /// (`s%3A<id>.<signature>`, or decoded, `s:<id>.<signature>`). A cookie value's signature is checked when a
    /// secret is given (`--secret` or `SESSION_SECRET`, as the server takes it); without one the id is taken as is.
    func sessionID(from argument: String) throws -> String {
        let decoded = percentDecode(argument) ?? argument
        guard decoded.hasPrefix("s:"), let dot = decoded.lastIndex(of: "."), dot > decoded.index(decoded.startIndex,
                                                                                                  offsetBy: 2)
        else { return argument }
        let secrets = (server.secret ?? ProcessInfo.processInfo.environment["SESSION_SECRET"])?
            .split(separator: ",", omittingEmptySubsequences: true).map(String.init) ?? []
        guard !secrets.isEmpty else { return String(decoded[decoded.index(decoded.startIndex, offsetBy: 2)..<dot]) }
        guard let id = try CookieSigner(secrets: secrets).unsign(decoded) else {
            throw ConfigurationError("the cookie value's signature does not match the secret (--secret, SESSION_SECRET)")
        }
        return id
    }
}

/// The session store for the duration of one command (on a loop thread the store starts for itself).
struct SessionInspector {
    let store: RedisSessionStore

    init(_ options: SessionsOptions) throws {
        let config = try options.resolve()
        store = config.makeRedisStore(redis: config.redis, scanCount: options.scanCount)
    }

    /// Runs `body` with an inspector; connection failures become one clear line.
    static func with<T>(_ options: SessionsOptions, _ body: (SessionInspector) async throws -> T) async throws -> T {
        bootstrapLogging(defaultLevel: .warning)   // the command's output is the answer; connection chatter is not
        let inspector = try SessionInspector(options)
        do {
            return try await body(inspector)
        } catch where error is RedisClientError || error is RedisError || error is RedisClusterError {
            throw ConfigurationError("redis: \(error)")
        }
    }
}

/// Session ids are base64url, so one in 64 starts with '-' and reads as an option (`-h...` even as help): `--` ends
/// the options, as in any Unix command.
private let idHelp = ArgumentHelp(
    "The session id (without the prefix), or the connect.sid cookie's value as the browser shows it (s%3A<id>.<sig>, "
    + "its signature checked when a secret is given). Put -- before an id that starts with '-': destroy -- -Ab3...")

/// `evserver sessions`: inspect sessions in Redis.
struct SessionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sessions",
        abstract: "List, show, count, destroy or clear sessions in Redis (SCAN, never KEYS).",
        subcommands: [List.self, Show.self, Count.self, Destroy.self, Clear.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List session ids with their TTL.")
        @OptionGroup var options: SessionsOptions
        @Option(help: "Stop after this many sessions (default: all).") var limit: Int?

        func run() async throws {
            try await SessionInspector.with(options) { inspector in
                var listed = 0
                var entries: [JSONValue] = []
                if !options.json { print("ID\tTTL") }
                try await inspector.store.forEachIDPage { ids in
                    for id in ids {
                        if let limit, listed >= limit { return }
                        // nil: expired between SCAN and TTL.
                        guard let ttl = try await inspector.store.timeToLive(id) else { continue }
                        listed += 1
                        if options.json {
                            entries.append(["id": .string(id), "ttl": .number(String(ttl))])
                        } else {
                            print("\(id)\t\(ttl)")
                        }
                    }
                }
                if options.json { print(JSONValue.array(entries).jsonString) }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one session's JSON and TTL.")
        @OptionGroup var options: SessionsOptions
        @Argument(help: idHelp) var argument: String

        func run() async throws {
            let id = try options.sessionID(from: argument)
            try await SessionInspector.with(options) { inspector in
                // The raw value, not a decoded session: garbage at a session key is worth seeing as it is.
                let key = inspector.store.key(for: id)
                guard let bytes = try await inspector.store.rawValue(of: id),
                      let ttl = try await inspector.store.timeToLive(id) else {
                    throw ConfigurationError("no session \(id)")
                }
                let value = (try? JSONValue(parsing: bytes)) ?? .string(String(decoding: bytes, as: UTF8.self))
                if options.json {
                    print(JSONValue.object(["id": .string(id), "ttl": .number(String(ttl)), "session": value]).jsonString)
                } else {
                    print("id:      \(id)\nkey:     \(key)\nttl:     \(ttl) s\nsession: \(value.jsonString)")
                }
            }
        }
    }

    struct Count: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Count sessions.")
        @OptionGroup var options: SessionsOptions

        func run() async throws {
            let count = try await SessionInspector.with(options) { try await $0.store.length() }
            print(options.json ? #"{"count":\#(count)}"# : "\(count)")
        }
    }

    struct Destroy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Destroy one session (DEL).")
        @OptionGroup var options: SessionsOptions
        @Argument(help: idHelp) var argument: String

        func run() async throws {
            let id = try options.sessionID(from: argument)
            let removed = try await SessionInspector.with(options) { inspector in
                // TTL first, to say whether there was one: the store's destroy is a no-op for a missing id.
                guard try await inspector.store.timeToLive(id) != nil else { return 0 }
                try await inspector.store.destroy(id)
                return 1
            }
            print(options.json ? #"{"destroyed":\#(removed)}"# : (removed == 1 ? "destroyed \(id)" : "no session \(id)"))
        }
    }

    struct Clear: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Destroy every session under the prefix.")
        @OptionGroup var options: SessionsOptions
        @Flag(help: "Required: confirms that every session under the prefix is to be deleted.") var yes = false

        func run() async throws {
            guard yes else { throw ConfigurationError("clear deletes every session under the prefix: add --yes") }
            let removed = try await SessionInspector.with(options) { try await $0.store.removeAll() }
            print(options.json ? #"{"cleared":\#(removed)}"# : "cleared \(removed) sessions")
        }
    }
}
