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

// Part of the server's evhttp layer (see HTTPServer.swift): connections, their limits and timeouts, and evhttp's
// own answers.

// MARK: - Connections

// The connections of an `HTTPServer`: the bufferevent made for each one evhttp accepts (with the callbacks that feed
// the scanner), its registration once evhttp has made its evhttp_connection, and its end.
//
// Some explanation is required here too (after the top of HTTPServer.swift): how each connection's bytes reach the
// scanner before evhttp.
//
// - evhttp_set_bevcb lets us create each connection's bufferevent. evhttp owns its callbacks (it resets them
//   with bufferevent_setcb), but not the callbacks of its input evbuffer: evbuffer_add_cb adds ours. The
//   bufferevent's read handler calls evbuffer_read, which runs the evbuffer callbacks as soon as it has added
//   the bytes; only then does it call evhttp's read callback. So every byte is scanned before evhttp parses it,
//   with no copy (evbuffer_peek) and no extra system call. The callback also runs for every drain (evhttp
//   consumes the head line by line); those calls return at once.
// - The bevcb runs before evhttp has created its evhttp_connection, so the connection is registered a moment
//   later, from an event activated in the bevcb: in the same loop iteration, before any byte can be read.
//   bufferevent_getcb then yields the evhttp_connection (evhttp's callback argument), and we set its close
//   callback, which fires when evhttp frees it (also from evhttp_free). A reference we hold on the bufferevent
//   until then keeps it valid should evhttp free it first (its callbacks are cleared then: we check).
// - A refused request is answered by writing straight to the socket, not through the bufferevent: at that point
//   the previous response has been flushed (evhttp reads a request only after the previous one is written), so
//   nothing can interleave, and evhttp's write callback (which would run evhttp_send_done for a request nobody
//   answered) is never triggered. Then we drain the input, so evhttp parses nothing more, shut down our sending
//   side (the client sees the end of the answer), and drop whatever the client still sends until it closes, or
//   until `lingerTime` passes and we free the connection.
// - A request can be refused only once evhttp has answered everything before it (`answered` catches up with the
//   scanner's `completedRequests`); until then the refusal waits (`pendingFailure`), and so do the timeouts.
// - Timeouts are checked by a periodic sweep over the connections, so the request path only stores a tick.
//   evhttp's own read/write timeout (`timeout`) still covers bodies and responses in transit.
// - evhttp still answers a few requests by itself, with evhttp_send_error's HTML page: a request target its URI
//   parser refuses (`//host:port` with a bad port, say), which the scanner lets through. So that such an answer
//   carries the default header fields too, a callback on the output buffer (when there are default fields)
//   watches what evhttp writes there, switched off while evhttp writes one of our replies: whatever it sees is
//   evhttp's own. The first thing evhttp writes is the status line, in one piece; the fields go right after it.

extension HTTPServer {
    /// The bufferevent for a connection evhttp is accepting (evhttp_set_bevcb).
    func newBufferevent(_ base: OpaquePointer) -> OpaquePointer? {
        loop.preconditionInLoop()
        // Without one evhttp makes its own bufferevent; that connection then goes unchecked, but only when
        // memory has run out.
        guard let bufferevent = bufferevent_socket_new(base, -1, 0), let input = bufferevent_get_input(bufferevent),
              let output = bufferevent_get_output(bufferevent)
        else { return nil }
        let overCapacity = connections.count + unregistered.count >= maxConnections
        let client = ClientConnection(server: self, bufferevent: bufferevent, input: input, output: output,
                                      limits: limits, since: tick, overCapacity: overCapacity)
        bufferevent_incref(bufferevent)   // dropped in registerNewConnections
        if !overCapacity {
            // passUnretained: the client is in `unregistered`, then `connections`, until `detach` removes these
            // callbacks.
            let context = client.context
            client.callbackEntry = evbuffer_add_cb(input, onInput, context)
            if !defaultHeaders.isEmpty || requestIDs != nil {
                client.outputCallbackEntry = evbuffer_add_cb(output, onOutput, context)
            }
        }
        unregistered.append(client)
        if unregistered.count == 1, let registerEvent { event_active(registerEvent, 0, 0) }
        return bufferevent
    }

