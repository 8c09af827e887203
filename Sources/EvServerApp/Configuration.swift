// The evserver flags, each with its environment variable, default and check; the Redis flags, which the `sessions`
// subcommands share, are in RedisOptions.swift. The precedence rules (flag, then environment, then default) live here.

import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import RedisClient
import RedisSessionStore


// Flags -> configuration. Every flag has an environment variable; the flag wins, then the variable, then the
// default. Resolution is a pure function of the parsed flags and an environment dictionary, so tests can drive it.

/// Which session store the demo uses.
enum StoreKind: String, CaseIterable, Sendable {
    case redis, memory
}

/// Which Redis deployment holds the sessions: exactly one of `--redis-url`, `--redis-cluster`, `--redis-sentinel`.
enum RedisTopology: Sendable {
    /// One server: ``AppConfiguration/redis`` (from `--redis-url`).
    case single
    /// A Redis Cluster reached through these seeds; the node settings are ``AppConfiguration/redis``'s.
    case cluster([RedisAddress])
    /// The primary the sentinels name `masterName`; its connection settings are ``AppConfiguration/redis``'s.
    /// `password`: the sentinels' own `requirepass`, when they have one.
    case sentinel([RedisAddress], masterName: String, password: String?)
}

/// Everything `evserver` needs to run, validated.
struct AppConfiguration: Sendable {
    var host = "127.0.0.1"
    var port = 3000
    var threads = AppConfiguration.coreCount
    var store: StoreKind = .redis
    var redisURL = "redis://127.0.0.1:6379/0"
    /// The connection settings: host and port from `--redis-url` (single server only); credentials, timeout for
    /// every mode.
    var redis = RedisConfiguration()
    var redisTopology = RedisTopology.single
    /// Replicas that must acknowledge each session write (`WAIT`); 0 = none.
    var redisWaitReplicas = 0
    var secrets: [String] = []
    var cookieName = "connect.sid"
    /// Seconds; nil = browser-session cookie with the store's default TTL (86400 s).
    var maxAge: Int?
    var prefix = "sess:"
    var rolling = false
    var resave = false
    var saveUninitialized = false
    /// `--cookie-secure`: left out, `.never` (no `secure` in the stored cookie, as express without the option);
    /// `false`, `.off` (`"secure":false` stored, as express's `secure: false`); `true`, `.always`; `auto`, `.auto`.
    var cookieSecure: SessionCookieOptions.Secure = .never
    var cookieSameSite: SetCookie.SameSite = .lax
    var trustProxy = TrustedProxies.none
    var instance = "evserver"
    var maxBody = 65536
    /// Seconds a graceful shutdown (SIGTERM/SIGINT) waits for requests in flight.
    var shutdownTimeout = 10
    /// Open connections per event loop; past it a new connection is answered 503 and closed.
    var maxConnections = 10_000
    /// Seconds of inactivity after which a session expires (the store's sliding TTL).
    var idleTimeout = 86400
    /// Seconds after creation after which a session dies whatever its activity; nil = no limit.
    var absoluteTimeout: Int?
    /// One log line per request (`--access-log`).
    var accessLog = false
    /// Every log line as text or JSON (`--log-format`).
    var logFormat = LogFormat.text
    /// Sessions one user may have at once; a sign-in past it ends the oldest. nil = no limit.
    var maxSessionsPerUser: Int?
}

extension AppConfiguration {
    /// The cores this process may run on (the default number of event loops).
    static var coreCount: Int { Application.defaultThreadCount }
}

