import Crypto

// HMAC-SHA256 for the cookie signature, on swift-crypto. The one file of this module that touches raw bytes:
// swift-crypto's cheap ways into and out of a hash (`update(bufferPointer:)`, `Digest.withUnsafeBytes`) take
// pointers, and its safe ones cost more than the two SHA-256 blocks themselves (`update(data:)` wants a
// `DataProtocol` copy of the message, and iterating a `Digest` first copies it into a new `Array`). Like the
// libevent and hiredis layers, it keeps the pointers inside and hands out safe values: a `Span` goes in, an
// `InlineArray` (no allocation) comes out.

/// The 32 bytes of an HMAC-SHA256, held inline.
typealias HMACCode = InlineArray<32, UInt8>

/// HMAC-SHA256 (RFC 2104) with the key pads already absorbed into two SHA-256 states, as section 4 of the RFC
/// suggests and the C reference does: each code then costs two SHA-256 blocks instead of four, and copying a state
/// is cheap (copy-on-write). Built on the concrete `SHA256`, whose inlinable methods are specialized here;
/// swift-crypto's `HMAC<H>` runs as unspecialized generic code, several thousand instructions more per code.
/// The known-answer and Node interoperability tests in CookieSignerTests check it against `HMAC<SHA256>`'s results.
struct KeyedHMAC: Sendable {
    private let inner: SHA256
    private let outer: SHA256

    init(key: [UInt8]) {
        // A key longer than a block is hashed first; a shorter one is padded with zeros to a block.
        var block = key.count > SHA256.blockByteCount ? Array(SHA256.hash(data: key)) : key
        block += repeatElement(0, count: SHA256.blockByteCount - block.count)
        var inner = SHA256()
        inner.update(data: block.map { $0 ^ 0x36 })
        var outer = SHA256()
        outer.update(data: block.map { $0 ^ 0x5C })
        self.inner = inner
        self.outer = outer
    }

    /// `HMAC-SHA256(key, message)`: SHA256((key ^ opad) + SHA256((key ^ ipad) + message)).
    func authenticationCode(for message: Span<UInt8>) -> HMACCode {
        var inner = self.inner
        message.withUnsafeBytes { inner.update(bufferPointer: $0) }
        var outer = self.outer
        inner.finalize().withUnsafeBytes { outer.update(bufferPointer: $0) }
        return outer.finalize().withUnsafeBytes { digest in
            precondition(digest.count == 32, "SHA-256 digests are 32 bytes")
            var code = HMACCode(repeating: 0)
            for index in 0..<32 { code[index] = digest[index] }
            return code
        }
    }

    /// ``authenticationCode(for:)-(Span<UInt8>)`` as an array (for the known-answer tests; the request path keeps
    /// the inline code).
    func authenticationCode(for message: [UInt8]) -> [UInt8] {
        let code = authenticationCode(for: message.span)
        return (0..<32).map { code[$0] }
    }
}
