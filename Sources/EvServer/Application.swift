import CoreMetrics
import Dispatch
import Logging
import Synchronization
import Tracing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The express-like front: `app.use(...)`, `app.get(...)`, `app.listen(...)`. Configuration happens before start;
// starting freezes it into a `RequestPipeline` that every loop shares without locking.

// MARK: - Application

/// An HTTP application: middleware, routes, and the servers that run them.
///
/// ```swift
/// let app = Application()
/// app.use { request, response, next in
///     try await next()
///     response.headers.replace("Cache-Control", "no-store")
/// }
/// app.get("/users/:id") { request, response in
///     response.send(json: #"{"id":"\#(request.parameters["id"]!)"}"#)
/// }
/// try app.listen(port: 3000)
/// ```
///
/// Configure (``use(_:)-(Middleware)``, ``get(_:_:)``, …) before the first ``start(host:port:threads:)``; after
/// that the configuration is frozen.
public final class Application: Sendable {
    /// The server limits used by ``start(host:port:threads:)``.
    public let configuration: HTTPServerConfiguration
    /// Where the server's request metrics go (see "Operating it" in the README for their names).
    public let metricsFactory: any MetricsFactory
    /// The logger of errors out of handlers (the 500 line, with the request's route and id).
    public let logger: Logger
    /// The tracer of the request spans, nil for none (then the request path makes no span and reads no trace
    /// context).
    public let tracer: (any Tracer)?

    private struct State: Sendable {
        var middleware: [any Middleware] = []
        var router = Router()
        var pipeline: RequestPipeline?
        var started = false
        var servers: [RunningServer] = []
    }

    private let state = Mutex(State())
    /// The servers started so far, for ``isShuttingDown`` (only ever locked briefly, never while waiting).
    private let startedServers = Mutex<[RunningServer]>([])

    /// Creates an application.
    /// - Parameters:
    ///   - configuration: server limits and timeouts, the header fields every response carries
    ///     (``HTTPServerConfiguration/defaultHeaders``), request ids and the access log.
    ///   - metricsFactory: the swift-metrics backend of the server's request metrics; by default the one
    ///     `MetricsSystem.bootstrap` installed when the application is created (none: they cost a call that does
    ///     nothing).
    ///   - logger: where errors out of handlers are logged (default: label `evserver.http`).
    ///   - tracer: the tracer of a span per request; by default the one `InstrumentationSystem.bootstrap`
    ///     installed when the application is created, and none when nothing was bootstrapped.
    public init(configuration: HTTPServerConfiguration = .init(),
                metricsFactory: (any MetricsFactory)? = nil, logger: Logger? = nil, tracer: (any Tracer)? = nil) {
        self.configuration = configuration
        self.metricsFactory = metricsFactory ?? MetricsSystem.factory
        self.logger = logger ?? httpLogger
        let bootstrapped = InstrumentationSystem.tracer
        self.tracer = tracer ?? (bootstrapped is NoOpTracer ? nil : bootstrapped)
    }

    // MARK: Middleware

    /// Adds a middleware; middleware runs in the order added, around the router.
    public func use(_ middleware: some Middleware) {
        configure { $0.middleware.append(middleware) }
    }

    /// Adds a middleware written as a closure, like express's `app.use((req, res, next) => …)`.
    ///
    /// The closure calls `try await next()` to run the rest of the chain and may act before and after it.
    public func use(_ body: @escaping @Sendable (Request, Response, Next) async throws -> Void) {
        use(ClosureMiddleware(body: body))
    }

    // MARK: Routes

    /// Registers a GET route (it also answers HEAD).
    public func get(_ path: String, _ handler: @escaping Handler) { on(.get, path, handler) }
    /// Registers a POST route.
    public func post(_ path: String, _ handler: @escaping Handler) { on(.post, path, handler) }
    /// Registers a PUT route.
    public func put(_ path: String, _ handler: @escaping Handler) { on(.put, path, handler) }
    /// Registers a PATCH route.
    public func patch(_ path: String, _ handler: @escaping Handler) { on(.patch, path, handler) }
    /// Registers a DELETE route.
    public func delete(_ path: String, _ handler: @escaping Handler) { on(.delete, path, handler) }
    /// Registers a HEAD route (without one, HEAD uses the GET route).
    public func head(_ path: String, _ handler: @escaping Handler) { on(.head, path, handler) }

    /// Registers a route for any method. See ``Router/on(_:_:_:)`` for the pattern syntax.
    public func on(_ method: HTTPMethod, _ path: String, _ handler: @escaping Handler) {
        configure { $0.router.on(method, path, handler) }
    }

