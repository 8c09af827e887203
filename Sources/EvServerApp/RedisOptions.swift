import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import RedisClient

/// Where the sessions are: the Redis flags, shared by the server and the `sessions` subcommands (which take these and
/// `--prefix`, nothing else of the server's). Each flag has an environment variable; the flag wins.
struct RedisOptions: ParsableArguments {
    @Option(name: .customLong("redis-url"), parsing: .unconditional,
            help: "redis://[user:password@]host:port/db, rediss:// for TLS (env REDIS_URL, default redis://127.0.0.1:6379/0).")
    var redisURL: String?

    @Option(name: .customLong("redis-timeout"), parsing: .unconditional, help: "Deadline per Redis command in ms (env REDIS_TIMEOUT_MS, default 1000).")
    var redisTimeout: String?

    @Option(name: .customLong("redis-cluster"), parsing: .unconditional,
            help: "Redis Cluster seed nodes host:port[,host:port...] instead of --redis-url (env REDIS_CLUSTER).")
    var redisCluster: String?

    @Option(name: .customLong("redis-sentinel"), parsing: .unconditional,
            help: "Redis Sentinels host:port[,host:port...] instead of --redis-url; needs --sentinel-master (env REDIS_SENTINEL).")
    var redisSentinel: String?

    @Option(name: .customLong("sentinel-master"), parsing: .unconditional,
            help: "The primary's name the sentinels monitor (env REDIS_SENTINEL_MASTER).")
    var sentinelMaster: String?

    @Option(name: .customLong("sentinel-password"), parsing: .unconditional,
            help: "The sentinels' own password (their requirepass), when they have one (env REDIS_SENTINEL_PASSWORD).")
    var sentinelPassword: String?

    @Option(name: .customLong("redis-username"), parsing: .unconditional,
            help: "ACL user for AUTH, any Redis mode; not together with a user in --redis-url (env REDIS_USERNAME).")
    var redisUsername: String?

    @Option(name: .customLong("redis-password"), parsing: .unconditional,
            help: "Password for AUTH, any Redis mode; not together with one in --redis-url (env REDIS_PASSWORD).")
    var redisPassword: String?

    @Option(name: .customLong("redis-tls"), parsing: .unconditional,
            help: "TLS to the cluster nodes, or to the primary and the sentinels: true|false; with --redis-url the scheme decides (rediss://) (env REDIS_TLS, default false).")
    var redisTLS: String?

    @Option(name: .customLong("redis-tls-ca"), parsing: .unconditional,
            help: "PEM CA bundle that Redis's certificate must chain to (env REDIS_TLS_CA_FILE, default: the system's trust store).")
    var redisTLSCA: String?

    @Option(name: .customLong("redis-tls-cert"), parsing: .unconditional,
            help: "PEM client certificate for mutual TLS; needs --redis-tls-key (env REDIS_TLS_CERT_FILE).")
    var redisTLSCert: String?

    @Option(name: .customLong("redis-tls-key"), parsing: .unconditional,
            help: "PEM private key of --redis-tls-cert (env REDIS_TLS_KEY_FILE).")
    var redisTLSKey: String?

    @Option(name: .customLong("redis-tls-server-name"), parsing: .unconditional,
            help: "Name sent in SNI and checked against Redis's certificate (env REDIS_TLS_SERVER_NAME, default: the host connected to).")
    var redisTLSServerName: String?

    @Option(name: .customLong("redis-tls-insecure"), parsing: .unconditional,
            help: "Skip verifying Redis's certificate: true|false; anyone on the path can then read and change sessions (env REDIS_TLS_INSECURE, default false).")
    var redisTLSInsecure: String?

