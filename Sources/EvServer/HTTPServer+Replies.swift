import CEvent
import CoreMetrics
import Logging
import Tracing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Part of the server's evhttp layer (see HTTPServer.swift): a response's way out.

// MARK: - Replies

// A request's way out: `reply` writes the application's `Response` with evhttp_send_reply, exactly once per request
// (status line, the response's header fields and the default ones, `Date` and `Content-Length` formatted here, the
// body), and `responseWritten` learns when it is on the wire.

extension HTTPServer {
    /// Writes `response` as the one reply to `job`'s request; does nothing if `close()` has given up on it.
    func reply(to job: RequestJob, _ response: Response) {
        loop.preconditionInLoop()
        let (id, client, head) = (job.id, job.client, job.head)
        let req: RequestPointer
        if let client, let current = client.current, current.id == id {
            req = current.request
            client.current = nil
        } else if let unheld = unheldRequests.removeValue(forKey: id) {
            req = unheld
        } else {
            return
        }
        inFlightCount -= 1
        client?.inFlight -= 1
        // One read of the response's storage for everything below (see Response.Parts).
        let parts = response.parts
        var code = parts.status.code
        var reason = parts.status.reason
        if !(100...999).contains(code) {
            httpLogger.error("handler set an invalid status \(code); answering 500")
            code = 500
            reason = HTTPStatus.standardReason(500)
        } else if Self.hasLineBreak(reason) {
            reason = HTTPStatus.standardReason(code)   // CR/LF in the status line would split the response
        }
        // RFC 9110 6.4.1: no body in 1xx, 204 and 304 responses (evhttp would send one if we gave it).
        let bodyAllowed = code >= 200 && code != 204 && code != 304

        let output = evhttp_request_get_output_headers(req)!
        let hasLength = head && parts.headers.contains("Content-Length")
        appendHeaderBlock(to: output, parts.headers, head: head, requestID: job.request.id)
        if closing {
            evhttp_remove_header(output, "Connection")
            evhttp_add_header(output, "Connection", "close")
        }
        if head {
            // The GET route answered; tell the client how long the body it did not ask for would be.
            if bodyAllowed && !hasLength { addContentLength(output, parts.body.count) }
        } else {
            let http11 = req.pointee.major == 1 && req.pointee.minor >= 1
            if bodyAllowed && http11 { addContentLength(output, parts.body.count) }
            if bodyAllowed && !parts.body.isEmpty {
                let buffer = evhttp_request_get_output_buffer(req)
                parts.body.withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
            }
        }

        if evhttp_request_get_connection(req) != nil, let client, client.connection != nil {
            client.flushing = true
            flushingCount += 1
            // passUnretained: `connections` holds the client until evhttp closes the connection, and evhttp calls
            // this (from evhttp_send_done) before it closes it.
            evhttp_request_set_on_complete_cb(req, onResponseWritten, client.context)
        }
        // evhttp writes the whole reply into the output buffer inside this call; the watch for evhttp's own answers
        // (see `evhttpWrote`) looks away meanwhile. A detached request (its client went away while we worked) is
        // freed inside this call.
        client?.watchesOwnAnswers(false)
        reason.withCString { evhttp_send_reply(req, Int32(code), $0, nil) }
        client?.watchesOwnAnswers(true)
        let nanoseconds = HTTPServerMetrics.now() - job.start
        metrics.recordRequest(route: job.request.route ?? "unmatched", method: job.request.method, status: code,
                              nanoseconds: nanoseconds)
        if accessLog {
            logAccess(job.request, status: code, bytes: bodyAllowed && !head ? parts.body.count : 0,
                      nanoseconds: nanoseconds)
        }
        checkDrained()
    }

