import Foundation
import Testing
import EvServer
import RedisSessionStore

/// The `evserver` binary against a TLS-only redis-server, configured as an operator would: `rediss://` plus
/// `--redis-tls-ca`. The seed flow through the server, then the `sessions` CLI over the same TLS.
@Suite(.serialized) struct EvServerTLSTests {
    @Test func seedFlowAndSessionsCommandWorkOverRediss() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.server)
        defer { redis.stop() }
        let url = "rediss://localhost:\(redis.port)/0"
        let prefix = "tls-e2e-\(UUID().uuidString.prefix(8)):"
        let port = try TestRedis.unusedPort()
        let process = try ChildProcess(EvServerExecutable.path(), [
            "--host", "127.0.0.1", "--port", "\(port)", "--threads", "1", "--secret", EvServerProcess.secret,
            "--redis-url", url, "--redis-tls-ca", certificates.caFile, "--prefix", prefix,
        ], name: "tls-e2e", environment: ChildProcess.environmentWithoutEvServerSettings)
        defer { process.terminate() }

        let ready = try await onThread { waitFor(status: 200, path: "/readyz", port: port, process: process) }
        #expect(ready == 200, "evserver over TLS ready: \(process.errorOutput.suffix(1500))")
        #expect(process.errorOutput.contains("connected to Redis at 127.0.0.1:\(redis.port) (single server, TLS, Redis"),
                "\(process.errorOutput.suffix(1500))")

        let (first, login) = try await onThread {
            let client = try TestHTTPClient(port: port)
            let first = try client.request("GET", "/")
            let cookie = first.headers["Set-Cookie"]?.split(separator: ";").first.map(String.init) ?? ""
            return (first, try client.request("GET", "/login", headers: ["Cookie": cookie]))
        }
        #expect(first.status == 200)
        #expect(String(decoding: login.body, as: UTF8.self) == "Welcome Aditya@123")

        let executable = try EvServerExecutable.path()
        let count = try await onThread {
            try ChildProcess.run(executable, ["sessions", "count", "--redis-url", url, "--redis-tls-ca",
                                              certificates.caFile, "--prefix", prefix],
                                 environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(30))
        }
        #expect(count.status == .exited(0), "\(count.error)")
        #expect(count.output.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "\(count.output) \(count.error)")

        // Without the CA the same URL is refused, naming why, and the CLI says so instead of hanging.
        let refused = try await onThread {
            try ChildProcess.run(executable, ["sessions", "count", "--redis-url", url, "--prefix", prefix],
                                 environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(30))
        }
        #expect(refused.status != .exited(0))
        #expect(refused.error.contains("certificate verify failed"), "\(refused.error)")
    }

    @Test func untrustedRedisCertificateIsOneLogLineAnd503sWithoutACrash() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.unknownCA)
        defer { redis.stop() }
        let port = try TestRedis.unusedPort()
        let process = try ChildProcess(EvServerExecutable.path(), [
            "--host", "127.0.0.1", "--port", "\(port)", "--threads", "1", "--secret", EvServerProcess.secret,
            "--redis-url", "rediss://localhost:\(redis.port)/0", "--redis-tls-ca", certificates.caFile,
        ], name: "tls-untrusted", environment: ChildProcess.environmentWithoutEvServerSettings)
        defer { process.terminate() }
        let healthy = try await onThread { waitFor(status: 200, path: "/healthz", port: port, process: process) }
        #expect(healthy == 200)
        let (session, elapsed, readiness) = try await onThread {
            let client = try TestHTTPClient(port: port)
            let started = ContinuousClock.now
            let session = try client.request("GET", "/")
            let elapsed = ContinuousClock.now - started
            let readiness = try client.request("GET", "/readyz").status
            usleep(1_000_000)
            return (session, elapsed, readiness)
        }
        #expect(session.status == 503)
        #expect(session.headers["Retry-After"] != nil)
        #expect(elapsed < .milliseconds(1500), "503 within the Redis deadline")
        #expect(readiness == 503)
        #expect(process.exitStatus == nil, "still running")
        let lines = process.errorOutput.split(separator: "\n").filter { $0.contains("not reachable") }
        #expect(lines.first?.contains("certificate verify failed: unable to get local issuer certificate") == true,
                "\(lines)")
        // Back-off retries with the same reason are not logged again, per connection (the start-up connection and
        // the loop's own).
        #expect(lines.count <= 2, "\(lines)")
    }
}

/// Polls `path` on 127.0.0.1:`port` until it answers `status` (20 s at most, or until the process ends); returns the
/// last status seen (0: no answer). Blocking: call it through `onThread`.
private func waitFor(status: Int, path: String, port: Int, process: ChildProcess) -> Int {
    let deadline = ContinuousClock.now + .seconds(20)
    var seen = 0
    while seen != status, ContinuousClock.now < deadline, process.exitStatus == nil {
        usleep(50_000)
        seen = (try? TestHTTPClient(port: port).request("GET", path).status) ?? 0
    }
    return seen
}
