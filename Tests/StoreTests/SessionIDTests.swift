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
}