/// A configuration problem, reported to the operator as one line before anything binds.
struct ConfigurationError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The flags of `evserver` (and `evserver serve`).
struct ServerOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Address to listen on (env EVSERVER_HOST, default 127.0.0.1).")
    var host: String?

    @Option(parsing: .unconditional, help: "TCP port to listen on (env PORT, default 3000).")
    var port: String?

    @Option(parsing: .unconditional,
            help: "Event loops, one thread each, all on one port (env EVSERVER_THREADS, default: the number of cores).")
    var threads: String?

    @Option(parsing: .unconditional, help: "Session store: redis or memory (env SESSION_STORE, default redis).")
    var store: String?

    @Option(parsing: .unconditional,
            help: "Comma-separated secrets; the first signs, all verify (env SESSION_SECRET, required).")
    var secret: String?

    @Option(name: .customLong("cookie-name"), parsing: .unconditional, help: "Session cookie name (env SESSION_COOKIE_NAME, default connect.sid).")
    var cookieName: String?

    @Option(name: .customLong("max-age"), parsing: .unconditional,
            help: "Cookie max age in seconds (env SESSION_MAX_AGE; none = browser-session cookie, 86400 s TTL).")
    var maxAge: String?

    @Option(parsing: .unconditional, help: "Redis key prefix (env SESSION_PREFIX, default sess:).")
    var prefix: String?

    @Option(parsing: .unconditional,
            help: "Reset the cookie expiry on every response: true|false (env SESSION_ROLLING, default false).")
    var rolling: String?

    @Option(parsing: .unconditional,
            help: "Save unmodified sessions on every request: true|false (env SESSION_RESAVE, default false).")
    var resave: String?

    @Option(name: .customLong("save-uninitialized"), parsing: .unconditional,
            help: "Save new sessions that were not modified: true|false (env SESSION_SAVE_UNINITIALIZED, default false).")
    var saveUninitialized: String?

    @Option(name: .customLong("cookie-secure"), parsing: .unconditional,
            help: "Secure attribute of the session cookie: true|false|auto; false is stored in the session as secure: false, as express-session does (env SESSION_COOKIE_SECURE, default: not set, never Secure).")
    var cookieSecure: String?

    @Option(name: .customLong("cookie-samesite"), parsing: .unconditional, help: "lax|strict|none (env SESSION_COOKIE_SAMESITE, default lax).")
    var cookieSameSite: String?

    @Option(name: .customLong("trust-proxy"), parsing: .unconditional,
            help: "Proxies whose X-Forwarded-Proto/For are believed: true (any), false, or a list of addresses/CIDRs (env TRUST_PROXY, default false).")
    var trustProxy: String?

    @Option(parsing: .unconditional,
            help: "Instance name sent as X-Instance on every response, the server's own error answers included (env INSTANCE_NAME, default the host name).")
    var instance: String?

    @Option(name: .customLong("max-body"), parsing: .unconditional, help: "Largest request body in bytes (env EVSERVER_MAX_BODY, default 65536).")
    var maxBody: String?

    @Option(name: .customLong("max-connections"), parsing: .unconditional,
            help: "Open connections per event loop; past it, 503 and close (env EVSERVER_MAX_CONNECTIONS, default 10000).")
    var maxConnections: String?

    @Option(name: .customLong("shutdown-timeout"), parsing: .unconditional,
            help: "Seconds SIGTERM/SIGINT waits for requests in flight before exiting (env EVSERVER_SHUTDOWN_TIMEOUT, default 10).")
    var shutdownTimeout: String?

    @Option(name: .customLong("idle-timeout"), parsing: .unconditional,
            help: "Seconds without a request before a session expires: the sliding Redis TTL (env SESSION_IDLE_TIMEOUT, default 86400).")
    var idleTimeout: String?

    @Option(name: .customLong("absolute-timeout"), parsing: .unconditional,
            help: "Seconds after creation a session dies, however active (env SESSION_ABSOLUTE_TIMEOUT, default none).")
    var absoluteTimeout: String?

    @Option(name: .customLong("access-log"), parsing: .unconditional,
            help: "One log line per request (method, path without query, status, bytes, duration, request id): true|false (env ACCESS_LOG, default false).")
    var accessLog: String?

    @Option(name: .customLong("log-format"), parsing: .unconditional,
            help: "Every log line as text or json (env LOG_FORMAT, default text).")
    var logFormat: String?

    @Option(name: .customLong("max-sessions-per-user"), parsing: .unconditional,
            help: "Sessions one signed-in user may have at once; a sign-in past it ends the oldest (env SESSION_MAX_PER_USER, default none).")
    var maxSessionsPerUser: String?

    @Option(name: .customLong("redis-wait-replicas"), parsing: .unconditional,
            help: "Replicas that must acknowledge each session write (WAIT) before it counts; else 503 (env REDIS_WAIT_REPLICAS, default 0).")
    var redisWaitReplicas: String?

    /// Where the sessions are: `--redis-url` or a cluster or sentinels, credentials, TLS, the command deadline. The
    /// `sessions` subcommands take this group and nothing else of the server's.
    @OptionGroup(title: "Redis") var redis: RedisOptions

    /// Resolves flags, then `environment`, then defaults, validating every value.
    /// - Throws: ``ConfigurationError`` naming the first bad value.
    func resolve(environment: [String: String]) throws -> AppConfiguration {
        var config = AppConfiguration()
        let value = FlagOrVariable(environment: environment)
        if let (v, _) = value(host, "--host", "EVSERVER_HOST") { config.host = v }
        config.port = try value.integer(port, "--port", "PORT", in: 0...65535) ?? config.port
        config.threads = try value.integer(threads, "--threads", "EVSERVER_THREADS", in: 1...256) ?? config.threads
        if let (v, name) = value(store, "--store", "SESSION_STORE") {
            guard let kind = StoreKind(rawValue: v.lowercased()) else {
                throw ConfigurationError("\(name): unknown store '\(v)' (expected redis or memory)")
            }
            config.store = kind
        }
        try redis.resolve(into: &config, environment: environment)
        config.redisWaitReplicas = try value.integer(redisWaitReplicas, "--redis-wait-replicas", "REDIS_WAIT_REPLICAS",
                                                     in: 0...100) ?? config.redisWaitReplicas
        if let (v, _) = value(secret, "--secret", "SESSION_SECRET") {
            config.secrets = v.split(separator: ",", omittingEmptySubsequences: true).map(String.init)
        }
        guard !config.secrets.isEmpty else {
            throw ConfigurationError("no session secret: set --secret or SESSION_SECRET (comma-separated; the first signs)")
        }
        if let (v, name) = value(cookieName, "--cookie-name", "SESSION_COOKIE_NAME") {
            guard Self.isCookieName(v) else { throw ConfigurationError("\(name): '\(v)' is not a valid cookie name") }
            config.cookieName = v
        }
        let tenYears = 1...(10 * 365 * 86400)
        config.maxAge = try value.integer(maxAge, "--max-age", "SESSION_MAX_AGE", in: tenYears) ?? config.maxAge
        try Self.resolvePrefix(prefix, into: &config, environment: environment)
        config.rolling = try value.boolean(rolling, "--rolling", "SESSION_ROLLING") ?? config.rolling
        config.resave = try value.boolean(resave, "--resave", "SESSION_RESAVE") ?? config.resave
        config.saveUninitialized = try value.boolean(saveUninitialized, "--save-uninitialized",
                                                     "SESSION_SAVE_UNINITIALIZED") ?? config.saveUninitialized
        if let (v, name) = value(cookieSecure, "--cookie-secure", "SESSION_COOKIE_SECURE") {
            switch v.lowercased() {
            case "auto": config.cookieSecure = .auto
            default: config.cookieSecure = try Self.boolean(v, name) ? .always : .off
            }
        }
        if let (v, name) = value(cookieSameSite, "--cookie-samesite", "SESSION_COOKIE_SAMESITE") {
            switch v.lowercased() {
            case "lax": config.cookieSameSite = .lax
            case "strict": config.cookieSameSite = .strict
            case "none": config.cookieSameSite = .none
            default: throw ConfigurationError("\(name): '\(v)' is not one of lax, strict, none")
            }
        }
        if let (v, name) = value(trustProxy, "--trust-proxy", "TRUST_PROXY") {
            do { config.trustProxy = try TrustedProxies(parsing: v) } catch {
                throw ConfigurationError("\(name): \(error)")
            }
        }
        if let (v, name) = value(instance, "--instance", "INSTANCE_NAME") {
            // Sent as X-Instance on every response: it must be a header value.
            do { _ = try DefaultHeaders([("X-Instance", v)]) } catch {
                throw ConfigurationError("\(name): \(v.debugDescription) cannot be sent as X-Instance (\(error))")
            }
            config.instance = v
        } else {
            config.instance = Self.hostName()
        }
        config.maxBody = try value.integer(maxBody, "--max-body", "EVSERVER_MAX_BODY", in: 0...(64 << 20)) ?? config.maxBody
        config.maxConnections = try value.integer(maxConnections, "--max-connections", "EVSERVER_MAX_CONNECTIONS",
                                                  in: 1...1_000_000) ?? config.maxConnections
        config.shutdownTimeout = try value.integer(shutdownTimeout, "--shutdown-timeout", "EVSERVER_SHUTDOWN_TIMEOUT",
                                                   in: 0...3600) ?? config.shutdownTimeout
        config.idleTimeout = try value.integer(idleTimeout, "--idle-timeout", "SESSION_IDLE_TIMEOUT",
                                               in: tenYears) ?? config.idleTimeout
        config.absoluteTimeout = try value.integer(absoluteTimeout, "--absolute-timeout", "SESSION_ABSOLUTE_TIMEOUT",
                                                   in: tenYears) ?? config.absoluteTimeout
        config.accessLog = try value.boolean(accessLog, "--access-log", "ACCESS_LOG") ?? config.accessLog
        if let (v, name) = value(logFormat, "--log-format", "LOG_FORMAT") {
            guard let format = LogFormat(rawValue: v.lowercased()) else {
                throw ConfigurationError("\(name): '\(v)' is not one of text, json")
            }
            config.logFormat = format
        }
        config.maxSessionsPerUser = try value.integer(maxSessionsPerUser, "--max-sessions-per-user",
                                                      "SESSION_MAX_PER_USER", in: 1...100_000)
        return config
    }

    /// The key prefix (`--prefix`, `SESSION_PREFIX`): never empty, no spaces or glob characters, so that a SCAN
    /// pattern made from it matches sessions only (an empty prefix would make `sessions clear` delete every key).
    static func resolvePrefix(_ prefix: String?, into config: inout AppConfiguration,
                              environment: [String: String]) throws {
        let value = FlagOrVariable(environment: environment)
        guard let (v, name) = value(prefix, "--prefix", "SESSION_PREFIX") else { return }
        guard !v.isEmpty, !v.contains(where: { $0 == "*" || $0 == "?" || $0 == "[" || $0.isWhitespace }) else {
            throw ConfigurationError("\(name): '\(v)' is not a usable key prefix (no spaces or glob characters)")
        }
        config.prefix = v
    }

    static func integer(_ text: String, _ name: String, in range: ClosedRange<Int>) throws -> Int {
        guard let number = Int(text.trimmingSpaces), range.contains(number) else {
            throw ConfigurationError("\(name): '\(text)' is not an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return number
    }

    static func boolean(_ text: String, _ name: String) throws -> Bool {
        switch text.trimmingSpaces.lowercased() {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: throw ConfigurationError("\(name): '\(text)' is not true or false")
        }
    }

    /// RFC 6265 token characters.
    static func isCookieName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { c in
            c > 32 && c < 127 && !"()<>@,;:\\\"/[]?={}".utf8.contains(c)
        }
    }

    static func hostName() -> String {
        let name = ProcessInfo.processInfo.hostName
        return name.isEmpty ? "evserver" : name
    }
}

