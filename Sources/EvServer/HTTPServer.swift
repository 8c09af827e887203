import CEvent
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// One `HTTPServer` per event loop: it owns an evhttp bound to its own listening socket, copies each request out of C
// memory into a `Request`, runs the application on a task that prefers the loop, and writes the `Response` back with
// evhttp_send_reply. This file holds the type, its state and its initializer; its jobs are in the files beside it:
// HTTPServer+Requests (a request's way in), +Replies, +Connections, +Limits (bytes and timeouts), +Refusals,
// +EvhttpAnswers (evhttp's own error pages), +Shutdown, and +Callbacks (the C callbacks and their context pointers).
// These files and ClientConnection.swift are the only ones that call evhttp.
//
// Some explanation is required here: the lifetime of an `evhttp_request` in libevent 2.1.12's http.c.
//
// - After evhttp_handle_request hands a request to our gencb (it sets `req->userdone = 0`), libevent keeps the
//   request until the user answers with evhttp_send_reply. While we have not answered, libevent 2.1.12 does not read
//   from the connection (checked: a pipelined request and a client that hangs up are only noticed once we reply).
// - If the connection fails while the user still holds the request (read EOF or timeout,
//   evhttp_connection_incoming_fail with `!req->userdone`), libevent unlinks the request from the connection, sets
//   `req->evcon = NULL`, frees the connection and leaves the request alive for the user. evhttp_send then sees
//   `evcon == NULL` and just frees the request. So replying late is always safe and always needed: every request
//   handed to us gets exactly one evhttp_send_reply, even when the client is long gone.
// - A reply to a client that has gone away fails in the write (or in the read evhttp keeps enabled while writing,
//   to notice the close): evhttp_connection_fail_ frees the connection and the request (userdone is 1 by then).
//   A second write after the peer's reset would raise SIGPIPE (evbuffer uses writev, not MSG_NOSIGNAL), so the
//   server ignores SIGPIPE, as libevent's sample http-server.c does.
// - The one place libevent frees a request we have not answered is evhttp_free (each connection takes its queued
//   requests with it), or evhttp_connection_free on its connection. We call the latter ourselves (idle and refused
//   connections, see HTTPServer+Connections.swift) only on a connection with no request in flight. Shutdown waits for
//   the in-flight requests first; when it gives up waiting, it forgets them (their tasks' late replies become
//   no-ops), frees the detached ones itself (no connection will), and only then calls evhttp_free. A handler still
//   awaiting work on the stopped loop then never resumes; what its task holds stays allocated: the price of
//   "stop anyway" after the timeout.
// - We never take ownership (evhttp_request_own): libevent's own rules above already free every request once.
//   We never touch a request after evhttp_send_reply: it may be freed inside the call.
// - For graceful shutdown we also want the replies on the wire, not just queued: evhttp_request_set_on_complete_cb
//   fires once the output is flushed; if the connection dies first, the connection's close callback fires instead.
//   A connection carries one request at a time, so "a reply is being written" is a flag of the connection.
//
// Before evhttp parses anything, each connection's bytes go through an `HTTPLimits.Scanner`
// (HTTPLimits+Scanner.swift), which enforces the limits and refuses ambiguous framing; see
// HTTPServer+Connections.swift for how the bytes get there.

/// Makes a write to a connection the peer has reset return EPIPE instead of killing the process.
let ignoreBrokenPipe: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

// MARK: - Server

/// The log of the HTTP server and the application (label `evserver.http`).
let httpLogger = Logger(label: "evserver.http")

/// One evhttp on one event loop. Created, used and closed on the loop thread.
// The request-path state of the server and of each connection is `@exclusivity(unchecked)`: it is read and written
// on the loop's thread only (every entry point runs there: libevent's callbacks and the replies), one access at a
// time, so the dynamic exclusivity checks (about 150 instructions each, several per request) could only ever pass.
final class HTTPServer: @unchecked Sendable {
    // @unchecked Sendable: the lets never change, and every var (the connections' state included) is read and written
    // only on `loop`'s thread: the initializer and the shutdown methods (`closeListener`, `beginClosing`,
    // `whenDrained`, `close`) run there (they check), and the C callbacks and the request tasks (executor preference
    // `loop`) run there too.

    typealias RequestPointer = UnsafeMutablePointer<evhttp_request>

    let loop: EventLoop
    let pipeline: RequestPipeline
    /// The tasks that run the requests (see RequestWorkers.swift).
    let workers = RequestWorkers<RequestJob>()
    let limits: HTTPLimits
    let maxConnections: Int
    /// ``HTTPServerConfiguration/defaultHeaders``.
    let defaultHeaders: DefaultHeaders
    var http: OpaquePointer?
    var listener: OpaquePointer?

    // Requests handed to the application and not answered yet. A connection carries one request at a time, so
    // each one is kept by its connection (`ClientConnection.current`); only the few that no open connection holds
    // are kept here, by id: those whose connection closed while the application worked (libevent detached them),
    // and those of a connection the server does not know. The ids keep a late reply from a task whose request
    // `close()` already gave up on from touching freed memory.
    @exclusivity(unchecked) var unheldRequests: [UInt: RequestPointer] = [:]
    /// All requests in flight: held by a connection or in `unheldRequests`.
    @exclusivity(unchecked) var inFlightCount = 0
    @exclusivity(unchecked) var nextID: UInt = 1
    /// Connections whose reply is queued but not yet written.
    @exclusivity(unchecked) var flushingCount = 0
    /// Set once shutdown begins: replies then carry `Connection: close`.
    var closing = false
    var drainWaiter: ((Bool) -> Void)?
    var drainTimer: ScheduledTimer?

