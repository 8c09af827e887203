import CoreMetrics
import Tracing

/// How a command ended, for metrics (``RedisConfiguration/onCommand``).
public enum RedisCommandOutcome: String, Sendable, Hashable, CaseIterable {
    /// Redis replied with a value.
    case success
    /// Redis replied with an error (`-ERR ...`); the connection is fine.
    case redisError = "redis_error"
    /// No reply within the command timeout.
    case timeout
    /// The command was not sent, or its connection was lost before the reply (not connected, connect failed,
    /// connection closed).
    case connectionError = "connection_error"
}

/// Where and how to connect to Redis, parsed from `redis://[[user]:password@]host[:port][/db]` (or `rediss://` for
/// TLS).
public struct RedisConfiguration: Sendable, Equatable {
    /// Host name or IP address (IPv6 without brackets). A name is resolved again at each connection attempt, off
    /// the event loop (a resolver thread runs `getaddrinfo`), so an address that changed after a failover is found;
    /// every address it returns is tried in turn.
    public var host: String
    public var port: Int
    /// The ACL user for `AUTH user password` (Redis 6+); nil authenticates as the default user.
    public var username: String?
    /// The password for `AUTH`; nil when the server needs none.
    public var password: String?
    /// The database selected with `SELECT` after connecting, when not 0.
    public var database: Int
    /// TLS settings; nil talks plain text. `rediss://` URLs set it to the defaults (verification on, the system's
    /// CAs).
    public var tls: RedisTLSConfiguration?
    /// Deadline for each command; a command that misses it fails with `RedisClientError.timeout`.
    /// Also the deadline for a connection attempt (name lookup, TCP connect, TLS handshake, AUTH/SELECT).
    public var commandTimeout: Duration
    /// How many commands may wait for a connection that is still being established; further commands fail at
    /// once with `RedisClientError.notConnected`.
    public var connectingQueueLimit: Int = 1024
    /// Called on the loop thread when each command ends, with the command name (upper case), how long it took and
    /// how it ended; e.g. to export Prometheus metrics. Keep it cheap: it runs on the event loop.
    /// Not part of equality.
    public var onCommand: (@Sendable (_ name: String, _ duration: Duration, _ outcome: RedisCommandOutcome) -> Void)?
    /// Where the client's metrics go (``RedisMetricNames``): command latencies and failures, reconnections. nil (the
    /// default): the factory `MetricsSystem.bootstrap` installed (none: the calls do nothing). Not part of equality.
    public var metricsFactory: (any MetricsFactory)?
    /// The tracer of a span per command, made only inside a traced operation (when `ServiceContext.current` is
    /// set, as it is while a traced request is served): named after the command, with its name and this server's
    /// address as attributes, never a key or a value. nil (the default): no span, no cost. Not part of equality.
    public var tracer: (any Tracer)?
    /// What this server is to the client, for the log ("single server", "cluster node", "Sentinel primary",
    /// "sentinel"). Not part of equality.
    var role = "single server"
    /// Shared by the connections of one store to this server, so that they log an outage once; nil: the client's
    /// own. Not part of equality.
    package var connectionLog: RedisConnectionLog?

    public init(host: String = "127.0.0.1", port: Int = 6379, username: String? = nil, password: String? = nil,
                database: Int = 0, tls: RedisTLSConfiguration? = nil, commandTimeout: Duration = .seconds(1)) {
        self.host = host
        self.tls = tls
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.commandTimeout = commandTimeout
    }

    /// Parses a `redis://` URL: `redis://[[user]:password@]host[:port][/db]`, or `rediss://...` for TLS with
    /// verification on and the system's CAs (set ``tls`` afterwards for other CAs or a client certificate).
    ///
    /// User and password are percent-decoded; an IPv6 host is written in brackets (`redis://[::1]:6380`).
    /// The port defaults to 6379 and the database to 0.
    /// - Parameter url: the URL, e.g. `redis://:secret@redis:6379/2`.
    /// - Throws: ``RedisConfigurationError`` with a one-line reason that never contains the password.
    public init(url: String) throws {
        self.init()
        let parsed = try RedisURL(url)
        host = parsed.host
        port = parsed.port
        username = parsed.username
        password = parsed.password
        database = parsed.database
        if parsed.usesTLS { tls = RedisTLSConfiguration() }
    }

    public static func == (lhs: RedisConfiguration, rhs: RedisConfiguration) -> Bool {
        lhs.host == rhs.host && lhs.port == rhs.port && lhs.username == rhs.username
            && lhs.password == rhs.password && lhs.database == rhs.database && lhs.tls == rhs.tls
            && lhs.commandTimeout == rhs.commandTimeout && lhs.connectingQueueLimit == rhs.connectingQueueLimit
    }

    /// The configuration as a URL with the password replaced by `***`, safe for logs.
    public var redactedURL: String {
        var url = tls == nil ? "redis://" : "rediss://"
        if username != nil || password != nil {
            url += username.map(percentEncoded) ?? ""
            url += password == nil ? "@" : ":***@"
        }
        url += host.contains(":") ? "[\(host)]" : host
        url += ":\(port)"
        if database != 0 { url += "/\(database)" }
        return url
    }
}

extension RedisConfiguration: CustomStringConvertible {
    /// The redacted URL; the password never appears.
    public var description: String { redactedURL }
}

