import CEvent
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Shutting an `HTTPServer` down, on its loop thread: closing the listening socket (without resetting the connections
// the kernel has queued on it), answering with `Connection: close` from then on, waiting until the requests in flight
// are answered and their replies written, and freeing the evhttp with whatever is left.

extension HTTPServer {
    /// Requests answered and replies being written.
    var pendingCount: Int { inFlightCount + flushingCount }

    /// Closes the listening socket: new connections are refused (by the other loops' sockets too, once every loop
    /// has closed its own). Open connections are served as before.
    func closeListener() {
        loop.preconditionInLoop()
        if let http, let listener {
            evhttp_del_accept_socket(http, listener)   // frees the listener, which closes the socket
            self.listener = nil
        }
    }

    /// Closes the listening socket without losing the connections the kernel has already queued on it (closing
    /// resets them, with the request a client or a balancer has already sent): new connections are stopped at the
    /// kernel first (their SYNs are dropped, so clients retry and are refused once the socket is closed), the queue
    /// is accepted by the listener as usual, then the socket closes; `done` runs then, on the loop thread.
    func closeListenerAfterAcceptingQueued(_ done: @escaping () -> Void) {
        loop.preconditionInLoop()
        guard let listener else { return done() }
        let descriptor = evhttp_bound_socket_get_fd(listener)
        #if os(Linux)
        guard evserver_drop_new_connections(descriptor) == 0 else {
            closeListener()
            return done()
        }
        #endif
        var turns = 0
        func closeOnceAccepted() {
            // The listener accepts in the loop's next turns while the socket is readable; 100 ms at most.
            guard turns < 100, Self.hasQueuedConnection(descriptor) else {
                closeListener()
                return done()
            }
            turns += 1
            loop.schedule(after: .milliseconds(1)) { closeOnceAccepted() }
        }
        closeOnceAccepted()
    }

    private static func hasQueuedConnection(_ descriptor: Int32) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0 && entry.revents & Int16(POLLIN) != 0
    }

    /// From now on every reply carries `Connection: close`, so clients leave instead of sending more.
    func beginClosing() {
        loop.preconditionInLoop()
        closing = true
    }

    /// Calls `done(true)` once no request is in flight and every reply is written, or `done(false)` after
    /// `timeout`. Must be called on the loop thread, at most once at a time.
    func whenDrained(within timeout: Duration, _ done: @escaping (Bool) -> Void) {
        loop.preconditionInLoop()
        precondition(drainWaiter == nil, "whenDrained called twice")
        if pendingCount == 0 { return done(true) }
        drainWaiter = done
        drainTimer = loop.schedule(after: timeout) { [self] in finishDrain(false) }
    }

    func checkDrained() {
        if drainWaiter != nil && pendingCount == 0 { finishDrain(true) }
    }

    private func finishDrain(_ drained: Bool) {
        drainTimer?.cancel()
        drainTimer = nil
        let waiter = drainWaiter
        drainWaiter = nil
        waiter?(drained)
    }

    /// Frees the evhttp: closes every connection and forgets the requests still in flight (their replies become
    /// no-ops). Must be called on the loop thread; idempotent.
    func close() {
        closeListener()
        beginClosing()
        guard let http else { return }
        // Every connection gets its close callback (or is refused) before evhttp_free closes them all.
        registerNewConnections()
        // Requests libevent detached from their dead connection belong to nobody but us now; the others go with
        // their connection in evhttp_free.
        var unanswered = Array(unheldRequests.values)
        for client in connections.values {
            if let current = client.current { unanswered.append(current.request) }
            client.current = nil
            client.flushing = false
        }
        let detached = unanswered.filter { evhttp_request_get_connection($0) == nil }
        if inFlightCount > 0 { httpLogger.warning("closing with \(inFlightCount) request(s) unanswered") }
        unheldRequests.removeAll()
        inFlightCount = 0
        flushingCount = 0
        for req in detached { evhttp_request_free(req) }
        if let registerEvent { event_free(registerEvent) }
        if let sweepEvent { event_free(sweepEvent) }
        registerEvent = nil
        sweepEvent = nil
        self.http = nil
        evhttp_free(http)   // connectionClosed runs for each connection
        connections.removeAll()
        lastScanned = nil
        workers.close()
        finishDrain(false)
    }
}
