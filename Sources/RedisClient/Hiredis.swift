import CHiredis

// The only file that imports CHiredis: hiredis is the RESP parser. ``RESPReader`` owns one `redisReader`, is fed the
// bytes the transport reads (plain or decrypted TLS), and hands out each complete reply copied into a
// ``RedisValue``; nothing of hiredis's memory outlives a call. The connection itself (socket, TLS, name lookup) is
// RedisTransport's, on libevent's bufferevents, because hiredis 0.14's async context can neither speak TLS nor
// connect without a blocking getaddrinfo.

/// A failure reported by hiredis itself: a reply that is not RESP.
struct HiredisError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An incremental RESP2 parser (hiredis's `redisReader`). Loop-confined with its transport: not thread-safe.
final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        guard let reader = redisReaderCreate() else { fatalError("hiredis could not allocate a reply reader") }
        self.reader = reader
    }

    deinit {
        redisReaderFree(reader)
    }

    /// Appends bytes read from the connection.
    /// - Throws: ``HiredisError`` once the stream is not RESP (the reader stays failed).
    func feed(_ bytes: UnsafeRawBufferPointer) throws(HiredisError) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        guard redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count) == REDIS_OK else {
            throw HiredisError(errorText())
        }
    }

    /// The next complete reply, or nil when more bytes are needed.
    /// - Throws: ``HiredisError`` for bytes that are not RESP (e.g. "Protocol error, got \"\\x15\" as reply type
    ///   byte").
    func next() throws(HiredisError) -> RedisValue? {
        var reply: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &reply) == REDIS_OK else { throw HiredisError(errorText()) }
        guard let reply else { return nil }
        defer { freeReplyObject(reply) }
        return copyReply(reply.assumingMemoryBound(to: redisReply.self))
    }

    private func errorText() -> String {
        withUnsafeBytes(of: reader.pointee.errstr) { raw in
            let text = String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            return text.isEmpty ? "invalid reply from Redis" : text
        }
    }
}

// MARK: - Copying out of C memory

/// Copies a hiredis reply tree into a ``RedisValue`` (bulk strings as bytes: values may be binary).
private func copyReply(_ reply: UnsafePointer<redisReply>) -> RedisValue {
    let node = reply.pointee
    switch node.type {
    case REDIS_REPLY_STRING:
        return .bulkString(copyBytes(node.str, node.len))
    case REDIS_REPLY_STATUS:
        return .simpleString(String(decoding: copyBytes(node.str, node.len), as: UTF8.self))
    case REDIS_REPLY_ERROR:
        return .error(String(decoding: copyBytes(node.str, node.len), as: UTF8.self))
    case REDIS_REPLY_INTEGER:
        return .integer(Int(truncatingIfNeeded: node.integer))
    case REDIS_REPLY_NIL:
        return .null
    case REDIS_REPLY_ARRAY:
        guard let elements = node.element, node.elements > 0 else { return .array([]) }
        // hiredis's reader caps nesting at 7 levels, so this recursion is shallow.
        var values: [RedisValue] = []
        values.reserveCapacity(node.elements)
        for index in 0..<node.elements {
            values.append(elements[index].map { copyReply($0) } ?? .null)
        }
        return .array(values)
    default:
        return .error("unsupported reply type \(node.type) from hiredis")
    }
}

private func copyBytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
    guard let pointer, count > 0 else { return [] }
    return [UInt8](UnsafeRawBufferPointer(start: pointer, count: count))
}
