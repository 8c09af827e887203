import Testing
@testable import RedisClient
@testable import RedisSessionStore

// RedisCommand is what hiredis writes to the socket as is (redisAsyncFormattedCommand), so its bytes are checked
// exactly here; RedisClientTests round-trips binary values through a real server.

@Suite struct RedisCommandTests {
    @Test func argumentsAreEncodedAsRESPBulkStrings() {
        let command = RedisCommand([Array("SET".utf8), Array("k".utf8), Array("hello world".utf8)])
        #expect(command.isComplete)
        #expect(text(command) == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\nhello world\r\n")
    }

    @Test func emptyAndBinaryArgumentsKeepTheirExactLength() {
        let binary: [UInt8] = [0, 13, 10, 0xFF, 36]
        let command = RedisCommand([Array("SET".utf8), [], binary])
        let expected = Array("*3\r\n$3\r\nSET\r\n$0\r\n\r\n$5\r\n".utf8) + binary + Array("\r\n".utf8)
        #expect(command.bytes == expected)
    }

    @Test func numbersAreSentInDecimalWithTheirSign() {
        var command = RedisCommand(count: 5, payload: 0)
        command.append("EXPIRE")
        command.append(0)
        command.append(7)
        command.append(-42)
        command.append(Int.min)
        #expect(command.isComplete)
        #expect(text(command) == "*5\r\n$6\r\nEXPIRE\r\n$1\r\n0\r\n$1\r\n7\r\n$3\r\n-42\r\n$20\r\n-9223372036854775808\r\n")
    }

    @Test func lengthsOfSeveralDigitsAreWrittenInFull() {
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: 1234)
        let command = RedisCommand([Array("SET".utf8), Array("key".utf8), value])
        #expect(text(command).hasPrefix("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$1234\r\nxxx"))
        #expect(command.bytes.count == 29 + 1234 + 2)
    }

    @Test func aCommandIsIncompleteUntilEveryAnnouncedArgumentIsAppended() {
        var command = RedisCommand(count: 2, payload: 3)
        command.append("GET")
        #expect(!command.isComplete)
        command.append("é")   // two UTF-8 bytes
        #expect(command.isComplete)
        #expect(command.bytes.suffix(8) == Array("$2\r\né\r\n".utf8))
    }
}

private func text(_ command: RedisCommand) -> String {
    String(decoding: command.bytes, as: UTF8.self)
}
