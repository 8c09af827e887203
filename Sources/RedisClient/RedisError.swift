/// Redis answered a command with an error reply (`-ERR ...`, `-WRONGTYPE ...`, `-NOSCRIPT ...`).
///
/// The connection is fine: the command itself was refused. Compare ``RedisClientError``, which means the client
/// could not get an answer at all.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The error text as Redis sent it, without the leading `-`, e.g. `WRONGTYPE Operation against a key ...`.
    public let message: String

    /// Creates an error from the text of an error reply.
    public init(message: String) {
        self.message = message
    }

    /// The error code: the first word of the message when it is all upper case (`ERR`, `WRONGTYPE`, `NOSCRIPT`,
    /// `NOAUTH`, `WRONGPASS`), otherwise `ERR`.
    public var code: String {
        let word = message.prefix { $0 != " " }
        let isCode = !word.isEmpty && word.allSatisfy { ("A"..."Z").contains($0) || $0 == "_" }
        return isCode ? String(word) : "ERR"
    }

    public var description: String { "Redis replied with an error: \(message)" }
}

/// The client could not get a reply from Redis: not connected, connection lost, timed out, or a reply of a shape
/// the called helper does not understand.
///
/// A struct over a private enum so that cases can be added without breaking callers. Compare with the static
/// members (`error == .timeout`); equality looks at the kind only, not at the detail text.
public struct RedisClientError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Kind: Hashable, Sendable {
        case connectionClosed
        case notConnected
        case timeout
        case unexpectedReply
        case connectFailed
        case unsupportedCommand
    }

    private let kind: Kind
    /// Human-readable detail (a reason, the command, the reply kind); never a secret.
    public let detail: String?

    private init(_ kind: Kind, _ detail: String? = nil) {
        self.kind = kind
        self.detail = detail
    }

    /// The connection closed (lost, or ``RedisClient/close()`` was called) before the reply arrived.
    public static let connectionClosed = RedisClientError(.connectionClosed)
    /// The client is between connections (backing off before it reconnects): the command was not sent.
    public static let notConnected = RedisClientError(.notConnected)
    /// No reply within ``RedisConfiguration/commandTimeout``. The command may still have run on the server.
    public static let timeout = RedisClientError(.timeout)
    /// Redis answered with a reply of a type the helper did not expect (e.g. an integer where a string belongs).
    public static let unexpectedReply = RedisClientError(.unexpectedReply)
    /// The connection attempt the command was queued on failed (refused, timed out, or authentication failed).
    public static func connectFailed(_ reason: String) -> RedisClientError { RedisClientError(.connectFailed, reason) }
    /// Matches any ``connectFailed(_:)`` error when compared with `==`.
    public static let connectFailed = RedisClientError(.connectFailed)
    /// The command would change how the connection replies (`SUBSCRIBE`, `MONITOR`, `CLIENT REPLY`), which a
    /// pipelined request/reply client cannot follow; use a dedicated connection for it.
    public static let unsupportedCommand = RedisClientError(.unsupportedCommand)

    /// The same kind of error, with a detail.
    package func with(_ detail: String?) -> RedisClientError { RedisClientError(kind, detail) }

    /// Whether the error means the command never got an answer because of the connection (for metrics).
    var isConnectionError: Bool {
        switch kind {
        case .connectionClosed, .notConnected, .connectFailed: return true
        case .timeout, .unexpectedReply, .unsupportedCommand: return false
        }
    }

    public static func == (lhs: RedisClientError, rhs: RedisClientError) -> Bool { lhs.kind == rhs.kind }
    public func hash(into hasher: inout Hasher) { hasher.combine(kind) }

    public var description: String {
        let summary: String
        switch kind {
        case .connectionClosed: summary = "the connection to Redis closed before the reply arrived"
        case .notConnected: summary = "not connected to Redis"
        case .timeout: summary = "Redis did not reply in time"
        case .unexpectedReply: summary = "unexpected reply from Redis"
        case .connectFailed: summary = "could not connect to Redis"
        case .unsupportedCommand: summary = "command not supported by RedisClient"
        }
        guard let detail, !detail.isEmpty else { return summary }
        return "\(summary): \(detail)"
    }
}