    /// Adds the response's header fields to `headers` as one evhttp entry, `Date`, whose value carries the other
    /// fields after it: `Date: <date>\r\nContent-Type: text/plain\r\nX-Instance: a\r\n...`.
    ///
    /// Why one entry: evhttp_make_header writes every entry with its own evbuffer_add_printf("%s: %s\r\n"), about
    /// 1,400 instructions each, and evhttp_add_header copies each name and value into two more allocations (and
    /// evhttp_clear_headers frees the three); with five or six fields a response spent more on them than on
    /// anything else evhttp does for it. evhttp reads three of a response's fields itself, so those stay entries of
    /// their own: `Date` and `Content-Length` (HTTP/1.1 adds its own when it does not find them) and `Connection`
    /// (it decides whether the connection stays open). The entry is built as evhttp_add_header would build it (a
    /// calloc'd `evkeyval`, malloc'd NUL-terminated strings, appended to the list), so evhttp_clear_headers frees
    /// it with the request.
    ///
    /// A field is sent as evhttp would take it, minus its two blind spots: a name or value holding CR or LF (which
    /// would split the response; evhttp would also drop these, but accepts a CR LF followed by a space, an obsolete
    /// line folding) or NUL (which C would cut short) is dropped with a warning. `Content-Length` is the
    /// server's own (see `reply`) except on a HEAD answer; `Transfer-Encoding` is never sent (the body always goes
    /// out whole, with a `Content-Length`). Then the default fields the response does not have (checked when
    /// configured), then the request id (checked when made: a well-formed one from a proxy, or ours) unless the
    /// handler set one, each once; `Date` is the handler's own if it set a valid one, else the current date.
    private func appendHeaderBlock(to headers: UnsafeMutablePointer<evkeyvalq>, _ fields: HTTPHeaders, head: Bool,
                                   requestID: String?) {
        // The handler's own `Date` (rare) first, as the value starts with it.
        var date: String?
        for field in fields.fields where field.name.utf8.count == 4 && field.name.asciiCaseInsensitiveEquals("Date") {
            if Self.isFieldText(field.value) { date = field.value }
            break
        }
        var block = HeaderBlock(capacity: 512)
        block.append(date ?? currentDate())
        for field in fields.fields {
            // The lengths first: most names are none of the four.
            switch field.name.utf8.count {
            case 4 where field.name.asciiCaseInsensitiveEquals("Date"):
                continue
            case 10 where field.name.asciiCaseInsensitiveEquals("Connection"):
                if addHeader(headers, field.name, field.value) != 0 { Self.warnDropped(field.name) }
                continue
            case 14 where field.name.asciiCaseInsensitiveEquals("Content-Length"):
                guard head else { continue }
            case 17 where field.name.asciiCaseInsensitiveEquals("Transfer-Encoding"):
                continue
            default:
                break
            }
            guard Self.isFieldText(field.name), Self.isFieldText(field.value) else {
                Self.warnDropped(field.name)
                continue
            }
            block.appendLine(field.name, field.value)
        }
        for field in defaultHeaders.fields where !fields.contains(field.name) {
            block.appendLine(field.name, field.value)
        }
        if let requestIDs, let requestID, !fields.contains(requestIDs.headerName) {
            block.appendLine(requestIDs.headerName, requestID)
        }

        let entry = calloc(1, MemoryLayout<evkeyval>.size)!.assumingMemoryBound(to: evkeyval.self)
        entry.pointee.key = strdup("Date")
        entry.pointee.value = block.finish()
        // TAILQ_INSERT_TAIL(headers, entry, next)
        entry.pointee.next.tqe_next = nil
        entry.pointee.next.tqe_prev = headers.pointee.tqh_last
        headers.pointee.tqh_last.pointee = entry
        headers.pointee.tqh_last = (UnsafeMutableRawPointer(entry) + MemoryLayout<evkeyval>.offset(of: \.next.tqe_next)!)
            .assumingMemoryBound(to: UnsafeMutablePointer<evkeyval>?.self)
    }

    private static func warnDropped(_ name: String) {
        httpLogger.warning("dropped response header \(name): a name or value must not contain CR, LF or NUL")
    }

    /// evhttp_add_header with the strings' own NUL-terminated UTF-8: passing a String straight to a `const char *`
    /// parameter copies it into a new array first.
    @discardableResult
    private func addHeader(_ headers: UnsafeMutablePointer<evkeyvalq>?, _ name: String, _ value: String) -> Int32 {
        name.withCString { name in value.withCString { value in evhttp_add_header(headers, name, value) } }
    }