    private func configure(_ change: (inout State) -> Void) {
        state.withLock { state in
            precondition(!state.started, "configure the Application before start()")
            change(&state)
            state.pipeline = nil
        }
    }

    private func pipeline() -> RequestPipeline {
        state.withLock { state in
            if let pipeline = state.pipeline { return pipeline }
            let pipeline = RequestPipeline(middleware: state.middleware, router: state.router, logger: logger)
            state.pipeline = pipeline
            return pipeline
        }
    }

    // MARK: Responding

    /// Runs `request` through the middleware and the router and returns the response to send.
    ///
    /// Errors never escape: an ``HTTPError`` becomes its status with a `{"error":"<message>"}` JSON body and its
    /// headers; any other error becomes a 500 `{"error":"Internal Server Error"}` and is logged. Headers set before
    /// the error (a `Set-Cookie`, say) are kept. This is what the server calls for every request, and what tests
    /// call without a socket.
    public func respond(to request: Request) async -> Response {
        await pipeline().respond(to: request)
    }

    // MARK: Serving

    /// Starts serving on `host:port` and returns at once; each thread runs its own event loop.
    ///
    /// - Parameters:
    ///   - host: the address to bind (`127.0.0.1`, `0.0.0.0`, `::`, or a name that resolves).
    ///   - port: the port; 0 picks a free one (read it back from ``RunningServer/port``).
    ///   - threads: the number of event loops, each with its own listening socket on the same port.
    /// - Returns: the running server; the application also keeps it, for ``shutdown(timeout:)``.
    /// - Throws: ``HTTPServerError`` when the address is taken or invalid, or the system refuses.
    @discardableResult
    public func start(host: String = "127.0.0.1", port: Int = 3000, threads: Int = 1) throws -> RunningServer {
        let pipeline = pipeline()
        let configuration = self.configuration
        // Created under the lock: the server answers requests as soon as its loops run, and a shutdown() called
        // from then on must find it in `servers` (it waits for the lock), or it would return with the server left
        // running.
        return try state.withLock { state throws(HTTPServerError) -> RunningServer in
            let server = try RunningServer(host: host, port: port, threads: threads, configuration: configuration,
                                           metricsFactory: metricsFactory, tracer: tracer, pipeline: pipeline)
            state.started = true
            state.servers.append(server)
            startedServers.withLock { $0.append(server) }
            return server
        }
    }

    /// One event loop per core: the default of ``listen(host:port:threads:)`` and of the `evserver` binary.
    public static var defaultThreadCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Serves on `host:port` until the server is shut down, like express's `app.listen`.
    ///
    /// The defaults: `127.0.0.1` (this machine only: pass `"0.0.0.0"` or `"::"` to serve others, as in a container
    /// behind a balancer), port 3000, and one event loop per core (``defaultThreadCount``), as `evserver` runs; each
    /// loop accepts on its own `SO_REUSEPORT` socket and keeps its own Redis connections.
    ///
    /// SIGINT and SIGTERM shut the server down gracefully (in-flight requests are answered), then this returns.
    /// Another task can also end it with ``shutdown(timeout:)``.
    /// - Throws: ``HTTPServerError`` when the server cannot start.
    public func listen(host: String = "127.0.0.1", port: Int = 3000,
                       threads: Int = Application.defaultThreadCount) throws {
        let server = try start(host: host, port: port, threads: threads)
        let signals = announceAndHandleSignals(server, host: host, threads: threads)
        server.wait()
        stopHandlingSignals(signals)
    }

    /// Serves on `host:port` until the server is shut down, like ``listen(host:port:threads:)`` (same defaults),
    /// but suspends instead of blocking the calling thread: use it from async code (an `AsyncParsableCommand`'s
    /// `run`), where a blocked thread would be one fewer for the concurrency pool, which the shutdown itself needs.
    /// - Throws: ``HTTPServerError`` when the server cannot start.
    public func listen(host: String = "127.0.0.1", port: Int = 3000,
                       threads: Int = Application.defaultThreadCount) async throws {
        let server = try start(host: host, port: port, threads: threads)
        let signals = announceAndHandleSignals(server, host: host, threads: threads)
        await server.waitUntilStopped()
        stopHandlingSignals(signals)
    }

