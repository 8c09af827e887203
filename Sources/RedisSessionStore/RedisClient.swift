import EvServer

// SKELETON: the signatures are the contract; the Redis workstream fills in the bodies (Hiredis.swift holds the C).

/// Where and how to connect to Redis, parsed from `redis://[user:password@]host:port/db`.
public struct RedisConfiguration: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var database: Int
    /// Deadline for each command; a command that misses it fails with `RedisClientError.timeout`.
    public var commandTimeout: Duration

    public init(host: String = "127.0.0.1", port: Int = 6379, username: String? = nil, password: String? = nil,
                database: Int = 0, commandTimeout: Duration = .seconds(1)) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.commandTimeout = commandTimeout
    }

    /// Parses a `redis://` URL. - Throws: `RedisConfigurationError` with a one-line reason.
    public init(url: String) throws { fatalError("SKELETON") }
}

/// A reply from Redis, copied out of hiredis's memory.
public enum RedisValue: Sendable, Hashable {
    case simpleString(String)
    case error(String)
    case integer(Int)
    /// A bulk string; bytes, because values may be binary.
    case bulkString([UInt8])
    case null
    case array([RedisValue])
}

/// An async Redis client: one hiredis connection attached to one ``EventLoop``, commands pipelined on it.
public final class RedisClient: Sendable {
    /// The loop whose thread owns the connection.
    public let loop: EventLoop
    public let configuration: RedisConfiguration

    /// Creates a client; it connects in the background and reconnects with back-off when the connection drops.
    public init(configuration: RedisConfiguration, loop: EventLoop) { fatalError("SKELETON") }

    /// Sends one command (arguments are binary-safe) and returns the reply. A `-ERR` reply throws `RedisError`.
    public func send(_ arguments: [[UInt8]]) async throws -> RedisValue { fatalError("SKELETON") }
    public func send(_ arguments: String...) async throws -> RedisValue { fatalError("SKELETON") }

    /// [GET](https://redis.io/commands/get/)
    public func get(_ key: String) async throws -> [UInt8]? { fatalError("SKELETON") }
    /// [GETEX](https://redis.io/commands/getex/) key EX seconds: gets the value and refreshes its TTL at once.
    public func get(_ key: String, refreshingExpiry seconds: Int) async throws -> [UInt8]? { fatalError("SKELETON") }
    /// [SET](https://redis.io/commands/set/) key value [EX seconds]
    public func set(_ key: String, to value: [UInt8], expiresIn seconds: Int? = nil) async throws { fatalError("SKELETON") }
    /// [EXPIRE](https://redis.io/commands/expire/); returns whether the key existed.
    @discardableResult
    public func expire(_ key: String, after seconds: Int) async throws -> Bool { fatalError("SKELETON") }
    /// [DEL](https://redis.io/commands/del/); returns how many keys were removed.
    @discardableResult
    public func delete(_ keys: [String]) async throws -> Int { fatalError("SKELETON") }
    /// [SCAN](https://redis.io/commands/scan/) cursor MATCH pattern COUNT count
    public func scan(cursor: String, match pattern: String?, count: Int) async throws -> (cursor: String, keys: [String]) {
        fatalError("SKELETON")
    }
    /// [PING](https://redis.io/commands/ping/)
    public func ping() async throws { fatalError("SKELETON") }
    /// Closes the connection; pending commands fail with `RedisClientError.connectionClosed`.
    public func close() { fatalError("SKELETON") }
}
