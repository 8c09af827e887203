/// A reply from Redis (RESP2), copied out of hiredis's reader before its reply object is freed.
///
/// A top-level `-ERR` reply never reaches callers as a value: ``RedisClient`` throws it as ``RedisError``.
/// `.error` only appears nested, e.g. inside an array returned by a Lua script or `EXEC`.
public enum RedisValue: Sendable, Hashable {
    /// A status reply such as `+OK` or `+PONG`.
    case simpleString(String)
    /// An error nested inside another reply.
    case error(String)
    /// An integer reply such as the result of `DEL` or `EXPIRE`.
    case integer(Int)
    /// A bulk string; bytes, because values may be binary.
    case bulkString([UInt8])
    /// A nil bulk string or nil array (`$-1` / `*-1`), e.g. `GET` of a missing key.
    case null
    /// A multi-bulk reply; elements may nest.
    case array([RedisValue])
}

// MARK: - Reading values

extension RedisValue {
    /// The bytes of a bulk string or the UTF-8 bytes of a status; nil for every other case.
    public var bytes: [UInt8]? {
        switch self {
        case .bulkString(let bytes): return bytes
        case .simpleString(let string): return Array(string.utf8)
        default: return nil
        }
    }

    /// A bulk string or status decoded as UTF-8 (invalid sequences are repaired); nil for every other case.
    public var string: String? {
        switch self {
        case .bulkString(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .simpleString(let string): return string
        default: return nil
        }
    }

    /// The value of an integer reply, or of a bulk string holding a decimal integer (as `SCAN` cursors are).
    public var integer: Int? {
        switch self {
        case .integer(let value): return value
        case .bulkString(let bytes): return Int(String(decoding: bytes, as: UTF8.self))
        default: return nil
        }
    }

    /// The elements of an array reply; nil for every other case.
    public var array: [RedisValue]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Whether this is a nil reply.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The case's name, for error messages ("bulk string", "integer", ...).
    package var kindDescription: String {
        switch self {
        case .simpleString: return "status"
        case .error: return "error"
        case .integer: return "integer"
        case .bulkString: return "bulk string"
        case .null: return "nil"
        case .array: return "array"
        }
    }
}

extension RedisValue: CustomStringConvertible {
    /// A short, readable rendering in the style of `redis-cli`; long bulk strings are cut.
    public var description: String {
        switch self {
        case .simpleString(let string): return string
        case .error(let message): return "(error) \(message)"
        case .integer(let value): return "(integer) \(value)"
        case .null: return "(nil)"
        case .bulkString(let bytes):
            let shown = bytes.prefix(64)
            let text = String(decoding: shown, as: UTF8.self)
            return bytes.count > shown.count ? "\"\(text)…\" (\(bytes.count) bytes)" : "\"\(text)\""
        case .array(let elements):
            return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

// MARK: - Reply helpers of the typed commands (RedisClient, RedisClusterClient)

/// A bulk string's bytes, nil for a nil reply; anything else is an unexpected reply to `command`.
func optionalBytes(_ reply: RedisValue, command: String) throws -> [UInt8]? {
    switch reply {
    case .bulkString(let bytes): return bytes
    case .null: return nil
    default: throw unexpected(reply, command: command, expected: "bulk string or nil")
    }
}

/// The error for a reply of the wrong kind, naming the command and what it should have answered.
func unexpected(_ reply: RedisValue, command: String, expected: String) -> RedisClientError {
    RedisClientError.unexpectedReply.with("\(command) answered \(reply.kindDescription), expected \(expected)")
}
