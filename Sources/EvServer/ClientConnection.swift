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

// Part of the server's evhttp layer (see HTTPServer.swift): one connection's state.

// MARK: - ClientConnection

// `ClientConnection`: what an `HTTPServer` keeps of one client connection (its buffers, the scanner of its bytes, its
// request in flight, its timeout stamp); how it comes and goes is under "Connections" in this file.

/// What the server knows about one client connection: from the moment evhttp asks for its bufferevent until evhttp
/// frees it (or the server refuses it).
final class ClientConnection: @unchecked Sendable {
    // @unchecked Sendable: like the server's, its vars are read and written only on the server's loop thread (by
    // the server's callbacks, and by the request tasks, which prefer the loop, when they reply). A request's job
    // carries it to the task only to hand it back to `reply`.
    // unowned(unsafe): the server frees every connection (evhttp_free in close(), which its deinit checks) before
    // it goes, and a request's job that still holds a connection after that belongs to a task that holds the server
    // too, so a connection never outlives it; no reference counting on the per-request path.
    unowned(unsafe) let server: HTTPServer
    let bufferevent: OpaquePointer
    /// The bufferevent's input buffer, where evhttp parses requests from.
    let input: OpaquePointer
    /// The bufferevent's output buffer, where evhttp writes responses.
    let output: OpaquePointer
    /// evhttp's connection object, once registered; nil again once evhttp has freed it.
    @exclusivity(unchecked) var connection: OpaquePointer?
    var callbackEntry: OpaquePointer?
    /// The watch on ``output`` for what evhttp writes on its own (only with default header fields).
    var outputCallbackEntry: OpaquePointer?
    @exclusivity(unchecked) var scanner: HTTPLimits.Scanner
    /// Requests whose response has been written (the scanner counts the ones received).
    @exclusivity(unchecked) var answered = 0
    /// Requests handed to the application and not answered yet.
    @exclusivity(unchecked) var inFlight = 0
    /// The request in flight and its id, while the server keeps it here (see `HTTPServer.unheldRequests`).
    @exclusivity(unchecked) var current: (id: UInt, request: HTTPServer.RequestPointer)?
    /// The tick the current timeout counts from: the connection's start, the end of the last response, or the first
    /// byte of the current head.
    @exclusivity(unchecked) var since: Int
    /// The request (by the scanner's count) whose first head byte `since` marks.
    @exclusivity(unchecked) var stampedRequest = 0
    /// A refusal waiting for the requests pipelined before it to be answered.
    var pendingFailure: HTTPLimits.Scanner.Failure?
    /// Refused: the answer is sent and incoming bytes are dropped until the connection closes.
    var lingering = false
    /// A response is queued and not yet written.
    @exclusivity(unchecked) var flushing = false
    /// Accepted past `maxConnections`: refused as soon as it is registered.
    let overCapacity: Bool
    /// The peer's address, once a request has asked for it.
    @exclusivity(unchecked) var remoteAddress: String?

    /// Whether evhttp is reading the next request: every earlier one is answered and written. Only then may the
    /// server answer on its own (or time the client out): nothing else is being written, and no request the
    /// application holds goes with the connection.
    var isWaitingForRequest: Bool {
        inFlight == 0 && !flushing && answered >= scanner.completedRequests
    }

    init(server: HTTPServer, bufferevent: OpaquePointer, input: OpaquePointer, output: OpaquePointer,
         limits: HTTPLimits, since: Int, overCapacity: Bool) {
        self.server = server
        self.bufferevent = bufferevent
        self.input = input
        self.output = output
        self.scanner = HTTPLimits.Scanner(limits: limits)
        self.since = since
        self.overCapacity = overCapacity
    }

    /// Switches the watch on what evhttp writes on its own (see `HTTPServer.evhttpWrote`) on or off.
    @inline(__always)
    func watchesOwnAnswers(_ on: Bool) {
        guard let entry = outputCallbackEntry else { return }
        let enabled = UInt32(EVBUFFER_CB_ENABLED)
        _ = on ? evbuffer_cb_set_flags(output, entry, enabled) : evbuffer_cb_clear_flags(output, entry, enabled)
    }
}