    /// Resolves the Redis settings into `config`: which deployment, the credentials, the timeout, TLS.
    /// - Throws: ``ConfigurationError`` naming the first bad or conflicting value.
    func resolve(into config: inout AppConfiguration, environment: [String: String]) throws {
        let value = FlagOrVariable(environment: environment)
        // Exactly one of URL / cluster / sentinel. Flags win over variables as a group (a --redis-cluster flag
        // overrides a REDIS_URL in the environment, as any flag overrides its variable); two at the same level
        // are a mistake. --redis-url has a default, so what counts is whether it was given.
        let flags = [(redisURL, "--redis-url"), (redisCluster, "--redis-cluster"), (redisSentinel, "--redis-sentinel")]
            .compactMap { value, name in value.map { ($0, name) } }
        let variables = ["REDIS_URL", "REDIS_CLUSTER", "REDIS_SENTINEL"]
            .compactMap { name in environment[name].flatMap { $0.isEmpty ? nil : ($0, name) } }
        for given in [flags, variables] where given.count > 1 {
            throw ConfigurationError("\(given.map(\.1).joined(separator: " and ")) both given: use exactly one of "
                + "--redis-url, --redis-cluster, --redis-sentinel (REDIS_URL, REDIS_CLUSTER, REDIS_SENTINEL)")
        }
        let mode = flags.first ?? variables.first
        if let (v, name) = mode, name == "--redis-url" || name == "REDIS_URL" { config.redisURL = v }
        do {
            config.redis = try RedisConfiguration(url: config.redisURL)
        } catch {
            throw ConfigurationError("redis url: \(error)")
        }
        let master = value(sentinelMaster, "--sentinel-master", "REDIS_SENTINEL_MASTER")
        switch mode {
        case let (v, name)? where name == "--redis-cluster" || name == "REDIS_CLUSTER":
            do { config.redisTopology = .cluster(try RedisAddress.list(parsing: v)) } catch {
                throw ConfigurationError("\(name): \(error)")
            }
        case let (v, name)? where name == "--redis-sentinel" || name == "REDIS_SENTINEL":
            guard let (masterName, _) = master, !masterName.trimmingSpaces.isEmpty else {
                throw ConfigurationError("\(name) needs the primary's name: --sentinel-master NAME (or REDIS_SENTINEL_MASTER)")
            }
            let sentinelPassword = value(self.sentinelPassword, "--sentinel-password", "REDIS_SENTINEL_PASSWORD")?.0
            do {
                config.redisTopology = .sentinel(try RedisAddress.list(parsing: v), masterName: masterName.trimmingSpaces,
                                                 password: sentinelPassword)
            } catch {
                throw ConfigurationError("\(name): \(error)")
            }
        default:
            if sentinelMaster != nil {
                throw ConfigurationError("--sentinel-master is only meaningful with --redis-sentinel (or REDIS_SENTINEL)")
            }
            if sentinelPassword != nil {
                throw ConfigurationError("--sentinel-password is only meaningful with --redis-sentinel (or REDIS_SENTINEL)")
            }
        }
        let username = value(redisUsername, "--redis-username", "REDIS_USERNAME")
        let password = value(redisPassword, "--redis-password", "REDIS_PASSWORD")
        if let (_, name) = username ?? password, config.redis.password != nil {
            throw ConfigurationError("\(name) and credentials in --redis-url both given: give the credentials once")
        }
        if let (v, name) = username {
            guard password != nil else {
                throw ConfigurationError("\(name) needs a password: --redis-password (or REDIS_PASSWORD)")
            }
            config.redis.username = v
        }
        if let (v, _) = password { config.redis.password = v }
        if let (v, name) = value(redisTimeout, "--redis-timeout", "REDIS_TIMEOUT_MS") {
            config.redis.commandTimeout = .milliseconds(try ServerOptions.integer(v, name, in: 1...600_000))
        }
        try resolveTLS(into: &config, environment: environment)
    }

    /// Resolves the TLS settings (`--redis-tls*`) into `config.redis.tls`, once the mode is known. With
    /// `--redis-url` the scheme decides (`rediss://`) and `--redis-tls` may only agree with it; with a cluster or
    /// sentinels `--redis-tls` decides, for every node (or the primary) and the sentinels alike. The CA, certificate
    /// and key files are checked here, before anything binds.
    /// - Throws: ``ConfigurationError`` naming the first bad or conflicting value.
    func resolveTLS(into config: inout AppConfiguration, environment: [String: String]) throws {
        let value = FlagOrVariable(environment: environment)
        let switched = try value(redisTLS, "--redis-tls", "REDIS_TLS").map { v, name in
            (try ServerOptions.boolean(v, name), name)
        }
        if case .single = config.redisTopology {
            let urlIsTLS = config.redis.tls != nil
            if let (on, name) = switched, on != urlIsTLS {
                let conflict = on ? "true conflicts with a redis:// URL (plain text)"
                                  : "false conflicts with a rediss:// URL (TLS)"
                throw ConfigurationError("\(name) \(conflict): with --redis-url the scheme decides; use "
                    + (on ? "rediss:// for TLS" : "redis:// for plain text"))
            }
        } else if switched?.0 == true {
            config.redis.tls = RedisTLSConfiguration()
        }
        let caFile = value(redisTLSCA, "--redis-tls-ca", "REDIS_TLS_CA_FILE")
        let certificateFile = value(redisTLSCert, "--redis-tls-cert", "REDIS_TLS_CERT_FILE")
        let keyFile = value(redisTLSKey, "--redis-tls-key", "REDIS_TLS_KEY_FILE")
        let serverName = value(redisTLSServerName, "--redis-tls-server-name", "REDIS_TLS_SERVER_NAME")
        let insecure = value(redisTLSInsecure, "--redis-tls-insecure", "REDIS_TLS_INSECURE")
        guard var tls = config.redis.tls else {
            if let (_, name) = caFile ?? certificateFile ?? keyFile ?? serverName ?? insecure {
                throw ConfigurationError("\(name) needs a rediss:// URL or --redis-tls true")
            }
            return
        }
        tls.caFile = caFile?.0
        tls.certificateFile = certificateFile?.0
        tls.keyFile = keyFile?.0
        tls.serverName = serverName?.0
        if let (v, name) = insecure { tls.verifiesPeer = try !ServerOptions.boolean(v, name) }
        if let problem = tls.problem { throw ConfigurationError("redis tls: \(problem)") }
        // Insecure with a CA file is allowed; the files are checked all the same: a wrong path is a mistake either way.
        for case let (path, name)? in [caFile, certificateFile, keyFile] { try Self.checkReadable(path, name) }
        config.redis.tls = tls
    }

    /// Startup runs before the event loops, so reading the file system here blocks nothing.
    static func checkReadable(_ path: String, _ name: String) throws {
        var isDirectory = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigurationError("\(name): '\(path)' does not exist")
        }
        guard !isDirectory else { throw ConfigurationError("\(name): '\(path)' is a directory, not a PEM file") }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ConfigurationError("\(name): '\(path)' is not readable by this user")
        }
    }
}
