import Foundation
import Synchronization
import Testing
@testable import EvServer
import RedisSessionStore
@testable import EvServerApp

#if canImport(Glibc)
import Glibc
#endif

// Graceful shutdown of a real `evserver` process: SIGTERM in the middle of a write load. Every request the server
// took must be answered (no reset, no empty reply); once the listener is closed, new connections are refused, and
// that is the only failure allowed; every write acknowledged with 200 is in Redis afterwards; the process exits 0
// long before the 10 s drain limit.
//
// The race this guards against: a client sending its next request on a kept-alive connection just as the last
// reply in flight left, or reconnecting (after `Connection: close` from one loop) to another loop's listener that is
// about to close. RunningServer.shutdown closes every listener before any loop starts draining, and keeps connections
// open for a short grace once nothing is in flight; before that, 6 of 10 runs lost 1-3 of ~2,000 requests.

extension ScaleSuites {
    @Suite struct ShutdownTests {
        @Test func sigtermDuringWriteLoadAnswersEveryRequestAndKeepsEveryAcknowledgedWrite() async throws {
            let redis = try PrivateRedis()
            let prefix = "shutdown:\(UUID().uuidString.prefix(8)):"
            let server = try await onThread {
                try EvServerProcess(instance: "drain", redisPort: redis.port, prefix: prefix, threads: 2)
            }
            let port = server.port
            let progress = LoadProgress()
            let workers = 8
            let started = ContinuousClock.now
            let deadline = started + .milliseconds(2500)

            // Eight keep-alive clients, each writing its own session: POST /session {"w<n>": n}, n = 1, 2, ...
            let load = BlockingWorkers(workers) { _ in
                shutdownWorker(port: port, deadline: deadline, progress: progress)
            }

            // SIGTERM once the load runs (about 1 s in, with writes acknowledged).
            while ContinuousClock.now < started + .seconds(1) || progress.acknowledged.load(ordering: .relaxed) < 50 {
                guard ContinuousClock.now < started + .seconds(20) else { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            let acknowledgedBeforeSignal = progress.acknowledged.load(ordering: .relaxed)
            let signalled = ContinuousClock.now
            progress.signalled.store(true, ordering: .releasing)
            server.process.send(SIGTERM)
            let process = server.process
            let exit = try await onThread { process.waitForExit(timeout: .seconds(15)) }
            let exitTime = ContinuousClock.now - signalled
            let results = await load.results()

            let acknowledged = results.reduce(0) { $0 + $1.acknowledged.count }
            let afterSignal = results.reduce(0) { $0 + $1.answeredAfterSignal }
            let closing = results.reduce(0) { $0 + $1.answeredWithClose }
            let refused = results.reduce(0) { $0 + $1.refused }
            let failures = results.flatMap(\.failures)
            let unanswered = results.flatMap(\.unanswered)
            print("ShutdownTests: \(workers) clients, \(acknowledged) writes answered 200 (\(acknowledgedBeforeSignal) "
                + "before SIGTERM, \(afterSignal) after it, \(closing) of them with Connection: close), \(refused) "
                + "connections refused after the listener closed, \(unanswered.count) closed without an answer, "
                + "\(failures.count) other failures; \(exit.map { "\($0)" } ?? "no exit") \(exitTime) after SIGTERM")

            let exitText = exit.map { "\($0)" } ?? "still running"
            let log = String(server.process.errorOutput.suffix(1500))
            #expect(exit == .exited(0), "evserver did not exit 0 after SIGTERM: \(exitText); \(log)")
            #expect(exitTime < .seconds(5), "the drain took \(exitTime); the limit is 10 s")
            #expect(failures.isEmpty, "failed requests: \(failures.prefix(10))")
            #expect(unanswered.isEmpty, "requests closed without an answer: \(unanswered.prefix(10))")
            #expect(acknowledgedBeforeSignal >= 50, "the load never got going")
            #expect(refused <= workers, "each client stops at its first refused connection")
            #expect(server.process.errorOutput.contains("signal 15: shutting down"))

            // Every acknowledged write is in Redis.
            let client = redis.client()
            defer { client.close() }
            var missing: [String] = []
            var checked = 0
            for (index, report) in results.enumerated() where !report.acknowledged.isEmpty {
                let cookie = try #require(report.cookie, "client \(index) was answered without a session cookie")
                let id = try #require(DemoServer.sessionID(fromCookie: cookie))
                let stored = try await client.get(prefix + id).map { try JSONValue(parsing: $0) }
                guard let data = stored?.objectValue else {
                    missing.append("client \(index): the whole session")
                    continue
                }
                for n in report.acknowledged {
                    checked += 1
                    if data["w\(n)"]?.intValue != n { missing.append("client \(index): w\(n)") }
                }
            }
            print("ShutdownTests: \(checked) acknowledged writes checked in Redis, \(missing.count) missing")
            #expect(checked == acknowledged)
            #expect(missing.isEmpty, "acknowledged writes missing from Redis: \(missing.prefix(10))")
        }

        /// A request still running at the configured shutdown timeout is dropped and the server stops then, not
        /// later (evserver's `--shutdown-timeout`).
        @Test func theConfiguredShutdownTimeoutBoundsTheDrain() async throws {
            let app = Application(configuration: HTTPServerConfiguration(shutdownTimeout: .milliseconds(400)))
            let gate = Gate()
            let (server, held) = try await startHoldingOneRequest(app, until: gate)
            let started = ContinuousClock.now
            await server.shutdown()
            let took = ContinuousClock.now - started
            gate.open()
            #expect(took >= .milliseconds(350) && took < .seconds(3), "the shutdown took \(took) with a 400 ms limit")
            #expect(await held.results().first?.hasPrefix("failed") == true, "the held request was answered")
        }

        /// `/readyz` says 503 as soon as a shutdown starts, so a balancer that checks over a kept-alive connection
        /// stops sending new work; new connections are refused at once; the request in flight is still answered.
        @Test func readyzTurns503AsSoonAsTheDrainBegins() async throws {
            let options = try ServerOptions.parse(["--port", "0", "--store", "memory", "--secret", EvServerProcess.secret,
                                                   "--instance", "draining", "--threads", "1"])
            let demo = try DemoApp(configuration: try options.resolve(environment: [:]))
            let app = demo.makeApplication()
            let gate = Gate()
            let (server, held) = try await startHoldingOneRequest(app, until: gate)
            let port = server.port
            let probe = try TestHTTPClient(port: port)
            #expect(try probe.request("GET", "/readyz").status == 200)

            let shutdown = Task { await server.shutdown(timeout: .seconds(5)) }
            while !server.isShuttingDown { try await Task.sleep(for: .milliseconds(1)) }
            // The listener closes at once: a new connection is refused (haproxy's next check fails at L4).
            var refusedCode: Int32 = 0
            for _ in 0..<200 {
                do {
                    _ = try TestHTTPClient(port: port, timeout: .seconds(1))
                    try await Task.sleep(for: .milliseconds(5))
                } catch TestHTTPClientError.connectFailed(let code) {
                    refusedCode = code
                    break
                }
            }
            #expect(refusedCode == ECONNREFUSED, "new connections were not refused during the drain")

            // On the kept-alive probe connection the server still answers (with Connection: close).
            let ready = try probe.request("GET", "/readyz")
            #expect(ready.closesConnection)
            #expect(ready.status == 503, "/readyz answered \(ready.status) \(ready.text) while draining")

            gate.open()
            #expect(await held.results() == ["200 released"],
                    "the request in flight when the shutdown began was not answered")
            await shutdown.value
        }
    }
}

/// Starts `app` (one loop) with a test-only route that holds one request in flight until `gate` opens, so a drain
/// lasts until the test has looked, and sends that request; returns once the server has it. The request's result:
/// "<status> <body>", or "failed: <error>" when the server dropped it.
func startHoldingOneRequest(_ app: Application, until gate: Gate) async throws
    -> (RunningServer, BlockingWorkers<String>)
{
    app.get("/test/hold") { _, response in
        while !gate.isOpen { try await Task.sleep(for: .milliseconds(5)) }
        response.send("released")
    }
    let server = try app.start(host: "127.0.0.1", port: 0, threads: 1)
    let port = server.port
    let held = BlockingWorkers(1) { _ -> String in
        do {
            let response = try TestHTTPClient(port: port, timeout: .seconds(5)).request("GET", "/test/hold")
            return "\(response.status) \(response.text)"
        } catch {
            return "failed: \(error)"
        }
    }
    while await server.pendingCount() == 0 { try await Task.sleep(for: .milliseconds(5)) }
    return (server, held)
}

// MARK: - The write load

/// Shared between the load threads and the test: writes acknowledged so far, and whether SIGTERM was sent.
final class LoadProgress: Sendable {
    let acknowledged = Atomic<Int>(0)
    let signalled = Atomic<Bool>(false)
}

/// What one client saw.
struct ShutdownWorkerReport: Sendable {
    /// The n of each `{"w<n>": n}` answered 200.
    var acknowledged: [Int] = []
    /// Responses received after SIGTERM was sent (the request may have left before).
    var answeredAfterSignal = 0
    /// Responses carrying `Connection: close` (answered during the drain).
    var answeredWithClose = 0
    /// Connections refused (the listener was closed): the only acceptable failure.
    var refused = 0
    /// Requests sent after SIGTERM on a connection the server then closed or reset without answering.
    var unanswered: [String] = []
    /// Everything else: timeouts, statuses other than 200, failures before SIGTERM.
    var failures: [String] = []
    /// The session cookie the client ended with.
    var cookie: String?
}

/// One keep-alive client writing until `deadline`, or until a connection is refused (also ClusterTests' drain).
func shutdownWorker(port: Int, deadline: ContinuousClock.Instant, progress: LoadProgress)
    -> ShutdownWorkerReport
{
    var report = ShutdownWorkerReport()
    let client: TestHTTPClient
    do {
        client = try TestHTTPClient(port: port)
    } catch {
        report.failures.append("initial connect: \(error)")
        return report
    }
    var n = 0
    while ContinuousClock.now < deadline {
        // A real client does a little work between requests (a tight loop hides races that such a pause shows).
        usleep(UInt32.random(in: 0...300))
        n += 1
        let afterSignal = progress.signalled.load(ordering: .acquiring)
        let fresh = !client.isConnected   // request() connects first
        do {
            let response = try client.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                              body: #"{"w\#(n)":\#(n)}"#)
            if progress.signalled.load(ordering: .acquiring) { report.answeredAfterSignal += 1 }
            if response.closesConnection { report.answeredWithClose += 1 }
            if response.status == 200 {
                report.acknowledged.append(n)
                progress.acknowledged.add(1, ordering: .relaxed)
            } else {
                report.failures.append("write \(n): status \(response.status) \(response.text.prefix(200))")
            }
        } catch TestHTTPClientError.connectFailed(let code) where code == ECONNREFUSED {
            report.refused += 1
            break
        } catch {
            let what = "write \(n)\(afterSignal ? " (after SIGTERM)" : "") on a \(fresh ? "new" : "kept-alive") "
                + "connection: \(error)"
            if afterSignal && isClosedWithoutAnswer(error) {
                report.unanswered.append(what)
            } else {
                report.failures.append(what)
            }
            client.close()   // reconnect on the next write
        }
    }
    report.cookie = client.cookieJar["connect.sid"]
    return report
}

/// Whether a request failed because the server closed or reset its connection instead of answering.
private func isClosedWithoutAnswer(_ error: any Error) -> Bool {
    switch error as? TestHTTPClientError {
    case .closedByPeer: true
    case .sendFailed(let code): code == EPIPE || code == ECONNRESET
    // Accepted into a listener's queue, then reset when that listener closed.
    case .connectFailed(let code): code == ECONNRESET
    default: false
    }
}

/// Blocking work started at once on threads of its own, one per index, its results awaited later. Starting the
/// threads needs no concurrency-pool thread (an `async let` would: under the full suite the pool's two threads can
/// be busy with other tests' blocking calls for seconds), and waiting for them holds none.
final class BlockingWorkers<T: Sendable>: Sendable {
    private let count: Int
    private let finished = DispatchGroup()
    private let values = Mutex<[Int: T]>([:])

    init(_ count: Int, _ body: @escaping @Sendable (Int) -> T) {
        self.count = count
        for index in 0..<count {
            finished.enter()
            Thread.detachNewThread { [self] in
                let value = body(index)
                values.withLock { $0[index] = value }
                finished.leave()
            }
        }
    }

    /// The results in index order, once every thread is done.
    func results() async -> [T] {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            finished.notify(queue: .global()) { continuation.resume() }
        }
        return values.withLock { values in (0..<count).map { values[$0]! } }
    }
}

/// A flag a test opens to let held requests finish.
final class Gate: Sendable {
    private let opened = Atomic<Bool>(false)
    var isOpen: Bool { opened.load(ordering: .acquiring) }
    func open() { opened.store(true, ordering: .releasing) }
}