/// A Redis URL that cannot be used. The description is one line naming the problem, for operators at startup;
/// it never contains the password.
public struct RedisConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong, e.g. `invalid Redis URL: port 70000 is out of range (1-65535)`.
    public let description: String

    init(_ problem: String) {
        self.description = "invalid Redis URL: \(problem)"
    }
}

// MARK: - Parsing

/// The parts of `redis://[[user]:password@]host[:port][/db]`, parsed by hand so that every mistake gets its own
/// message (Foundation's URL would accept or reject without saying why, and is not in FoundationEssentials
/// everywhere).
private struct RedisURL {
    var host = ""
    var port = 6379
    var username: String?
    var password: String?
    var database = 0
    var usesTLS = false

    init(_ url: String) throws(RedisConfigurationError) {
        let text = Substring(url)
        guard !text.isEmpty else { throw RedisConfigurationError("the URL is empty (expected redis://host:port)") }
        guard let separator = text.firstRange(of: "://") else {
            throw RedisConfigurationError("missing scheme (expected redis://host:port, e.g. redis://127.0.0.1:6379)")
        }
        let scheme = text[..<separator.lowerBound].lowercased()
        switch scheme {
        case "redis": break
        case "rediss": usesTLS = true
        case "unix", "redis+unix", "redis-socket":
            throw RedisConfigurationError("Unix sockets are not supported; use redis://host:port")
        default:
            throw RedisConfigurationError(
                "unsupported scheme \"\(scheme.prefix(20))\" (expected redis:// or rediss:// for TLS)")
        }
        let rest = text[separator.upperBound...]
        if let mark = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) {
            let what = rest[mark] == "?" ? "query parameters" : "a fragment"
            throw RedisConfigurationError("\(what) (\"\(rest[mark])...\") not supported; use redis://host:port/db")
        }
        // The authority ends at the first "/"; a "/" inside the password must be percent-encoded (%2F).
        // Userinfo ends at the LAST "@" of the authority, so an unencoded "@" in a password still works.
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = rest[..<authorityEnd]
        let path = rest[authorityEnd...]
        if let at = authority.lastIndex(of: "@") {
            try parseUserInfo(authority[..<at])
            authority = authority[authority.index(after: at)...]
        }
        try parseHostAndPort(authority)
        try parseDatabase(path)
    }

    private mutating func parseUserInfo(_ userInfo: Substring) throws(RedisConfigurationError) {
        guard let colon = userInfo.firstIndex(of: ":") else {
            throw RedisConfigurationError(
                "user name without a password (write redis://user:password@host or redis://:password@host)")
        }
        let user = try Self.percentDecoded(userInfo[..<colon], what: "user name")
        let secret = try Self.percentDecoded(userInfo[userInfo.index(after: colon)...], what: "password")
        if secret.isEmpty {
            guard user.isEmpty else {
                throw RedisConfigurationError("user name \"\(user)\" with an empty password")
            }
            return   // "redis://:@host": no credentials at all
        }
        username = user.isEmpty ? nil : user
        password = secret
    }

    private mutating func parseHostAndPort(_ authority: Substring) throws(RedisConfigurationError) {
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                throw RedisConfigurationError("IPv6 address without a closing \"]\"")
            }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw RedisConfigurationError("invalid IPv6 address \"[\(host)]\"")
            }
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else {
                    throw RedisConfigurationError("unexpected \"\(after)\" after the IPv6 address (expected :port)")
                }
                portText = after.dropFirst()
            }
        } else {
            let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else {
                throw RedisConfigurationError("host \"\(authority)\" has several \":\" (write an IPv6 address in brackets, "
                                              + "e.g. redis://[::1]:6379)")
            }
            host = String(parts[0])
            if parts.count == 2 { portText = parts[1] }
            guard !host.isEmpty else { throw RedisConfigurationError("missing host (expected redis://host:port)") }
            guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
                throw RedisConfigurationError("invalid host \"\(host)\"")
            }
        }
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let value = Int(portText) else {
                throw RedisConfigurationError("invalid port \"\(portText.prefix(20))\" (expected a number 1-65535)")
            }
            guard (1...65535).contains(value) else {
                throw RedisConfigurationError("port \(value) is out of range (1-65535)")
            }
            port = value
        }
    }

    private mutating func parseDatabase(_ path: Substring) throws(RedisConfigurationError) {
        // The path is "" or starts with "/"; "" and "/" both mean database 0.
        let text = path.dropFirst()
        guard !text.isEmpty else { return }
        guard text.count <= 9, text.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(text) else {
            throw RedisConfigurationError(
                "invalid database \"\(text.prefix(20))\" in the path (expected a number, e.g. redis://host:6379/0)")
        }
        database = value
    }

    /// Decodes `%XX` escapes; the result must be valid UTF-8.
    private static func percentDecoded(_ text: Substring, what: String) throws(RedisConfigurationError) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw RedisConfigurationError("invalid percent-encoding in the \(what) (expected %XX)")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw RedisConfigurationError("the \(what) is not valid UTF-8 after percent-decoding")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// Percent-encodes everything but unreserved characters (for the user name in ``RedisConfiguration/redactedURL``).
private func percentEncoded(_ text: String) -> String {
    var result = ""
    for byte in text.utf8 {
        let scalar = Unicode.Scalar(byte)
        if byte < 0x80, scalar.properties.isAlphabetic || ("0"..."9").contains(Character(scalar))
            || "-._~".unicodeScalars.contains(scalar) {
            result.unicodeScalars.append(scalar)
        } else {
            let hex = String(byte, radix: 16, uppercase: true)
            result += "%" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return result
}