/// One setting's source: the flag if given, else its environment variable when set and not empty.
struct FlagOrVariable {
    let environment: [String: String]

    /// The value and the name to blame in an error (the flag's or the variable's), nil when neither is given.
    func callAsFunction(_ flag: String?, _ flagName: String, _ variable: String) -> (String, String)? {
        if let flag { return (flag, flagName) }
        if let env = environment[variable], !env.isEmpty { return (env, variable) }
        return nil
    }

    /// The integer given for this setting, nil when neither is given.
    /// - Throws: ``ConfigurationError`` when it is not an integer in `range`.
    func integer(_ flag: String?, _ flagName: String, _ variable: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let (v, name) = self(flag, flagName, variable) else { return nil }
        return try ServerOptions.integer(v, name, in: range)
    }

    /// The boolean given for this setting, nil when neither is given.
    /// - Throws: ``ConfigurationError`` when it is not true or false.
    func boolean(_ flag: String?, _ flagName: String, _ variable: String) throws -> Bool? {
        guard let (v, name) = self(flag, flagName, variable) else { return nil }
        return try ServerOptions.boolean(v, name)
    }
}

extension String {
    var trimmingSpaces: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}

extension AppConfiguration {
    /// The Redis session store this configuration describes: one server, a cluster, or Sentinel's primary.
    /// - Parameters:
    ///   - redis: the connection settings to use (``redis`` with a metrics hook, say).
    ///   - scanCount: the SCAN COUNT hint.
    func makeRedisStore(redis: RedisConfiguration, scanCount: Int = 100) -> RedisSessionStore {
        switch redisDeployment(redis: redis) {
        case .single(let redis):
            return RedisSessionStore(configuration: redis, prefix: prefix, ttl: idleTimeout, scanCount: scanCount,
                                     waitForReplicas: redisWaitReplicas)
        case .cluster(let cluster):
            return RedisSessionStore(cluster: cluster, prefix: prefix, ttl: idleTimeout, scanCount: scanCount,
                                     waitForReplicas: redisWaitReplicas)
        case .sentinel(let sentinel):
            return RedisSessionStore(sentinel: sentinel, prefix: prefix, ttl: idleTimeout, scanCount: scanCount,
                                     waitForReplicas: redisWaitReplicas)
        }
    }

