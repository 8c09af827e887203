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
    static func encode<Bytes: Collection<UInt8>>(_ bytes: Bytes, alphabet: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var iterator = bytes.makeIterator()
        while let b0 = iterator.next() {
            let b1 = iterator.next()
            let b2 = iterator.next()
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | (b1 ?? 0) >> 4)])
            guard let b1 else { break }
            out.append(alphabet[Int((b1 & 0x0F) << 2 | (b2 ?? 0) >> 6)])
            guard let b2 else { break }
            out.append(alphabet[Int(b2 & 0x3F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
