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

// Part of the server's evhttp layer (see HTTPServer.swift): answers the server writes straight to the socket.

// MARK: - Refusals

// The answers the server writes by itself, straight to the socket: a refused request (over a limit, malformed, too
// slow: `refuse`) and a connection past `maxConnections` (`refuseOverCapacity`), each a short JSON error with the
// default header fields and `Connection: close`. Why straight to the socket: the top of "Connections" in this file.

/// `send` flags that keep a write to a reset connection from raising SIGPIPE: MSG_NOSIGNAL on Linux; elsewhere
/// nothing, and `ignoreBrokenPipe` covers it.
private var noSignal: Int32 {
    #if os(Linux)
    Int32(MSG_NOSIGNAL)
    #else
    0
    #endif
}

/// shutdown(2) for writing: the peer reads the end of the answer, and we go on reading what it still sends. At file
/// scope because HTTPServer's own `close()` and friends would hide the libc names inside it.
private func shutdownSending(_ fd: Int32) {
    _ = shutdown(fd, Int32(SHUT_WR))
}

extension HTTPServer {
    /// Answers the request in progress on `client` with `rejection` ourselves and ends the connection; evhttp never
    /// sees another byte of it. See the top of "Connections" in this file.
    func refuse(_ client: ClientConnection, _ rejection: HTTPRejection) {
        // The request was never parsed, so a proxy's id for it is not known: the refusal gets an id of our own.
        let requestID = requestIDs.map { _ in requestIDGenerator.next() }
        httpLogger.debug("refusing a request: \(rejection)", metadata: requestID.map { ["request_id": .string($0)] })
        client.lingering = true
        client.since = tick
        evbuffer_drain(client.input, evbuffer_get_length(client.input))
        let body = #"{"error":\#(jsonQuoted(rejection.message))}"#
        recordRefusal(status: rejection.status.code, bytes: body.utf8.count, requestID: requestID)
        let fd = bufferevent_getfd(client.bufferevent)
        guard fd >= 0 else { return }
        Self.writeBestEffort(fd, errorResponse(rejection.status, body: body, requestID: requestID))
        shutdownSending(fd)
    }

    /// Answers a connection over `maxConnections` with a 503 and closes it, without reading its request.
    func refuseOverCapacity(_ client: ClientConnection, _ connection: OpaquePointer) {
        if tick != lastCapacityWarning {
            lastCapacityWarning = tick
            httpLogger.warning("\(maxConnections) connections open on loop \(loop.name): refusing new ones")
        }
        detach(client)
        let requestID = requestIDs.map { _ in requestIDGenerator.next() }
        recordRefusal(status: 503, bytes: Self.overCapacityBody.utf8.count, requestID: requestID)
        let fd = bufferevent_getfd(client.bufferevent)
        if fd >= 0 {
            Self.writeBestEffort(fd, errorResponse(.serviceUnavailable, body: Self.overCapacityBody,
                                                   extraHeaders: [("Retry-After", "1")], requestID: requestID))
            // Read what the client has already sent: closing with unread input would send a reset instead of
            // the answer's end.
            var scratch = [UInt8](repeating: 0, count: 16384)
            for _ in 0..<4 {
                let count = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if count <= 0 { break }
            }
        }
        evhttp_connection_free(connection)   // no close callback is set yet: nothing else to update
    }

    /// A complete response with `Connection: close` and the default fields it does not have already.
    private func errorResponse(_ status: HTTPStatus, body: String,
                               extraHeaders: [(name: String, value: String)] = [], requestID: String?) -> [UInt8] {
        let fields = [("Date", httpDate(secondsSince1970: Int(time(nil)))),
                      ("Content-Type", "application/json; charset=utf-8"),
                      ("Content-Length", String(body.utf8.count))] + extraHeaders
        var head = "HTTP/1.1 \(status.code) \(status.reason)\r\n"
        for field in fields { head += "\(field.name): \(field.value)\r\n" }
        head += defaultFieldLines(skipping: fields.map(\.name))
        head += requestIDLine(requestID)
        head += "Connection: close\r\n\r\n"
        return Array((head + body).utf8)
    }

    /// The default fields as header lines (`Name: value\r\n`), but those named in `present`.
    func defaultFieldLines(skipping present: [String]) -> String {
        var lines = ""
        for field in defaultHeaders.fields {
            guard !present.contains(where: { $0.asciiCaseInsensitiveEquals(field.name) }) else { continue }
            lines += "\(field.name): \(field.value)\r\n"
        }
        return lines
    }

    private static let overCapacityBody = #"{"error":"too many connections"}"#

    /// The request id field as a header line, or nothing without one.
    func requestIDLine(_ requestID: String?) -> String {
        guard let requestIDs, let requestID else { return "" }
        return "\(requestIDs.headerName): \(requestID)\r\n"
    }

    /// Counts an answer the server sent by itself, and logs it when the access log is on.
    func recordRefusal(status: Int, bytes: Int, requestID: String?) {
        metrics.recordRefusal(status: status)
        if accessLog { logRefusal(status: status, bytes: bytes, requestID: requestID) }
    }

    /// Sends what the socket takes now. The answers are small and the socket's send buffer is empty when they are
    /// sent (see the top of "Connections" in this file), so this writes them whole unless the client is gone.
    private static func writeBestEffort(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes {
                send(fd, $0.baseAddress, $0.count, noSignal | Int32(MSG_DONTWAIT))
            }
            if sent > 0 {
                offset += sent
            } else if sent < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}
