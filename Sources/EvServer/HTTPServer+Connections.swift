import CEvent

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
            if !defaultHeaders.isEmpty { client.outputCallbackEntry = evbuffer_add_cb(output, onOutput, context) }
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
