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

// One `HTTPServer` per event loop: it owns an evhttp bound to its own listening socket, copies each request out of C
// memory into a `Request`, runs the application on a task that prefers the loop, and writes the `Response` back with
// evhttp_send_reply.
//
// The server's evhttp layer is this file (the server and a request's way in) and its siblings: HTTPServer+Replies
// (a response's way out), HTTPServer+Connections (connections, their limits and timeouts, evhttp's own answers),
// HTTPServer+Refusals (answers written straight to the socket), ClientConnection (one connection's state) and
// HTTPServer+Callbacks (the C callbacks and their context pointers). Every call into evhttp and the socket calls of
// the request path are in these files and nowhere else, as the house keeps C interop in one thin layer per C
// library. Around them, in Swift values only: HTTPServerConfiguration, HTTPServer+Shutdown, HTTPServer+Observability,
// RequestWorkers, HTTPLimits; the listening sockets are in ListeningSockets.swift, the loop's C in Libevent.swift.
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
//   connections, see "Connections" below) only on a connection with no request in flight. Shutdown waits for
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
// "Connections" below for how the bytes get there.

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
    /// ``HTTPServerConfiguration/requestIDs``.
    let requestIDs: RequestIDConfiguration?
    /// ``HTTPServerConfiguration/trustedProxies``.
    let trustedProxies: TrustedProxies
    /// ``HTTPServerConfiguration/accessLog``.
    let accessLog: Bool
    /// The tracer of the request spans; nil without one (then no span is made).
    let tracer: (any Tracer)?
    /// The request metrics of this loop (HTTPServer+Observability.swift).
    let metrics: HTTPServerMetrics
    @exclusivity(unchecked) var requestIDGenerator = RequestIDGenerator()
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
         metricsFactory: any MetricsFactory, tracer: (any Tracer)?, descriptor: Int32) throws(HTTPServerError) {
        self.loop = loop
        self.pipeline = pipeline
        self.limits = configuration.limits
        self.maxConnections = max(1, configuration.maxConnections)
        self.defaultHeaders = configuration.defaultHeaders
        self.requestIDs = configuration.requestIDs
        self.accessLog = configuration.accessLog
        self.trustedProxies = configuration.trustedProxies
        self.tracer = tracer
        self.metrics = HTTPServerMetrics(factory: metricsFactory)
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

// MARK: - Requests

// A request's way in: evhttp hands the server a parsed request (`handle`), which keeps the evhttp request until the
// reply (with its connection, or in `unheldRequests`), copies it out of C memory into a `Request`, and gives it to a
// worker task that prefers the loop (RequestWorkers.swift). The worker runs the application and hands the `Response`
// to `reply` (see "Replies").

extension HTTPServer {
    func handle(_ req: RequestPointer) {
        loop.preconditionInLoop()
        let id = nextID
        nextID = nextID == .max ? 1 : nextID + 1
        let connection = evhttp_request_get_connection(req)
        var client: ClientConnection?
        if let connection {
            if let last = lastScanned, last.connection == connection {
                client = last
            } else {
                client = connections[connection]
            }
            if client == nil && !unregistered.isEmpty {
                registerNewConnections()
                client = connections[connection]
            }
        }
        inFlightCount += 1
        if let client, client.current == nil {
            client.current = (id, req)
        } else {
            unheldRequests[id] = req
        }
        client?.inFlight += 1
        let head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD
        let request = makeRequest(req, connection: connection, client: client)
        if let requestIDs {
            request.id = requestID(of: request, field: requestIDs.headerName)
        }
        let job = RequestJob(request: request, id: id, client: client, head: head, start: HTTPServerMetrics.now())
        workers.run(job) { job in
            Task(executorPreference: loop) { [self] in await work(startingWith: job) }
        }
    }

    /// A worker's life: the request it was started for, then each one the server hands it while it waits, until
    /// the workers close (see RequestWorkers.swift).
    @inline(__always)   // into the worker task's closure: one async function entered fewer per request
    private func work(startingWith first: RequestJob) async {
        var job = first
        while true {
            let response: Response
            if let tracer {
                response = await respondTraced(to: job.request, tracer: tracer)
            } else if let requestID = job.request.id {
                response = await respond(to: job.request, id: requestID)
            } else {
                response = await pipeline.respond(to: job.request)
            }
            // Nonisolated code of a task that prefers the loop runs on the loop, so this is the common path.
            if loop.inLoop {
                reply(to: job, response)
            } else {
                let box = ResponseBox(job: job, response: response)
                loop.execute { [self] in reply(to: box.job, box.response) }
            }
            guard let next = await workers.next() else { return }
            job = next
        }
    }

    private func makeRequest(_ req: RequestPointer, connection: OpaquePointer?, client: ClientConnection?)
        -> sending Request
    {
        let method: HTTPMethod = switch evhttp_request_get_command(req) {
        case EVHTTP_REQ_GET: .get
        case EVHTTP_REQ_POST: .post
        case EVHTTP_REQ_HEAD: .head
        case EVHTTP_REQ_PUT: .put
        case EVHTTP_REQ_DELETE: .delete
        case EVHTTP_REQ_OPTIONS: .options
        case EVHTTP_REQ_PATCH: .patch
        case EVHTTP_REQ_TRACE: HTTPMethod(rawValue: "TRACE")
        case EVHTTP_REQ_CONNECT: HTTPMethod(rawValue: "CONNECT")
        default: HTTPMethod(rawValue: "UNKNOWN")
        }
        // String(cString:) repairs invalid UTF-8, so no byte sequence a client sends can trap here.
        let uri = evhttp_request_get_uri(req).map { String(cString: $0) } ?? "/"
        var fields: [(name: String, value: String)] = []
        fields.reserveCapacity(8)   // one allocation for a typical request's headers
        if let headers = evhttp_request_get_input_headers(req) {
            var item = headers.pointee.tqh_first
            while let field = item {
                if let key = field.pointee.key, let value = field.pointee.value {
                    fields.append((name: String(cString: key), value: String(cString: value)))
                }
                item = field.pointee.next.tqe_next
            }
        }
        var body: [UInt8] = []
        if let input = evhttp_request_get_input_buffer(req) {
            let length = evbuffer_get_length(input)
            if length > 0 {
                body = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                    count = max(0, evbuffer_copyout(input, buffer.baseAddress, length))
                }
            }
        }
        // The peer of a connection does not change: read it once per connection, not once per request.
        var remoteAddress = client?.remoteAddress ?? ""
        if client?.remoteAddress == nil, let connection {
            var host: UnsafeMutablePointer<CChar>?
            var port: UInt16 = 0
            evhttp_connection_get_peer(connection, &host, &port)
            if let host { remoteAddress = String(cString: host) }
            client?.remoteAddress = remoteAddress
        }
        return Request(method: method, uri: uri, headers: HTTPHeaders(fields: fields), body: body,
                       remoteAddress: remoteAddress, loop: loop)
    }
}

/// One request on its way to a worker: the request, its id, its connection (which keeps the evhttp request until
/// the reply, see `HTTPServer.unheldRequests`), whether it is a HEAD request, and when it arrived (for its
/// duration in the metrics and the access log).
struct RequestJob {
    let request: Request
    let id: UInt
    let client: ClientConnection?
    let head: Bool
    /// `HTTPServerMetrics.now()` when the request arrived.
    let start: Int64
}

/// Carries a finished response to the loop thread in the (unexpected) case the task ended elsewhere.
private struct ResponseBox: @unchecked Sendable {
    // @unchecked Sendable: the task that built the response hands it and its job over and never touches them again.
    let job: RequestJob
    let response: Response
}
