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


// A started application (`Application.start`): its port and loops, and its graceful shutdown.

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
