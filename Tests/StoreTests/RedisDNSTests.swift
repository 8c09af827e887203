import Foundation
import Synchronization
import Testing
import EvServer

#if canImport(Glibc)
import Glibc
#endif

// An `evserver` process whose resolver stalls: tests/dns/slow_getaddrinfo.c, preloaded (LD_PRELOAD), answers
// every `*.slow.test` name after SLOWDNS_DELAY_MS (127.0.0.1, or EAI_NONAME for `nx.slow.test`). The Redis host
// is looked up off the event loop, so a slow or failing lookup delays only the session routes (503 within the
// Redis deadline), never `/healthz` or the other requests on the loop.

extension ScaleSuites {
    @Suite(.enabled(if: SlowResolver.unavailableReason == nil, Comment(rawValue: SlowResolver.unavailableReason ?? "")))
    struct RedisDNSTests {
        @Test func slowLookupOfTheRedisHostStallsNoOtherRequest() async throws {
            let shim = try SlowResolver.library()
            let redis = try PrivateRedis()
            redis.stop()   // down at first: the session route must fail fast, then recover once it is up
            let server = try await onThread {
                try EvServerProcess(instance: "dns-slow", redisPort: redis.port, arguments: ["--redis-timeout", "1000"],
                                    redisURL: "redis://redis.slow.test:\(redis.port)/0",
                                    environment: SlowResolver.environment(shim), readinessPath: "/healthz")
            }
            defer { server.stop() }

            let run = try await onThread { () throws -> (HealthProbe.Figures, Timed, Timed) in
                let probe = HealthProbe(port: server.port, duration: .seconds(5))
                usleep(300_000)
                let refused = try Timed.request(port: server.port, "/")
                let healthz = probe.finish()
                try redis.start()
                let recovered = try Timed.untilOK(port: server.port, "/", within: .seconds(10))
                return (healthz, refused, recovered)
            }
            let (healthz, refused, recovered) = run
            print("RedisDNSTests slow lookup (\(SlowResolver.delayMilliseconds) ms): /healthz \(healthz); "
                + "GET / while Redis is down: \(refused.response?.status ?? 0) in \(refused.milliseconds) ms; "
                + "GET / answered 200 \(recovered.milliseconds) ms after Redis started")

            #expect(healthz.p99 < 10, "/healthz p99 \(healthz.p99) ms while the Redis host resolves")
            #expect(healthz.max <= SlowResolver.maxHealthzMilliseconds, "/healthz \(healthz)")
            #expect(refused.response?.status == 503)
            #expect(refused.response?.headers["Retry-After"] != nil)
            #expect(refused.milliseconds < 1200, "GET / answered after \(refused.milliseconds) ms (deadline 1000)")
            #expect(recovered.response?.status == 200)
            #expect(recovered.milliseconds < 4000, "GET / answered 200 \(recovered.milliseconds) ms after Redis was up")

            let cookie = try #require(recovered.response?.cookies["connect.sid"], "no session cookie once Redis is up")
            let id = try #require(DemoServer.sessionID(fromCookie: cookie))
            let client = redis.client()
            defer { client.close() }
            #expect(try await client.get("sess:" + id) != nil, "the session was not stored")
        }

        @Test func everyAddressOfTheNameIsTriedInTurn() async throws {
            let shim = try SlowResolver.library()
            let redis = try PrivateRedis()   // listens on 127.0.0.1 only: the name's first address, 127.0.0.2, refuses
            let environment = SlowResolver.environment(shim).merging(["SLOWDNS_DELAY_MS": "20"]) { $1 }
            let server = try await onThread {
                try EvServerProcess(instance: "dns-two", redisPort: redis.port,
                                    redisURL: "redis://two.redis.slow.test:\(redis.port)/0",
                                    environment: environment, readinessPath: "/readyz")
            }
            defer { server.stop() }
            let answer = try await onThread { try Timed.request(port: server.port, "/") }
            #expect(answer.response?.status == 200)
            #expect(server.process.errorOutput.contains("connected to Redis at 127.0.0.1:\(redis.port)"),
                    "\(server.process.errorOutput.suffix(1500))")
        }

        @Test func unresolvableRedisHostIsAnswered503AndWarnedOnce() async throws {
            let shim = try SlowResolver.library()
            let port = try TestRedis.unusedPort()
            let server = try await onThread {
                try EvServerProcess(instance: "dns-nx", redisPort: port, arguments: ["--redis-timeout", "1000"],
                                    redisURL: "redis://nx.slow.test:\(port)/0",
                                    environment: SlowResolver.environment(shim), readinessPath: "/healthz")
            }
            defer { server.stop() }

            let run = try await onThread { () throws -> (HealthProbe.Figures, [Timed]) in
                let probe = HealthProbe(port: server.port, duration: .seconds(5))
                var answers: [Timed] = []
                for _ in 0..<3 {
                    usleep(300_000)
                    answers.append(try Timed.request(port: server.port, "/"))
                }
                return (probe.finish(), answers)
            }
            let (healthz, answers) = run
            let log = server.process.errorOutput
            // The warnings of the connection, not the per-request errors (which name the same reason).
            let warnings = log.split(whereSeparator: \.isNewline)
                .filter { $0.contains(" warning ") && $0.contains("cannot resolve") }
            print("RedisDNSTests unresolvable host: /healthz \(healthz); GET / "
                + answers.map { "\($0.response?.status ?? 0) in \($0.milliseconds) ms" }.joined(separator: ", ")
                + "; \(warnings.count) 'cannot resolve' warning(s): \(warnings.first ?? "")")

            #expect(healthz.p99 < 10, "/healthz p99 \(healthz.p99) ms while the Redis host fails to resolve")
            #expect(healthz.max <= SlowResolver.maxHealthzMilliseconds, "/healthz \(healthz)")
            for answer in answers {
                #expect(answer.response?.status == 503)
                #expect(answer.response?.headers["Retry-After"] != nil)
                #expect(answer.milliseconds < 1200, "GET / answered after \(answer.milliseconds) ms (deadline 1000)")
            }
            #expect(warnings.count == 1, "expected one warning naming the lookup failure:\n\(log.suffix(3000))")
        }
    }
}

