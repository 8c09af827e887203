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

/// Options shared by the `sessions` subcommands: where the sessions are and how to print them. None of the server's
/// other flags: the subcommands neither listen nor sign anything.
struct SessionsOptions: ParsableArguments {
    @OptionGroup(title: "Redis") var redis: RedisOptions

    @Option(parsing: .unconditional, help: "Redis key prefix of the sessions (env SESSION_PREFIX, default sess:).")
    var prefix: String?

    @Flag(help: "Print JSON instead of text.")
    var json = false

    /// Not an option of these commands: refused with the reason (sessions in the memory store live inside one server
    /// process) rather than as an unknown flag, and so is SESSION_STORE=memory, which would otherwise be ignored.
    @Option(parsing: .unconditional, help: .hidden)
    var store: String?

    /// Resolves the Redis settings (URL, cluster or sentinel, credentials, TLS) and the prefix like the server does:
    /// flag, then environment, then default.
    /// - Throws: ``ConfigurationError`` naming the first bad value.
    func resolve() throws -> AppConfiguration {
        let environment = ProcessInfo.processInfo.environment
        if let (v, name) = FlagOrVariable(environment: environment)(store, "--store", "SESSION_STORE"),
           v.lowercased() != StoreKind.redis.rawValue {
            throw ConfigurationError("\(name) \(v): evserver sessions inspects sessions in Redis; the memory store's "
                                     + "live inside one server process, which nothing outside it can reach")
        }
        var config = AppConfiguration()
        try redis.resolve(into: &config, environment: environment)
        try ServerOptions.resolvePrefix(prefix, into: &config, environment: environment)
        return config
    }
}

/// `--scan-count`, for the subcommands that walk the keyspace.
struct ScanOptions: ParsableArguments {
    @Option(name: .customLong("scan-count"), parsing: .unconditional, help: "COUNT hint for each SCAN step.")
    var scanCount: Int = 1000

    func validate() throws {
        guard scanCount > 0 else { throw ValidationError("--scan-count: '\(scanCount)' is not a positive integer") }
    }
}

/// The one session `show` and `destroy` act on, and the secrets that check it when it is given as a cookie value.
struct SessionArgument: ParsableArguments {
    @Option(parsing: .unconditional, help: Self.secretHelp)
    var secret: String?

    @Argument(help: Self.argumentHelp)
    var argument: String

    static let secretHelp = ArgumentHelp(
        "The server's secrets, comma-separated: a cookie value given as a session must carry a signature one of them "
        + "made (env SESSION_SECRET; without one, the id in a cookie value is taken unchecked).")

    /// Session ids are base64url, so one in 64 starts with '-' and reads as an option (`-h...` even as help): `--`
    /// ends the options, as in any Unix command.
    static let argumentHelp = ArgumentHelp(
        "The session id (without the prefix), or the connect.sid cookie's value as the browser shows it "
        + "(s%3A<id>.<sig>, its signature checked when a secret is given). Put -- before an id that starts with '-': "
        + "destroy -- -Ab3...")

    /// The session id an argument names: a raw id, or the `connect.sid` cookie's value as a browser shows it
    /// (`s%3A<id>.<signature>`, or decoded, `s:<id>.<signature>`). A cookie value's signature is checked when a
    /// secret is given (`--secret` or `SESSION_SECRET`, as the server takes it); without one the id is taken as is.
    /// - Throws: ``CommandFailure`` when the signature matches none of the secrets.
    func sessionID() throws -> String {
        try Self.sessionID(from: argument, secret: secret)
    }

    /// ``sessionID()`` of any argument (`destroy --user ... --except <session>` takes one too).
    static func sessionID(from argument: String, secret: String?) throws -> String {
        let decoded = percentDecode(argument) ?? argument
        guard decoded.hasPrefix("s:"), let dot = decoded.lastIndex(of: "."), dot > decoded.index(decoded.startIndex,
                                                                                                  offsetBy: 2)
        else { return argument }
        let secrets = (secret ?? ProcessInfo.processInfo.environment["SESSION_SECRET"])?
            .split(separator: ",", omittingEmptySubsequences: true).map(String.init) ?? []
        guard !secrets.isEmpty else { return String(decoded[decoded.index(decoded.startIndex, offsetBy: 2)..<dot]) }
        guard let id = try CookieSigner(secrets: secrets).unsign(decoded) else {
            throw CommandFailure("the cookie value's signature does not match the secret (--secret, SESSION_SECRET)")
        }
        return id
    }
}

/// The session store for the duration of one command (on a loop thread the store starts for itself).
struct SessionInspector {
    let store: RedisSessionStore

