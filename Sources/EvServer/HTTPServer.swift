// Over 500 lines on purpose: this is the evhttp layer, the one file of the HTTP server that calls evhttp and holds
// its pointers (requests, replies, connections, limits, refusals, callbacks; see the MARK sections). Split up, the
// C interop would spread over as many files as it has parts.

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
// This file is the server's evhttp layer: every call into evhttp and the socket calls of the request path (requests,
// replies, connections and their limits, refusals, evhttp's own answers, the C callbacks and their context
// pointers) are here and nowhere else, as the house keeps C interop in one thin layer per C library. Around it, in
// Swift values only: HTTPServerConfiguration, HTTPServer+Shutdown, HTTPServer+Observability, RequestWorkers,
// HTTPLimits; the listening sockets are in ListeningSockets.swift, the loop's C in Libevent.swift.
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
        } else if !Self.isFieldText(reason) {
            reason = HTTPStatus.standardReason(code)   // CR/LF in the status line would split the response, NUL cut it
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

    /// Whether `text` can be a header field's name or value, or a reason phrase, as it is: no CR, LF or NUL. Over a
    /// span of its UTF-8 (the view's generic search costs more than the text it looks at).
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
    private func recordRefusal(status: Int, bytes: Int, requestID: String?) {
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

// MARK: - The C callbacks

// The C callbacks of the HTTP server, and the context pointers they get: evhttp's (a request, a new connection's
// bufferevent, a connection closed, a reply written), each connection's buffers' (bytes read, bytes evhttp wrote on
// its own) and the server's two events (new connections to register, the timeouts sweep). Each one recovers its
// server or connection from the context and calls it. Every context is unretained: the server and its connections
// outlive the callbacks (see where each one is set).

// MARK: - Contexts

extension HTTPServer {
    /// The server as the context of its evhttp's and its events' callbacks (passUnretained: close() frees the evhttp
    /// and the events before the server goes, and deinit checks that it did).
    var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

extension ClientConnection {
    /// The connection as the context of its buffers' callbacks and of its reply's completion (passUnretained: the
    /// server keeps the connection until the callbacks are removed or have run).
    @inline(__always)
    var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

// MARK: - C callbacks

func onRequest(_ req: UnsafeMutablePointer<evhttp_request>?, _ context: UnsafeMutableRawPointer?) {
    guard let req, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().handle(req)
}

func onResponseWritten(_ req: UnsafeMutablePointer<evhttp_request>?, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    let client = Unmanaged<ClientConnection>.fromOpaque(context).takeUnretainedValue()
    client.server.responseWritten(client)
}

func onConnectionClose(_ connection: OpaquePointer?, _ context: UnsafeMutableRawPointer?) {
    guard let connection, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().connectionClosed(connection)
}

func onNewConnection(_ base: OpaquePointer?, _ context: UnsafeMutableRawPointer?) -> OpaquePointer? {
    guard let base, let context else { return nil }
    return Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().newBufferevent(base)
}

func onInput(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?,
                     _ context: UnsafeMutableRawPointer?) {
    // Drains (evhttp consuming what it parsed, or our own) need nothing.
    guard let info, info.pointee.n_added > 0, let context else { return }
    let client = Unmanaged<ClientConnection>.fromOpaque(context).takeUnretainedValue()
    client.server.input(client, added: info.pointee.n_added)
}

func onOutput(_ buffer: OpaquePointer?, _ info: UnsafePointer<evbuffer_cb_info>?,
                      _ context: UnsafeMutableRawPointer?) {
    // Drains (the bytes going out to the socket) need nothing.
    guard let info, info.pointee.n_added > 0, let context else { return }
    let client = Unmanaged<ClientConnection>.fromOpaque(context).takeUnretainedValue()
    client.server.evhttpWrote(client, added: info.pointee.n_added)
}

func onRegister(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().registerNewConnections()
}

func onSweep(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().sweep()
}
