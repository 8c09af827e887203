import COpenSSL

// HMAC-SHA256 for the cookie signature, on OpenSSL's SHA-256 (libcrypto, which the TLS leg to Redis links already),
// as the C reference server computes it. The one file of this module that calls C: it keeps the pointers inside and
// hands out safe values (a `Span` goes in, an `InlineArray` comes out, no allocation either way).
//
// Why OpenSSL and not swift-crypto: libcrypto picks the CPU's SHA extensions (SHA-NI) at run time, and its context is
// a plain C struct that copies by value. swift-crypto's bundled BoringSSL ran the AVX code here (about 2,100
// instructions per block against a few hundred), and each copy of its `SHA256` state allocated a box, so one cookie
// check cost about 9,500 instructions, as much as the rest of a session read's own work.

/// The 32 bytes of an HMAC-SHA256, held inline.
typealias HMACCode = InlineArray<32, UInt8>

/// HMAC-SHA256 (RFC 2104) with the key pads already absorbed into two SHA-256 states, as section 4 of the RFC
/// suggests and the C reference does: each code then costs two SHA-256 blocks instead of four. The known-answer and
/// Node interoperability tests in CookieSignerTests check it against swift-crypto's `HMAC<SHA256>`.
struct KeyedHMAC: Sendable {
    private let inner: SHA256_CTX
    private let outer: SHA256_CTX

    init(key: [UInt8]) {
        // A key longer than a block is hashed first; a shorter one is padded with zeros to a block.
        var block = key
        if key.count > Int(SHA256_CBLOCK) {
            block = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
            block.withUnsafeMutableBufferPointer { digest in _ = SHA256(key, key.count, digest.baseAddress) }
        }
        block += repeatElement(0, count: Int(SHA256_CBLOCK) - block.count)
        inner = Self.absorbing(block.map { $0 ^ 0x36 })
        outer = Self.absorbing(block.map { $0 ^ 0x5C })
    }

    private static func absorbing(_ pad: [UInt8]) -> SHA256_CTX {
        var context = SHA256_CTX()
        SHA256_Init(&context)
        SHA256_Update(&context, pad, pad.count)
        return context
    }

    /// `HMAC-SHA256(key, message)`: SHA256((key ^ opad) + SHA256((key ^ ipad) + message)).
    func authenticationCode(for message: Span<UInt8>) -> HMACCode {
        var code = HMACCode(repeating: 0)
        var context = inner
        message.withUnsafeBufferPointer { _ = SHA256_Update(&context, $0.baseAddress, $0.count) }
        withUnsafeMutableBytes(of: &code) { code in
            let digest = code.baseAddress!.assumingMemoryBound(to: UInt8.self)
            SHA256_Final(digest, &context)
            context = outer
            SHA256_Update(&context, digest, code.count)
            SHA256_Final(digest, &context)
        }
        return code
    }

    /// ``authenticationCode(for:)-(Span<UInt8>)`` as an array (for the known-answer tests; the request path keeps
    /// the inline code).
    func authenticationCode(for message: [UInt8]) -> [UInt8] {
        let code = authenticationCode(for: message.span)
        return (0..<32).map { code[$0] }
    }
}
