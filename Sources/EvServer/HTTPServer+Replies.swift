import CEvent
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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

        let output = evhttp_request_get_output_headers(req)
        var hasLength = false
        for field in parts.headers.fields {
            if field.name.asciiCaseInsensitiveEquals("Content-Length") {
                // evhttp computes the length of what it sends; only a HEAD answer may state its own.
                guard head else { continue }
                hasLength = true
            } else if field.name.asciiCaseInsensitiveEquals("Transfer-Encoding") {
                continue   // the body always goes out whole, with a Content-Length
            }
            if addHeader(output, field.name, field.value) != 0 {
                httpLogger.warning("dropped response header \(field.name): a name or value must not contain CR or LF")
            }
        }
        // The default fields the response does not have (checked when configured: evhttp takes them all).
        for field in defaultHeaders.fields where !parts.headers.contains(field.name) {
            addHeader(output, field.name, field.value)
        }
        if closing {
            evhttp_remove_header(output, "Connection")
            evhttp_add_header(output, "Connection", "close")
        }
        // For HTTP/1.1, evhttp_make_header_response would now append `Date` (formatted anew, through snprintf, for
        // every response) and then `Content-Length` (snprintf again). The same two fields, in the same place and
        // the same form, from a date made once a second; evhttp then skips its own.
        let http11 = req.pointee.major == 1 && req.pointee.minor >= 1
        let hasDate = evhttp_find_header(output, "Date") != nil   // the handler's own, as evhttp checks
        if head {
            // The GET route answered; tell the client how long the body it did not ask for would be.
            if bodyAllowed && !hasLength { addContentLength(output, parts.body.count) }
            if http11 && !hasDate { addHeader(output, "Date", currentDate()) }
        } else {
            if http11 && !hasDate { addHeader(output, "Date", currentDate()) }
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
        checkDrained()
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