    private func announceAndHandleSignals(_ server: RunningServer, host: String, threads: Int)
        -> [any DispatchSourceSignal]
    {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        httpLogger.info("listening on http://\(shownHost):\(server.port) with \(threads) loop(s)")
        return [SIGINT, SIGTERM].map { number in
            // Dispatch delivers the signal on a queue; the default action (exit at once) must be off first.
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                httpLogger.info("signal \(number): shutting down")
                Task { await server.shutdown() }
            }
            source.resume()
            return source
        }
    }

    private func stopHandlingSignals(_ signals: [any DispatchSourceSignal]) {
        for source in signals { source.cancel() }
        for number in [SIGINT, SIGTERM] { signal(number, SIG_DFL) }
    }

    /// Whether a server this application started is shutting down (for a readiness check that must fail as soon
    /// as draining begins, so load balancers stop sending new requests).
    public var isShuttingDown: Bool {
        // Not `state`: start() holds that lock while its loops already serve requests, and a readiness handler
        // asking this from a loop would wait for start() while start() waits for the loop.
        startedServers.withLock { $0.contains { $0.isShuttingDown } }
    }

    /// Shuts down every server this application started (see ``RunningServer/shutdown(timeout:)``).
    public func shutdown(timeout: Duration? = nil) async {
        let servers = state.withLock { $0.servers }
        await withTaskGroup(of: Void.self) { group in
            for server in servers { group.addTask { await server.shutdown(timeout: timeout) } }
        }
    }
}

// MARK: - Pipeline

/// The frozen middleware chain and router. Immutable, so every loop runs it without locks.
@usableFromInline
final class RequestPipeline: Sendable {
    @usableFromInline let middleware: [any Middleware]
    @usableFromInline let router: Router
    let logger: Logger

    init(middleware: [any Middleware], router: Router, logger: Logger) {
        self.middleware = middleware
        self.router = router
        self.logger = logger
    }

    @inline(__always)   // (one executor check fewer per request, as for `run`)
    func respond(to request: Request) async -> Response {
        let response = Response()
        do {
            try await run(0, request, response)
        } catch {
            render(error, for: request, into: response)
        }
        return response
    }

    /// Runs the chain from middleware `index` on (past the last one: the router).
    @inlinable @inline(__always)
    func run(_ index: Int, _ request: Request, _ response: Response) async throws {
        guard index < middleware.count else { return try await router.handle(request, response) }
        try await middleware[index].handle(request, response, next: Next(self, from: index + 1, request, response))
    }

    /// The 400 message for an error that means bad input: JSON that does not parse (`JSONParseError`), or a value
    /// that does not decode into the type asked for (`DecodingError`, e.g. from `JSONValue.decode(as:)` or
    /// `Session.value(_:as:)`); nil for any other error.
    static func badInputMessage(_ error: any Error) -> String? {
        if let error = error as? JSONParseError { return error.description }
        guard let error = error as? DecodingError else { return nil }
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return keys.isEmpty ? "the value" : "value at \(keys.hasPrefix(".") ? String(keys.dropFirst()) : keys)"
        }
        return switch error {
        case .typeMismatch(let type, let context): "\(path(context)): expected \(type)"
        case .valueNotFound(let type, let context): "\(path(context)): expected \(type), found null"
        case .keyNotFound(let key, let context): "\(path(context)): missing key \"\(key.stringValue)\""
        case .dataCorrupted(let context): "\(path(context)): \(context.debugDescription)"
        @unknown default: "a value does not have the expected shape"
        }
    }

    private func render(_ error: any Error, for request: Request, into response: Response) {
        if let error = error as? HTTPError {
            response.status = error.status
            // The error's headers win over same-named ones already set (an `Allow`, say), except Set-Cookie,
            // which accumulates.
            for field in error.headers where !field.name.asciiCaseInsensitiveEquals("Set-Cookie") {
                response.headers.remove(field.name)
            }
            for field in error.headers { response.headers.add(field.name, field.value) }
            Self.sendError(error.message, for: request, into: response)
        } else if let message = Self.badInputMessage(error) {
            // Input the client sent that does not parse or decode is the client's error, as Express's body parser
            // answers it: 400 with what was wrong (the reason and where, never the input itself).
            response.status = .badRequest
            Self.sendError(message, for: request, into: response)
        } else {
            // The request id explicitly too: a logger bootstrapped without RequestID.metadataProvider still gets it.
            var metadata: Logger.Metadata = ["route": "\(request.route ?? "-")"]
            if let id = request.id { metadata["request_id"] = .string(id) }
            logger.error("unhandled error answering \(request.method) \(request.path): \(String(reflecting: error))",
                             metadata: metadata)
            response.status = .internalServerError
            Self.sendError("Internal Server Error", for: request, into: response)
        }
    }

    /// An error body in the form the client asked for: a small HTML page when its `Accept` lists `text/html` (a
    /// browser navigating), else JSON, `{"error":"<message>"}` (API clients, curl, `*/*`).
    static func sendError(_ message: String, for request: Request, into response: Response) {
        guard let accept = request.headers["Accept"], accept.utf8.count >= 9, accept.contains("text/html") else {
            return response.send(json: #"{"error":\#(jsonQuoted(message))}"#)
        }
        let title = "\(response.status.code) \(response.status.reason)"
        let page = "<!doctype html><html><head><meta charset=\"utf-8\"><title>\(htmlEscaped(title))</title></head>"
            + "<body><h1>\(htmlEscaped(title))</h1><p>\(htmlEscaped(message))</p></body></html>"
        response.headers.replace("Content-Type", "text/html; charset=utf-8")
        response.body = Array(page.utf8)
    }
}