    /// Learns the evhttp_connection of each new bufferevent, and refuses the connections over the limit.
    func registerNewConnections() {
        loop.preconditionInLoop()
        guard !unregistered.isEmpty else { return }
        let batch = unregistered
        unregistered.removeAll(keepingCapacity: true)
        for client in batch {
            var argument: UnsafeMutableRawPointer?
            bufferevent_getcb(client.bufferevent, nil, nil, nil, &argument)
            if let argument {
                let connection = OpaquePointer(argument)
                if client.overCapacity {
                    refuseOverCapacity(client, connection)
                } else {
                    client.connection = connection
                    connections[connection] = client
                    metrics.connections.increment()
                    evhttp_connection_set_closecb(connection, onConnectionClose, context)
                }
            } else {
                detach(client)   // evhttp has already freed it
            }
            bufferevent_decref(client.bufferevent)
        }
    }

    func connectionClosed(_ connection: OpaquePointer) {
        loop.preconditionInLoop()
        guard let client = connections.removeValue(forKey: connection) else { return }
        metrics.connections.decrement()
        client.connection = nil
        detach(client)
        // Its request, if the application still works on it, lives on detached (see the top of HTTPServer.swift); the
        // server keeps it until the late reply, or until close() frees it.
        if let current = client.current {
            client.current = nil
            unheldRequests[current.id] = current.request
        }
        // A reply still queued on a closing connection will never be written: stop waiting for it.
        if client.flushing {
            client.flushing = false
            flushingCount -= 1
            checkDrained()
        }
    }

    func detach(_ client: ClientConnection) {
        if let entry = client.callbackEntry {
            evbuffer_remove_cb_entry(client.input, entry)
            client.callbackEntry = nil
        }
        if let entry = client.outputCallbackEntry {
            evbuffer_remove_cb_entry(client.output, entry)
            client.outputCallbackEntry = nil
        }
    }

    /// Open connections, including those not registered yet (for tests).
    var connectionCount: Int { connections.count + unregistered.count }
}

// MARK: - Limits and timeouts

// The limits of each connection, in bytes and in time: `input` hands the bytes evhttp is about to parse to the
// connection's scanner (HTTPLimits+Scanner.swift) and refuses a request the scanner fails; `sweep`, every tick,
// closes idle connections, answers slow request heads 408 and ends refused connections that have lingered long
// enough. How the bytes get here: the top of "Connections" in this file.

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

// MARK: - evhttp's own answers

// The watch on the answers evhttp sends by itself (evhttp_send_error's pages, for a request its parser refuses after
// the scanner let it through), so that they carry the default header fields too. See the last point at the top of
// "Connections" in this file.

extension HTTPServer {
    /// evhttp has just written `added` bytes to `client`'s output on its own: the server's replies switch this watch
    /// off while evhttp writes them (see the top of "Connections" in this file). A final answer (an error page)
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
        let requestID = requestIDs.map { _ in requestIDGenerator.next() }
        let fields = defaultFieldLines(skipping: Self.evhttpErrorPageFields) + requestIDLine(requestID)
        _ = fields.withCString { evbuffer_add(output, $0, fields.utf8.count) }
        if let status = Self.statusCode(ofStatusLineStart: start) {
            recordRefusal(status: status, bytes: 0, requestID: requestID)
        }
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

    /// The three-digit status code from the start of a status line, or nil.
    static func statusCode(ofStatusLineStart bytes: [UInt8]) -> Int? {
        guard let space = bytes.firstIndex(of: 32), space + 3 < bytes.count else { return nil }
        let digits = bytes[(space + 1)...(space + 3)]
        guard digits.allSatisfy({ (48...57).contains($0) }) else { return nil }
        return digits.reduce(0) { $0 * 10 + Int($1 - 48) }
    }
}