    /// Open connections, by their evhttp_connection.
    @exclusivity(unchecked) var connections: [OpaquePointer: ClientConnection] = [:]
    /// The connection whose bytes were scanned last. evhttp parses a request right after our input callback has
    /// scanned its bytes, so this is nearly always the connection of the request `handle` gets, found without a
    /// lookup in `connections` (it is that connection only while its `connection` is the request's).
    @exclusivity(unchecked) var lastScanned: ClientConnection?
    /// Connections whose bufferevent evhttp has just taken; `registerNewConnections` learns their evhttp_connection.
    @exclusivity(unchecked) var unregistered: [ClientConnection] = []
    var registerEvent: OpaquePointer?
    var sweepEvent: OpaquePointer?
    /// The clock of the connection timeouts: sweeps since the server started. Coarse on purpose: reading it costs
    /// nothing on the request path.
    @exclusivity(unchecked) var tick = 0
    let idleTicks: Int
    let headerTicks: Int
    let lingerTicks: Int
    var lastCapacityWarning = -1
    /// The `Date` header of responses, and the second it names (see `currentDate()`).
    @exclusivity(unchecked) var dateSecond: time_t = -1
    @exclusivity(unchecked) var dateText = ""

    /// How long a refused connection keeps reading (and dropping) what the client still sends before it is closed:
    /// closing a socket with unread input sends a reset, which can destroy the answer before the client reads it.
    static let lingerTime: Duration = .seconds(2)

    /// Creates the evhttp and starts accepting on `descriptor`. Must be called on the loop thread.
    /// - Parameter descriptor: a listening socket; the server owns it from now on, also when this throws.
    init(loop: EventLoop, pipeline: RequestPipeline, configuration: HTTPServerConfiguration,
         descriptor: Int32) throws(HTTPServerError) {
        self.loop = loop
        self.pipeline = pipeline
        self.limits = configuration.limits
        self.maxConnections = max(1, configuration.maxConnections)
        self.defaultHeaders = configuration.defaultHeaders
        // Sweep often enough that a timeout fires at most a quarter late (and at most 1 s late).
        let shortest = min(configuration.headerTimeout, configuration.idleTimeout, Self.lingerTime)
        let interval = max(.milliseconds(10), min(.seconds(1), shortest / 4))
        func ticks(_ timeout: Duration) -> Int {
            // One tick more than the timeout spans: a deadline stamped just before a tick never fires early.
            Int((max(.zero, timeout) / interval).rounded(.up)) + 1
        }
        idleTicks = ticks(configuration.idleTimeout)
        headerTicks = ticks(configuration.headerTimeout)
        lingerTicks = ticks(Self.lingerTime)
        loop.preconditionInLoop()
        guard let http = loop.withUnsafeEventBase({ evhttp_new($0) }) else {
            ListeningSockets.close(descriptor)
            throw HTTPServerError(.systemFailure, "evhttp_new failed")
        }
        // Every method the router knows: anything else would be answered 501 by evhttp before reaching the router
        // (the router answers unknown paths 404 and known paths with a wrong method 405 + Allow).
        let methods = EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_POST.rawValue | EVHTTP_REQ_HEAD.rawValue
            | EVHTTP_REQ_PUT.rawValue | EVHTTP_REQ_DELETE.rawValue | EVHTTP_REQ_OPTIONS.rawValue
            | EVHTTP_REQ_PATCH.rawValue
        evhttp_set_allowed_methods(http, UInt16(methods))
        // The scanner enforces the limits first, with the right status; evhttp's own checks stay as a backstop. Its
        // header count excludes line ends, so twice our limit never fires before ours.
        let maxHeaderSize = limits.maxHeaderSize
        evhttp_set_max_headers_size(http, maxHeaderSize > Int.max / 4 ? -1 : maxHeaderSize * 2 + 1024)
        evhttp_set_max_body_size(http, limits.maxBodySize)
        var timeout = timeval(configuration.timeout)
        evhttp_set_timeout_tv(http, &timeout)
        // No `Content-Type: text/html; charset=ISO-8859-1` on responses that did not set one.
        evhttp_set_default_content_type(http, nil)
        // Should evhttp's 413 ever fire, it reads and discards the body first, so the client sees the answer.
        _ = evhttp_set_flags(http, EVHTTP_SERVER_LINGERING_CLOSE)
        // passUnretained: the server outlives its evhttp and its events (close() frees them, and deinit checks that
        // it did), so the callbacks never see a dead server.
        evhttp_set_gencb(http, onRequest, context)
        evhttp_set_bevcb(http, onNewConnection, context)
        let events = loop.withUnsafeEventBase { base in
            (event_new(base, -1, 0, onRegister, context), event_new(base, -1, Int16(EV_PERSIST), onSweep, context))
        }
        var period = timeval(interval)
        guard let registerEvent = events.0, let sweepEvent = events.1, event_add(sweepEvent, &period) == 0 else {
            if let event = events.0 { event_free(event) }
            if let event = events.1 { event_free(event) }
            evhttp_free(http)
            ListeningSockets.close(descriptor)
            throw HTTPServerError(.systemFailure, "event_new for the connection timers failed")
        }
        self.registerEvent = registerEvent
        self.sweepEvent = sweepEvent
        guard let bound = evhttp_accept_socket_with_handle(http, descriptor) else {
            event_free(registerEvent)
            event_free(sweepEvent)
            self.registerEvent = nil
            self.sweepEvent = nil
            evhttp_free(http)
            ListeningSockets.close(descriptor)
            throw HTTPServerError(.systemFailure, "evhttp_accept_socket_with_handle failed")
        }
        self.http = http
        self.listener = bound
    }

    deinit {
        precondition(http == nil, "HTTPServer released without close()")
    }

}
