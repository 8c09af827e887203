import Foundation
import Testing

/// What `evserver` says about Redis when it starts, before any request: one line either way. The waiting (sleeps,
/// process polling) runs on a thread of its own (`onThread`), never on the test's cooperative threads: blocking
/// those would delay every other test's timers.
@Suite(.serialized) struct RedisStartupTests {
    private func start(redisPort: Int) throws -> (ChildProcess, port: Int) {
        let port = try TestRedis.unusedPort()
        let process = try ChildProcess(EvServerExecutable.path(), [
            "--host", "127.0.0.1", "--port", "\(port)", "--threads", "1", "--secret", EvServerProcess.secret,
            "--redis-url", "redis://127.0.0.1:\(redisPort)/0",
        ], name: "startup", environment: ChildProcess.environmentWithoutEvServerSettings)
        return (process, port)
    }

    /// Waits up to `timeout` for `predicate` over the process's stderr; returns the last stderr seen.
    private func waitForLog(_ process: ChildProcess, timeout: Duration,
                            _ predicate: (String) -> Bool) -> String {
        let deadline = ContinuousClock.now + timeout
        var log = process.errorOutput
        while !predicate(log), ContinuousClock.now < deadline {
            usleep(20_000)
            log = process.errorOutput
        }
        return log
    }

    private func lines(of log: String, containing text: String) -> [Substring] {
        log.split(separator: "\n").filter { $0.contains(text) }
    }

    @Test func redisUpAtStartIsNamedWithAddressModeTransportAndVersionBeforeAnyRequest() async throws {
        try await onThread { try redisUp() }
    }

    private func redisUp() throws {
        let redis = try PrivateRedis()
        let (process, _) = try start(redisPort: redis.port)
        defer { process.terminate() }
        let log = waitForLog(process, timeout: .seconds(10)) { $0.contains("connected to Redis") }
        let connected = lines(of: log, containing: "connected to Redis")
        #expect(connected.count == 1, "one line at start: \(log)")
        #expect(connected.first?.contains("at 127.0.0.1:\(redis.port) (single server, plain text, Redis 7.") == true,
                "\(connected)")
        #expect(lines(of: log, containing: "not reachable").isEmpty, "\(log)")
    }

    @Test func redisAwayAtStartIsOneWarningThenServingGoesOnAndRecovers() async throws {
        try await onThread { try redisAway() }
    }

    private func redisAway() throws {
        let redis = try PrivateRedis()
        redis.stop()
        let (process, port) = try start(redisPort: redis.port)
        defer { process.terminate() }
        var log = waitForLog(process, timeout: .seconds(10)) { $0.contains("not reachable") }
        // The back-off keeps retrying; the same reason is not logged again.
        usleep(1_500_000)
        log = process.errorOutput
        let warnings = lines(of: log, containing: "not reachable")
        #expect(warnings.count == 1, "one line while Redis stays away: \(log)")
        #expect(warnings.first?.contains("Redis (single server) is not reachable: Connection refused") == true,
                "\(warnings)")
        #expect(process.exitStatus == nil, "the server keeps running")

        let client = try TestHTTPClient(port: port)
        #expect(try client.request("GET", "/healthz").status == 200)
        #expect(try client.request("GET", "/readyz").status == 503)

        try redis.start()
        let deadline = ContinuousClock.now + .seconds(5)
        var ready = 0
        while ready != 200, ContinuousClock.now < deadline {
            usleep(100_000)
            ready = (try? TestHTTPClient(port: port).request("GET", "/readyz").status) ?? 0
        }
        #expect(ready == 200, "ready again once Redis is back")
        log = waitForLog(process, timeout: .seconds(5)) { $0.contains("connected to Redis at") }
        #expect(!lines(of: log, containing: "connected to Redis at 127.0.0.1:\(redis.port)").isEmpty, "\(log)")
    }
}
