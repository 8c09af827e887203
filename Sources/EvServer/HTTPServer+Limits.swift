import CEvent

// The limits of each connection, in bytes and in time: `input` hands the bytes evhttp is about to parse to the
// connection's scanner (HTTPLimits+Scanner.swift) and refuses a request the scanner fails; `sweep`, every tick,
// closes idle connections, answers slow request heads 408 and ends refused connections that have lingered long
// enough. How the bytes get here: the top of HTTPServer+Connections.swift.

extension HTTPServer {
    // MARK: Checking the bytes

    /// `added` bytes have just arrived at the end of `client`'s input buffer; evhttp has not seen them yet.
    func input(_ client: ClientConnection, added: Int) {
        loop.preconditionInLoop()
        if client.lingering {
            evbuffer_drain(client.input, evbuffer_get_length(client.input))
            return
        }
        // After a refusal that waits for earlier requests, the bytes wait too (they are dropped with it).
        guard !client.scanner.isDead else { return }
        let buffer = client.input
        let length = evbuffer_get_length(buffer)
        guard added <= length else { return }
        var position = evbuffer_ptr()
        guard evbuffer_ptr_set(buffer, &position, length - added, EVBUFFER_PTR_SET) == 0 else { return }
        var left = added
        var extent = iovec()
        var failure: HTTPLimits.Scanner.Failure?
        while left > 0 && failure == nil {
            guard evbuffer_peek(buffer, left, &position, &extent, 1) > 0, let base = extent.iov_base else { break }
            let count = min(extent.iov_len, left)
            let bytes = UnsafeBufferPointer(start: base.assumingMemoryBound(to: UInt8.self), count: count)
            failure = client.scanner.scan(bytes.span)
            left -= count
            if left > 0 && evbuffer_ptr_set(buffer, &position, count, EVBUFFER_PTR_ADD) != 0 { break }
        }
        lastScanned = client
        if client.scanner.position == .head && client.stampedRequest != client.scanner.completedRequests {
            // The first byte of a head: the header timeout counts from here.
            client.stampedRequest = client.scanner.completedRequests
            client.since = tick
        }
        if let failure {
            if client.isWaitingForRequest {
                refuse(client, failure.rejection(limits))
            } else {
                client.pendingFailure = failure
            }
        }
    }

    // MARK: Timeouts

    private enum Expiry { case close, requestTimeout }

    /// Runs every tick: closes idle connections, answers slow headers 408, ends lingering refused connections.
    func sweep() {
        loop.preconditionInLoop()
        tick += 1
        var expired: [(ClientConnection, Expiry)] = []
        for client in connections.values {
            // While evhttp or the application works on a request, its own timeouts apply. (Freeing the connection
            // then would also free the request the application holds.)
            guard client.isWaitingForRequest else { continue }
            let elapsed = tick - client.since
            if client.lingering {
                if elapsed >= lingerTicks { expired.append((client, .close)) }
                continue
            }
            guard client.pendingFailure == nil else { continue }
            switch client.scanner.position {
            case .betweenRequests:
                // A new connection that sends nothing gets the header timeout, a keep-alive one the idle timeout.
                if elapsed >= (client.answered == 0 ? headerTicks : idleTicks) { expired.append((client, .close)) }
            case .head:
                if elapsed >= headerTicks { expired.append((client, .requestTimeout)) }
            case .body:
                break
            }
        }
        for (client, expiry) in expired {
            guard let connection = client.connection else { continue }
            switch expiry {
            case .close:
                evhttp_connection_free(connection)   // connectionClosed runs inside
            case .requestTimeout:
                refuse(client, HTTPRejection(status: .requestTimeout, message: "request header not received in time"))
            }
        }
    }
}
