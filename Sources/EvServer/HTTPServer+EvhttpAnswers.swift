import CEvent

// The watch on the answers evhttp sends by itself (evhttp_send_error's pages, for a request its parser refuses after
// the scanner let it through), so that they carry the default header fields too. See the last point at the top of
// HTTPServer+Connections.swift.

extension HTTPServer {
    /// evhttp has just written `added` bytes to `client`'s output on its own: the server's replies switch this watch
    /// off while evhttp writes them (see the top of HTTPServer+Connections.swift). A final answer (an error page)
    /// gets the default fields right after its status line, the first thing evhttp writes; an interim one
    /// (`100 Continue`) is left alone, and the watch goes on for what follows it.
    func evhttpWrote(_ client: ClientConnection, added: Int) {
        loop.preconditionInLoop()
        let output = client.output
        let length = evbuffer_get_length(output)
        guard let entry = client.outputCallbackEntry, added <= length else { return }
        // evbuffer_peek, not evbuffer_copyout_from: the bufferevent freezes its output's start at times, and then
        // copying out fails.
        let start = Self.peek(output, at: length - added, count: min(added, 16))   // `HTTP/1.1 400 Ba`
        guard let statusClass = Self.statusClass(ofStatusLineStart: start), statusClass != 1 else { return }
        // Once is enough: evhttp closes the connection after its error page. Removed first, so that adding the
        // fields does not call back here.
        evbuffer_remove_cb_entry(output, entry)
        client.outputCallbackEntry = nil
        let fields = defaultFieldLines(skipping: Self.evhttpErrorPageFields)
        _ = fields.withCString { evbuffer_add(output, $0, fields.utf8.count) }
    }

    /// Up to `count` bytes of `buffer` from `offset` on, without draining them.
    private static func peek(_ buffer: OpaquePointer, at offset: Int, count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        var position = evbuffer_ptr()
        guard evbuffer_ptr_set(buffer, &position, offset, EVBUFFER_PTR_SET) == 0 else { return bytes }
        var extent = iovec()
        while bytes.count < count {
            let wanted = count - bytes.count
            guard evbuffer_peek(buffer, wanted, &position, &extent, 1) > 0, let base = extent.iov_base else { break }
            let taken = min(extent.iov_len, wanted)
            bytes += UnsafeRawBufferPointer(start: base, count: taken)
            guard evbuffer_ptr_set(buffer, &position, taken, EVBUFFER_PTR_ADD) == 0 else { break }
        }
        return bytes
    }

    /// The fields evhttp_send_error's page has (its own win over default ones of the same name).
    private static let evhttpErrorPageFields = ["Content-Type", "Connection", "Date", "Content-Length"]

    /// The first digit of the status code, from the start of a status line (`HTTP/1.1 400 …`); nil when `bytes`
    /// does not start like one.
    static func statusClass(ofStatusLineStart bytes: [UInt8]) -> Int? {
        guard bytes.starts(with: "HTTP/".utf8), let space = bytes.firstIndex(of: 32), space + 1 < bytes.count
        else { return nil }
        let digit = bytes[space + 1]
        return (48...57).contains(digit) ? Int(digit - 48) : nil
    }
}
