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
