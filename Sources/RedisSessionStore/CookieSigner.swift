
/// Why a ``CookieSigner`` could not be made.
public struct CookieSignerError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Signs session ids for the session cookie as express-session does (through `cookie-signature`):
/// `s:<id>.<base64(HMAC-SHA256(secret, id)) without '='>`.
///
/// The first secret signs; every secret verifies, so secrets can be rotated by putting the new one first and keeping
/// the old ones until their cookies have expired.
public struct CookieSigner: Sendable {
    /// One keyed HMAC per secret (see ``KeyedHMAC``).
    private let keyed: [KeyedHMAC]

    /// - Parameter secrets: the first signs, all verify.
    /// - Throws: ``CookieSignerError`` when the list or any secret is empty.
    public init(secrets: [String]) throws {
        guard !secrets.isEmpty else { throw CookieSignerError("at least one cookie secret is required") }
        guard !secrets.contains(where: \.isEmpty) else { throw CookieSignerError("cookie secrets must not be empty") }
        // Node's createHmac('sha256', secret) keys the HMAC with the secret's UTF-8 bytes; so do we.
        keyed = secrets.map { KeyedHMAC(key: Array($0.utf8)) }
    }

    /// The signed value: `s:` + id + `.` + signature.
    public func sign(_ id: String) -> String {
        "s:" + id + "." + CookieSigner.signature(of: id, keyed: keyed[0])
    }

    /// The id inside a signed value, or nil when the value is not `s:<id>.<signature>` with a signature made by one
    /// of the secrets. The signature is compared in constant time.
    ///
    /// Unlike cookie-signature 1.0.x, trailing characters after a valid signature are rejected: that version
    /// compares only the first `signature.length` bytes, so `s:id.sig` + anything also verified.
    public func unsign(_ value: String) -> String? {
        // Over the UTF-8 bytes, not Characters ("s:\u{301}..." is "s" + ":\u{301}" as Characters and would not
        // match "s:"), and without copying: this runs for every request that carries a session cookie.
        let bytes = value.utf8.span
        guard bytes.count > 2, bytes[0] == UInt8(ascii: "s"), bytes[1] == UInt8(ascii: ":") else { return nil }
        var dot = bytes.count - 1
        while dot > 1 && bytes[dot] != UInt8(ascii: ".") { dot -= 1 }
        // The length of a signature is public (43 characters), so a wrong length may return at once.
        guard dot > 1, bytes.count - dot - 1 == CookieSigner.signatureLength else { return nil }
        let id = bytes.extracting(2..<dot), presented = bytes.extracting((dot + 1)...)
        for mac in keyed where Base64.constantTimeEquals(encodingOf: mac.authenticationCode(for: id).span, presented) {
            let utf8 = value.utf8
            return String(Substring(utf8[utf8.index(utf8.startIndex, offsetBy: 2)..<utf8.index(utf8.startIndex, offsetBy: dot)]))
        }
        return nil
    }

    /// The cookie value for `id` as it goes on the wire: the signed value encoded as `encodeURIComponent` would
    /// (`s:abc.d+e/f` -> `s%3Aabc.d%2Be%2Ff`), as the `cookie` package's `serialize` does.
    public func cookieValue(for id: String) -> String {
        CookieSigner.encodeURIComponent(sign(id))
    }

    /// `base64(HMAC-SHA256(key, value))` without `=` padding.
    private static func signature(of value: String, keyed: KeyedHMAC) -> String {
        Base64.encode(keyed.authenticationCode(for: value.utf8.span).span, alphabet: Base64.standardAlphabet)
    }

    /// Characters in a signature: 32 bytes of HMAC-SHA256 in unpadded base64.
    static let signatureLength = 43

    /// JavaScript's `encodeURIComponent`: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )` becomes `%XX` of its UTF-8
    /// bytes, in upper-case hex.
    public static func encodeURIComponent(_ text: String) -> String {
        // Over a span, with the hex digits computed: this runs for every Set-Cookie, and the UTF-8 view's iterator
        // plus a digit table built per call cost several times more.
        let bytes = text.utf8.span
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 16)
        for index in bytes.indices {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "!"), UInt8(ascii: "~"),
                 UInt8(ascii: "*"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"):
                out.append(byte)
            default:
                out.append(UInt8(ascii: "%"))
                out.append(upperHexDigit(byte >> 4))
                out.append(upperHexDigit(byte & 0x0F))
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func upperHexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "A") + value - 10
    }
}