/// `text` with the five HTML special characters escaped.
func htmlEscaped(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for character in text.unicodeScalars {
        switch character {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(character)
        }
    }
    return out
}

private struct ClosureMiddleware: Middleware {
    let body: @Sendable (Request, Response, Next) async throws -> Void
    func handle(_ request: Request, _ response: Response, next: Next) async throws {
        try await body(request, response, next)
    }
}

/// `text` as a JSON string literal, quotes included (RFC 8259 section 7).
func jsonQuoted(_ text: String) -> String {
    var out = [UInt8]()
    out.reserveCapacity(text.utf8.count + 2)
    out.append(34)
    for byte in text.utf8 {
        switch byte {
        case 34: out += [92, 34]           // \"
        case 92: out += [92, 92]           // \\
        case 10: out += [92, 110]          // \n
        case 13: out += [92, 114]          // \r
        case 9: out += [92, 116]           // \t
        case 0..<32:
            let hex = Array("0123456789abcdef".utf8)
            out += [92, 117, 48, 48, hex[Int(byte >> 4)], hex[Int(byte & 15)]]   // \u00XX
        default: out.append(byte)
        }
    }
    out.append(34)
    return String(decoding: out, as: UTF8.self)
}

// MARK: - Running server

/// A started server: its port, its loops, and the way to stop it.
public final class RunningServer: Sendable {
    /// The port the server listens on (the one picked by the system when started with port 0).
    public let port: Int
    /// The event loops serving requests, one per thread.
    public let loops: [EventLoop]

    private let threads: [EventLoopThread]
    private let servers: [HTTPServer]
    /// ``HTTPServerConfiguration/shutdownTimeout``.
    private let shutdownTimeout: Duration
    /// How long connections stay open once nothing is in flight: a client that sent its next request on a kept-alive
    /// connection just as the last reply left gets it answered (with `Connection: close`), not cut off.
    static let shutdownGrace = Duration.milliseconds(200)

    private enum Phase {
        case running, shuttingDown, stopped
    }

    private let phase = Mutex(Phase.running)
    private let stopped = DispatchSemaphore(value: 0)
    /// Tasks awaiting the end of the shutdown (``waitUntilStopped()``); nil once stopped.
    private let stopWaiters = Mutex<[CheckedContinuation<Void, Never>]?>([])

    init(host: String, port: Int, threads count: Int, configuration: HTTPServerConfiguration,
         metricsFactory: any MetricsFactory, tracer: (any Tracer)?,
         pipeline: RequestPipeline) throws(HTTPServerError) {
        let sockets = try ListeningSockets.open(host: host, port: port, count: count,
                                                backlog: configuration.backlog)
        ignoreBrokenPipe
        var threads: [EventLoopThread] = []
        var servers: [HTTPServer] = []
        var next = 0   // sockets before `next` belong to a server (or are closed)
        do {
            for (index, descriptor) in sockets.descriptors.enumerated() {
                let thread: EventLoopThread
                do {
                    thread = try EventLoopThread(name: "http-\(index)")
                } catch {
                    throw HTTPServerError(.systemFailure, "cannot start event loop thread: \(error)")
                }
                threads.append(thread)
                next = index + 1
                let loop = thread.loop
                servers.append(try loop.performAndWait {
                    try HTTPServer(loop: loop, pipeline: pipeline, configuration: configuration,
                                   metricsFactory: metricsFactory, tracer: tracer, descriptor: descriptor)
                })
            }
        } catch {
            for descriptor in sockets.descriptors[next...] { ListeningSockets.close(descriptor) }
            for (server, thread) in zip(servers, threads) { try? thread.loop.performAndWait { server.close() } }
            for thread in threads { thread.shutdown() }
            throw error as? HTTPServerError ?? HTTPServerError(.systemFailure, "\(error)")
        }
        self.port = sockets.port
        self.shutdownTimeout = configuration.shutdownTimeout
        self.threads = threads
        self.servers = servers
        self.loops = threads.map(\.loop)
    }

