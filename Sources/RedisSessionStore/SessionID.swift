/// Session identifiers, made as express-session makes them (`uid-safe`'s `uid(24)`).
public enum SessionID {
    /// How many random bytes an id carries.
    public static let byteCount = 24

    /// A new id: 24 bytes from the system CSPRNG (`getrandom(2)` on Linux, `arc4random_buf` on Darwin), in
    /// base64url without padding: 32 characters of `A-Z a-z 0-9 - _`.
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(byteCount)
        for _ in 0..<(byteCount / 8) {
            var word: UInt64 = generator.next()
            for _ in 0..<8 {
                bytes.append(UInt8(truncatingIfNeeded: word))
                word >>= 8
            }
        }
        return Base64.encode(bytes, alphabet: Base64.urlAlphabet)
    }
}

/// Unpadded base64 encoding (both alphabets); the only direction the session code needs.
enum Base64 {
    static let standardAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let urlAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// Encodes without `=` padding (what cookie-signature's `.replace(/=+$/, '')` and uid-safe produce).
    static func encode(_ bytes: Span<UInt8>, alphabet: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        forEachCharacter(of: bytes, alphabet: alphabet.span) { out.append($0) }
        return String(decoding: out, as: UTF8.self)
    }

    static func encode(_ bytes: [UInt8], alphabet: [UInt8]) -> String { encode(bytes.span, alphabet: alphabet) }

    /// Whether `encoded` is the unpadded standard base64 of `bytes`, compared without an early exit: the time taken
    /// says nothing about where the first difference is (a signature check). No encoded copy is made.
    static func constantTimeEquals(encodingOf bytes: Span<UInt8>, _ encoded: Span<UInt8>) -> Bool {
        guard encoded.count == (bytes.count * 4 + 2) / 3 else { return false }
        var difference: UInt8 = 0, position = 0
        forEachCharacter(of: bytes, alphabet: standardAlphabet.span) { character in
            difference |= character ^ encoded[position]
            position += 1
        }
        return difference == 0
    }

    /// Calls `body` with each character of the unpadded encoding, in order.
    @inline(__always)   // so that `body` is inlined too: a call per character costs more than the encoding
    private static func forEachCharacter(of input: Span<UInt8>, alphabet table: Span<UInt8>, _ body: (UInt8) -> Void) {
        // Whole groups of three bytes by index, then the one or two left: every new id and every signature is
        // encoded here, and an iterator with optional lookahead costs about twice as much.
        var index = 0
        while index + 3 <= input.count {
            let b0 = input[index], b1 = input[index + 1], b2 = input[index + 2]
            body(table[Int(b0 >> 2)])
            body(table[Int((b0 & 0x03) << 4 | b1 >> 4)])
            body(table[Int((b1 & 0x0F) << 2 | b2 >> 6)])
            body(table[Int(b2 & 0x3F)])
            index += 3
        }
        switch input.count - index {
        case 1:
            let b0 = input[index]
            body(table[Int(b0 >> 2)])
            body(table[Int((b0 & 0x03) << 4)])
        case 2:
            let b0 = input[index], b1 = input[index + 1]
            body(table[Int(b0 >> 2)])
            body(table[Int((b0 & 0x03) << 4 | b1 >> 4)])
            body(table[Int((b1 & 0x0F) << 2)])
        default:
            break
        }
    }
}
