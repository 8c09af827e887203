import Crypto
import EvServer

// Lua scripts run by SHA-1 (EVALSHA), with EVAL when the server does not know them yet.

/// A Lua script and its SHA1, computed once (the name EVALSHA knows it by).
public struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    public let source: String
    /// The lower-case hex SHA1 of the source.
    public let sha1: String
    /// `sha1` as bytes, the argument of every EVALSHA.
    private let sha1Bytes: [UInt8]

    /// Prepares a script.
    public init(_ source: String) {
        self.source = source
        self.sha1Bytes = RedisScript.sha1Hex(Array(source.utf8))
        self.sha1 = String(decoding: sha1Bytes, as: UTF8.self)
    }

    /// EVALSHA of the script with `keys` and `arguments` through `send`, then EVAL when the server answers
    /// `NOSCRIPT` (first use, a restart, a failover, SCRIPT FLUSH: EVAL caches it again). The one place that
    /// builds the two commands, whatever sends them (a client, a cluster node, a write followed by WAIT).
    nonisolated(nonsending) func run(
        keys: [String], arguments: [[UInt8]],
        through send: nonisolated(nonsending) ([[UInt8]]) async throws -> RedisValue
    ) async throws -> RedisValue {
        try await run(keyBytes: keys.map { Array($0.utf8) }, arguments: arguments, through: send)
    }

    /// ``run(keys:arguments:through:)`` with the keys as bytes.
    nonisolated(nonsending) package func run(
        keyBytes keys: [[UInt8]], arguments: [[UInt8]],
        through send: nonisolated(nonsending) ([[UInt8]]) async throws -> RedisValue
    ) async throws -> RedisValue {
        // Each command built in one array (not a tail joined to a head): a session save sends one on every write.
        func command(_ name: [UInt8], _ script: [UInt8]) -> [[UInt8]] {
            var command: [[UInt8]] = []
            command.reserveCapacity(3 + keys.count + arguments.count)
            command.append(name)
            command.append(script)
            command.append(decimal(keys.count))
            command.append(contentsOf: keys)
            command.append(contentsOf: arguments)
            return command
        }
        do {
            return try await send(command(Keyword.evalsha, sha1Bytes))
        } catch let error as RedisError where error.code == "NOSCRIPT" {
            return try await send(command(Keyword.eval, Array(source.utf8)))
        }
    }

    /// The lower-case hex SHA1 of `bytes`, as Lua's `redis.sha1hex` and `SCRIPT LOAD` write it.
    package static func sha1Hex(_ bytes: [UInt8]) -> [UInt8] {
        // Digits computed, not looked up in a table built per call (every session save hashes its loaded value).
        func digit(_ value: UInt8) -> UInt8 { value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10 }
        var text: [UInt8] = []
        text.reserveCapacity(40)
        for byte in Insecure.SHA1.hash(data: bytes) {
            text.append(digit(byte >> 4))
            text.append(digit(byte & 0x0F))
        }
        return text
    }
}