    deinit {
        // Normally shut down before the last reference goes (the Application keeps one). If not, stop here, unless
        // the last reference dies on one of our own loops, which cannot join itself.
        let running = phase.withLock { $0 != .stopped }
        guard running, !loops.contains(where: \.inLoop) else { return }
        for server in servers { try? server.loop.performAndWait { server.close() } }
        for thread in threads { thread.shutdown() }
    }

    /// Whether ``shutdown(timeout:)`` has begun (or finished).
    public var isShuttingDown: Bool {
        phase.withLock { $0 != .running }
    }

    /// Stops the server gracefully: closes every loop's listening socket (new connections are refused), lets
    /// in-flight requests finish and their responses be written (with `Connection: close`), keeps the connections
    /// open a moment longer (``shutdownGrace``) so that a request a client sent just as the last reply left is
    /// answered too, then closes every connection and stops the loops. Requests still unanswered after `timeout`
    /// (default: the configuration's ``HTTPServerConfiguration/shutdownTimeout``) are dropped. Calling it again
    /// waits for the first call to finish.
    ///
    /// Called from a request handler (on one of the server's own loops), it only starts the shutdown and returns:
    /// waiting there would wait for the handler itself.
    public func shutdown(timeout: Duration? = nil) async {
        let timeout = timeout ?? shutdownTimeout
        if loops.contains(where: \.inLoop) {
            Task.detached { await self.shutdown(timeout: timeout) }
            return
        }
        let previous = phase.withLock { phase -> Phase in
            let previous = phase
            if phase == .running { phase = .shuttingDown }
            return previous
        }
        switch previous {
        case .running: break
        case .shuttingDown: return await waitUntilStopped()   // the first caller finishes it
        case .stopped: return
        }

        let deadline = ContinuousClock.now + timeout
        // Replies say `Connection: close` from now on, and every listener closes before any loop starts draining,
        // each only after accepting what the kernel already queued on it: a connection left in a closing socket's
        // queue is reset, with the request a balancer (or a client told to reconnect) already sent on it.
        await withTaskGroup(of: Void.self) { group in
            for server in servers {
                group.addTask {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        server.loop.execute {
                            server.beginClosing()
                            server.closeListenerAfterAcceptingQueued { continuation.resume() }
                        }
                    }
                }
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for server in servers {
                group.addTask {
                    var drained = await Self.drain(server, by: deadline)
                    let open = await server.loop.perform { server.connectionCount }
                    if drained, open > 0 {
                        try? await Task.sleep(for: min(Self.shutdownGrace, max(.zero, deadline - .now)))
                        drained = await Self.drain(server, by: deadline)
                    }
                    if !drained { httpLogger.warning("shutdown timeout: dropping requests still in flight") }
                    await server.loop.perform { server.close() }
                }
            }
        }
        for thread in threads { thread.shutdown() }

        phase.withLock { $0 = .stopped }
        stopped.signal()
        let stopWaiting = stopWaiters.withLock { waiters in defer { waiters = nil }; return waiters ?? [] }
        for waiter in stopWaiting { waiter.resume() }
    }

    /// Waits until `server` has nothing in flight and every reply is written; false when `deadline` came first.
    private static func drain(_ server: HTTPServer, by deadline: ContinuousClock.Instant) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            server.loop.execute {
                server.whenDrained(within: max(.zero, deadline - ContinuousClock.now)) { continuation.resume(returning: $0) }
            }
        }
    }

    /// Suspends (without holding a thread) until the server has shut down.
    public func waitUntilStopped() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let alreadyStopped = stopWaiters.withLock { waiters -> Bool in
                guard waiters != nil else { return true }
                waiters?.append(continuation)
                return false
            }
            if alreadyStopped { continuation.resume() }
        }
    }

    /// Blocks the calling thread until the server has shut down. Must not be called on one of its loops.
    public func wait() {
        precondition(!loops.contains(where: \.inLoop), "RunningServer.wait() called on one of its own loops")
        stopped.wait()
        stopped.signal()   // pass it on to the next waiter
    }

    /// Requests in flight plus replies not yet written, over all loops (for tests).
    func pendingCount() async -> Int {
        var total = 0
        for server in servers { total += await server.loop.perform { server.pendingCount } }
        return total
    }

    /// Open client connections, over all loops (for tests).
    func connectionCount() async -> Int {
        var total = 0
        for server in servers { total += await server.loop.perform { server.connectionCount } }
        return total
    }
}