    /// The library configuration of ``redisTopology`` around `redis`. One TLS setting covers everything: the
    /// cluster's nodes, or Sentinel's primary and the sentinels themselves.
    func redisDeployment(redis: RedisConfiguration) -> RedisDeployment {
        switch redisTopology {
        case .single:
            return .single(redis)
        case .cluster(let seeds):
            return .cluster(RedisClusterConfiguration(seeds: seeds, node: redis))
        case .sentinel(let sentinels, let masterName, let password):
            return .sentinel(RedisSentinelConfiguration(sentinels: sentinels, masterName: masterName, primary: redis,
                                                        sentinelPassword: password, sentinelTLS: redis.tls))
        }
    }

    /// The startup warning for TLS without verification, nil when certificates are checked (or TLS is off).
    var redisTLSWarning: String? {
        guard store == .redis, let tls = redis.tls, !tls.verifiesPeer else { return nil }
        return "Redis TLS certificate verification is OFF (--redis-tls-insecure, REDIS_TLS_INSECURE): "
            + "anyone on the network path to Redis can read and change sessions"
    }

    /// Where the sessions are, for the startup log line (never a password).
    var redisDescription: String {
        switch redisTopology {
        case .single: return redis.redactedURL
        case .cluster(let seeds): return "cluster " + seeds.map(\.description).joined(separator: ",") + tlsMark
        case .sentinel(let sentinels, let name, _):
            return "sentinel \(name)@" + sentinels.map(\.description).joined(separator: ",") + tlsMark
        }
    }

    private var tlsMark: String { redis.tls == nil ? "" : " (TLS)" }
}

/// The Redis deployment the store is built on, as the library configures it.
enum RedisDeployment: Sendable {
    case single(RedisConfiguration)
    case cluster(RedisClusterConfiguration)
    case sentinel(RedisSentinelConfiguration)
}