    /// Adds `Content-Length: count`, formatted in place: `String(count)` would make a string (through
    /// `description`) for every reply.
    private func addContentLength(_ headers: UnsafeMutablePointer<evkeyvalq>?, _ count: Int) {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 21) { text in
            var value = count.magnitude
            var start = 20
            text[start] = 0
            repeat {
                start -= 1
                text[start] = CChar(48 + value % 10)
                value /= 10
            } while value > 0
            if count < 0 {   // never, for a body's length; here so that any Int formats as String(count) would
                start -= 1
                text[start] = CChar(45)
            }
            evhttp_add_header(headers, "Content-Length", text.baseAddress! + start)
        }
    }

    /// Whether `text` contains a CR or LF, over a span of its UTF-8 (the view's generic search costs more than the
    /// reason phrase it looks at).
    private static func hasLineBreak(_ text: String) -> Bool {
        let bytes = text.utf8.span
        for index in bytes.indices where bytes[index] == 13 || bytes[index] == 10 { return true }
        return false
    }

    /// Whether `text` can be a header field's name or value as it is: no CR, LF or NUL.
    private static func isFieldText(_ text: String) -> Bool {
        let bytes = text.utf8.span
        for index in bytes.indices where bytes[index] < 14 {
            if bytes[index] == 13 || bytes[index] == 10 || bytes[index] == 0 { return false }
        }
        return true
    }

    /// `Date` as evhttp writes it (`Sun, 06 Nov 1994 08:49:37 GMT`), remade when the second changes.
    private func currentDate() -> String {
        let now = time(nil)
        if now != dateSecond {
            dateSecond = now
            dateText = httpDate(secondsSince1970: Int(now))
        }
        return dateText
    }

    func responseWritten(_ client: ClientConnection) {
        loop.preconditionInLoop()
        if client.flushing {
            client.flushing = false
            flushingCount -= 1
        }
        client.answered += 1
        if client.isWaitingForRequest {
            // The server is waiting for the client again: idle and header timeouts count from now.
            client.since = tick
            if client.scanner.position == .head { client.stampedRequest = client.scanner.completedRequests }
            // A refused request pipelined behind the one just answered: its turn has come. evhttp is about to parse
            // it (evhttp_send_done reads on right after this callback), so drop it first.
            if let failure = client.pendingFailure {
                client.pendingFailure = nil
                refuse(client, failure.rejection(limits))
            }
        }
        checkDrained()
    }
}

/// The value of a response's header entry (see `HTTPServer.appendHeaderBlock`): UTF-8 text built in place in
/// malloc'd memory, which evhttp frees with the request once `finish()` has handed it over (and which is freed here
/// if it never is).
private struct HeaderBlock: ~Copyable {
    private var base: UnsafeMutablePointer<UInt8>
    private var count = 0
    private var capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        base = malloc(capacity)!.assumingMemoryBound(to: UInt8.self)
    }

    deinit { free(base) }

    mutating func append(_ text: String) {
        let bytes = text.utf8.span
        reserve(bytes.count)
        bytes.withUnsafeBufferPointer { bytes in
            if let start = bytes.baseAddress { (base + count).update(from: start, count: bytes.count) }
        }
        count += bytes.count
    }

    /// Appends `\r\nname: value`.
    mutating func appendLine(_ name: String, _ value: String) {
        appendPair(13, 10)
        append(name)
        appendPair(58, 32)
        append(value)
    }

    private mutating func appendPair(_ first: UInt8, _ second: UInt8) {
        reserve(2)
        base[count] = first
        base[count + 1] = second
        count += 2
    }

    /// Room for `extra` more bytes and the NUL.
    private mutating func reserve(_ extra: Int) {
        guard count + extra >= capacity else { return }
        capacity = max(capacity * 2, count + extra + 1)
        base = realloc(base, capacity)!.assumingMemoryBound(to: UInt8.self)
    }

    /// The NUL-terminated text, now the caller's to free.
    consuming func finish() -> UnsafeMutablePointer<CChar> {
        base[count] = 0
        let text = UnsafeMutableRawPointer(base).assumingMemoryBound(to: CChar.self)
        discard self
        return text
    }
}