// MARK: - The preloaded resolver

enum SlowResolver {
    /// How long each `*.slow.test` lookup takes: SLOWDNS_DELAY_MS from the test's environment, or 1500.
    static let delayMilliseconds = ProcessInfo.processInfo.environment["SLOWDNS_DELAY_MS"].flatMap { Int($0) } ?? 1500
    /// The slowest `/healthz` allowed while a lookup is under way.
    static let maxHealthzMilliseconds = 10.0

    /// Why the tests cannot run here, or nil: the shim is built with `cc` and loaded with `LD_PRELOAD` (glibc).
    static var unavailableReason: String? {
        #if os(Linux)
        ChildProcess.find("cc") == nil ? "cc is not installed: cannot build tests/dns/slow_getaddrinfo.c" : nil
        #else
        "the getaddrinfo shim is preloaded with LD_PRELOAD, which needs Linux"
        #endif
    }

    /// The child's extra environment.
    static func environment(_ library: String) -> [String: String] {
        ["LD_PRELOAD": library, "SLOWDNS_DELAY_MS": "\(delayMilliseconds)"]
    }

    /// Builds the shim once per test run into a temporary directory; returns the library's path.
    static func library() throws -> String {
        try built.withLock { built in
            if let built { return built }
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("tests/dns/slow_getaddrinfo.c").path
            guard let cc = ChildProcess.find("cc") else { throw HarnessFailure("cc is not installed") }
            let directory = NSTemporaryDirectory() + "evserver-slowdns-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let library = directory + "/slowdns.so"
            let result = try ChildProcess.run(cc, ["-shared", "-fPIC", "-o", library, source, "-ldl"])
            guard result.status == .exited(0) else {
                throw HarnessFailure("cc could not build \(source) (\(result.status)): \(result.error)")
            }
            built = library
            return library
        }
    }

    private static let built = Mutex<String?>(nil)
}

// MARK: - Probes

/// GET `/healthz` every 50-100 ms on a thread of its own, on one keep-alive connection (a new one after a failure),
/// timing each answer.
final class HealthProbe: Sendable {
    struct Figures: CustomStringConvertible, Sendable {
        /// Each probe's time in ms; a failed probe (timeout, error, not 200) counts as its time until failure.
        var milliseconds: [Double]
        var failures: Int

        private func percentile(_ p: Double) -> Double {
            let sorted = milliseconds.sorted()
            guard !sorted.isEmpty else { return .infinity }
            return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
        }
        var p50: Double { percentile(0.50) }
        var p99: Double { percentile(0.99) }
        var max: Double { milliseconds.max() ?? .infinity }

        var description: String {
            "\(milliseconds.count) probes, \(failures) failed, p50 \(format(p50)) ms, p99 \(format(p99)) ms, "
                + "max \(format(max)) ms"
        }
    }

    private let figures = Mutex(Figures(milliseconds: [], failures: 0))
    private let done = DispatchSemaphore(value: 0)

    init(port: Int, duration: Duration) {
        Thread.detachNewThread { [self] in
            let end = ContinuousClock.now + duration
            var client: TestHTTPClient?
            while ContinuousClock.now < end {
                let start = ContinuousClock.now
                var ok = false
                do {
                    if client == nil { client = try TestHTTPClient(port: port, timeout: .seconds(3)) }
                    ok = try client?.request("GET", "/healthz").status == 200
                } catch {
                    client = nil
                }
                let elapsed = elapsedMilliseconds(ContinuousClock.now - start)
                figures.withLock {
                    $0.milliseconds.append(elapsed)
                    if !ok { $0.failures += 1 }
                }
                usleep(UInt32.random(in: 50_000...100_000))
            }
            done.signal()
        }
    }

    /// Waits for the probing to end and returns its figures.
    func finish() -> Figures {
        done.wait()
        return figures.withLock { $0 }
    }
}

/// One request on a new connection and how long its answer took.
struct Timed: Sendable {
    var response: TestHTTPResponse?
    var milliseconds: Double

    static func request(port: Int, _ path: String, timeout: Duration = .seconds(5)) throws -> Timed {
        let start = ContinuousClock.now
        let client = try TestHTTPClient(port: port, timeout: timeout)
        defer { client.close() }
        let response = try? client.request("GET", path)
        return Timed(response: response, milliseconds: elapsedMilliseconds(ContinuousClock.now - start))
    }

    /// Requests `path` until it answers 200 or `within` has passed; the time is counted from the first request.
    static func untilOK(port: Int, _ path: String, within: Duration) throws -> Timed {
        let start = ContinuousClock.now
        var last: TestHTTPResponse?
        while ContinuousClock.now - start < within {
            last = try request(port: port, path).response
            if last?.status == 200 { break }
            usleep(100_000)
        }
        return Timed(response: last, milliseconds: elapsedMilliseconds(ContinuousClock.now - start))
    }
}

private func elapsedMilliseconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return Double(seconds) * 1000 + Double(attoseconds) / 1e15
}

private func format(_ value: Double) -> String {
    String(format: "%.1f", value)
}
