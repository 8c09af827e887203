import Testing
@testable import RedisSessionStore

@Suite struct SessionIDTests {
    @Test func idsAre32Base64URLCharacters() {
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for _ in 0..<1000 {
            let id = SessionID.generate()
            #expect(id.count == 32)
            #expect(id.allSatisfy(alphabet.contains))
        }
    }

    @Test func idsAreUnique() {
        var seen = Set<String>()
        for _ in 0..<100_000 { seen.insert(SessionID.generate()) }
        #expect(seen.count == 100_000)
    }

    @Test func idsUseTheWholeAlphabet() {
        // 24 random bytes per id: over 2000 ids every one of the 64 characters shows up in every position class.
        var characters = Set<Character>()
        for _ in 0..<2000 { characters.formUnion(SessionID.generate()) }
        #expect(characters.count == 64)
    }

    @Test func base64MatchesKnownVectors() {
        // RFC 4648 test vectors, unpadded.
        let vectors = [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE"),
                       ("foobar", "Zm9vYmFy")]
        for (input, output) in vectors {
            #expect(Base64.encode(Array(input.utf8), alphabet: Base64.standardAlphabet) == output)
        }
        #expect(Base64.encode([0xFB, 0xFF], alphabet: Base64.standardAlphabet) == "+/8")
        #expect(Base64.encode([0xFB, 0xFF], alphabet: Base64.urlAlphabet) == "-_8")
    }

    @Test func comparingWithAnEncodingFindsAnyDifference() {
        func matches(_ bytes: [UInt8], _ encoded: [UInt8]) -> Bool {
            Base64.constantTimeEquals(encodingOf: bytes.span, encoded.span)
        }
        let bytes = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let encoded = Array(Base64.encode(bytes, alphabet: Base64.standardAlphabet).utf8)
        #expect(encoded.count == 43)
        #expect(matches(bytes, encoded))
        for position in encoded.indices {   // a change anywhere, the last character included, is seen
            var changed = encoded
            changed[position] = changed[position] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
            #expect(!matches(bytes, changed), "position \(position)")
        }
        #expect(!matches(bytes, encoded.dropLast()))
        #expect(!matches(bytes, (encoded + [UInt8(ascii: "A")])))
        #expect(matches([0xFB, 0xFF], Array("+/8".utf8)))
    }
}

/// The reliability issue's randomness check: 1,000,000 ids, no duplicate, and each of the 192 bit positions set in
/// 0.5 +/- 0.003 of them (the standard deviation at n = 1e6 is 0.0005, so a healthy CSPRNG fails this with a
/// probability far below 1e-9, while a stuck or biased bit fails it at once).
@Suite struct SessionIDStatisticsTests {
    static func decode(_ id: String) -> [UInt8] {
        var values: [UInt8] = []
        for c in id.utf8 {
            switch c {
            case 65...90: values.append(c - 65)
            case 97...122: values.append(c - 71)
            case 48...57: values.append(c + 4)
            case 45: values.append(62)
            default: values.append(63)   // "_"
            }
        }
        var bytes: [UInt8] = []
        var index = 0
        while index + 3 < values.count {
            bytes.append(values[index] << 2 | values[index + 1] >> 4)
            bytes.append(values[index + 1] << 4 | values[index + 2] >> 2)
            bytes.append(values[index + 2] << 6 | values[index + 3])
            index += 4
        }
        return bytes
    }

    @Test func aMillionIdsAreDistinctAndEveryBitIsFair() async throws {
        let count = 1_000_000
        // Seconds of CPU: on a thread of its own, not one of the concurrency pool's two, which every other test
        // in the parallel run needs to make progress.
        let (distinct, ones) = try await onThread { () -> (Int, [Int]) in
            var seen = Set<String>(minimumCapacity: count)
            var ones = [Int](repeating: 0, count: SessionID.byteCount * 8)
            for _ in 0..<count {
                let id = SessionID.generate()
                seen.insert(id)
                for (byteIndex, byte) in Self.decode(id).enumerated() where byte != 0 {
                    for bit in 0..<8 where byte & (1 << bit) != 0 { ones[byteIndex * 8 + bit] += 1 }
                }
            }
            return (seen.count, ones)
        }
        #expect(distinct == count, "\(count - distinct) duplicate ids")
        #expect(Self.decode("AAECAwQFBgcICQoLDA0ODxAREhMUFRYX") == Array(0..<24))
        for (position, setCount) in ones.enumerated() {
            let frequency = Double(setCount) / Double(count)
            #expect(abs(frequency - 0.5) <= 0.003, "bit \(position) set in \(frequency) of the ids")
        }
    }
}