    /// Runs `body` with an inspector; a Redis failure becomes one clear line (exit status 1).
    static func with<T>(_ options: SessionsOptions, scanCount: Int = 100,
                        _ body: (SessionInspector) async throws -> T) async throws -> T {
        // The answer is the command's output and a failure its one error line: the client's own log lines
        // ("not reachable ... retrying with back-off") would only repeat it. LOG_LEVEL still shows them.
        bootstrapLogging(defaultLevel: .error)
        let config = try options.resolve()
        if let warning = config.redisTLSWarning { printToStandardError("warning: \(warning)") }
        let inspector = SessionInspector(store: config.makeRedisStore(redis: config.redis, scanCount: scanCount))
        do {
            return try await body(inspector)
        } catch where error is RedisClientError || error is RedisError || error is RedisClusterError {
            throw CommandFailure("redis: \(error)")
        }
    }
}

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
        @OptionGroup var scan: ScanOptions
        @Option(parsing: .unconditional, help: "Stop after this many sessions (default: all).") var limit: Int?
        @Option(parsing: .unconditional,
                help: "Only this signed-in user's sessions, from the per-user index (no SCAN), with their sign-in time, last activity and client.")
        var user: String?

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit: '\(limit)' is not a positive integer") }
            if let user { try validateUser(user) }
        }

        func run() async throws {
            if let user { return try await listUser(user) }
            try await SessionInspector.with(options, scanCount: scan.scanCount) { inspector in
                var listed = 0
                var entries: [JSONValue] = []
                // The header once Redis has answered the first SCAN: nothing on stdout for a command that fails.
                var headed = options.json
                func header() {
                    if !headed { print("ID\tTTL") }
                    headed = true
                }
                try await inspector.store.forEachIDPage { ids in
                    header()
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
                header()
                if options.json { print(JSONValue.array(entries).jsonString) }
            }
        }

        /// `list --user`: the user's sessions as the server's index knows them (gone ones left out and pruned).
        private func listUser(_ user: String) async throws {
            try await SessionInspector.with(options) { inspector in
                let now = Date()
                let sessions = try await inspector.store.sessions(ofUser: user).prefix(limit ?? Int.max)
                if options.json {
                    print(JSONValue.array(sessions.map { $0.jsonValue() }).jsonString)
                    return
                }
                func time(_ date: Date?) -> String {
                    guard let date else { return "-" }
                    let seconds = Int(now.timeIntervalSince(date).rounded())
                    return seconds >= 0 ? "\(seconds) s ago" : "in \(-seconds) s"
                }
                print("ID\tSIGNED_IN\tLAST_ACTIVE\tEXPIRES\tCLIENT")
                for session in sessions {
                    let client = [session.client?.agent, session.client?.address].compactMap { $0 }
                        .joined(separator: " ")
                    print("\(session.id)\t\(time(session.signedInAt))\t\(time(session.lastActiveAt))\t"
                          + "\(time(session.expiresAt))\t\(client.isEmpty ? "-" : client)")
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one session's JSON and TTL.")
        @OptionGroup var options: SessionsOptions
        @OptionGroup var session: SessionArgument

        func run() async throws {
            let id = try session.sessionID()
            try await SessionInspector.with(options) { inspector in
                // The raw value, not a decoded session: garbage at a session key is worth seeing as it is.
                let key = inspector.store.key(for: id)
                guard let bytes = try await inspector.store.rawValue(of: id),
                      let ttl = try await inspector.store.timeToLive(id) else {
                    throw CommandFailure("no session \(id)")
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
        @OptionGroup var scan: ScanOptions

        func run() async throws {
            let count = try await SessionInspector.with(options, scanCount: scan.scanCount) { try await $0.store.length() }
            print(options.json ? #"{"count":\#(count)}"# : "\(count)")
        }
    }

    struct Destroy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy one session (DEL), or every session of a user (--user [--except <session>]); exit status 1 if there was none.")
        @OptionGroup var options: SessionsOptions
        @Option(parsing: .unconditional, help: SessionArgument.secretHelp)
        var secret: String?
        @Option(parsing: .unconditional,
                help: "Destroy every session of this signed-in user (the per-user index) instead of one session.")
        var user: String?
        @Option(parsing: .unconditional,
                help: "With --user: keep this session (an id or a connect.sid cookie value), e.g. the administrator's own.")
        var except: String?
        @Argument(help: SessionArgument.argumentHelp)
        var argument: String?

        func validate() throws {
            switch (argument, user) {
            case (nil, nil): throw ValidationError("Missing expected argument '<argument>' (a session), or --user")
            case (.some, .some): throw ValidationError("give a session or --user, not both")
            default: break
            }
            if except != nil, user == nil { throw ValidationError("--except goes with --user") }
            if let user { try validateUser(user) }
        }

        func run() async throws {
            guard let argument else { return try await destroyUser(user ?? "") }
            let id = try SessionArgument.sessionID(from: argument, secret: secret)
            try await SessionInspector.with(options) { inspector in
                // TTL first, to say whether there was one: the store's destroy is a no-op for a missing id.
                guard try await inspector.store.timeToLive(id) != nil else { throw CommandFailure("no session \(id)") }
                try await inspector.store.destroy(id)
            }
            print(options.json ? #"{"destroyed":1}"# : "destroyed \(id)")
        }

        /// `destroy --user`: every session of the user (but `--except`), then their index entries (ASVS 7.4.2, 7.4.5).
        private func destroyUser(_ user: String) async throws {
            let kept = try except.map { try SessionArgument.sessionID(from: $0, secret: secret) }
            let ended = try await SessionInspector.with(options) { inspector in
                try await inspector.store.destroySessions(ofUser: user, except: kept)
            }
            guard ended > 0 else { throw CommandFailure("no sessions of user \(user.debugDescription)") }
            print(options.json ? #"{"destroyed":\#(ended)}"# : "destroyed \(ended) sessions of \(user.debugDescription)")
        }
    }

    struct Clear: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Destroy every session under the prefix.")
        @OptionGroup var options: SessionsOptions
        @OptionGroup var scan: ScanOptions
        @Flag(help: "Required: confirms that every session under the prefix is to be deleted.") var yes = false

        func run() async throws {
            guard yes else { throw ConfigurationError("clear deletes every session under the prefix: add --yes") }
            let removed = try await SessionInspector.with(options, scanCount: scan.scanCount) { try await $0.store.removeAll() }
            print(options.json ? #"{"cleared":\#(removed)}"# : "cleared \(removed) sessions")
        }
    }
}

/// A user name the per-user index can hold (as ``Session/signIn(user:client:)`` checks it): a usage error otherwise.
private func validateUser(_ user: String) throws {
    do {
        try SessionUserError.validate(user)
    } catch {
        throw ValidationError("--user: \(error.description)")
    }
}
