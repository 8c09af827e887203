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

        let deadline = ContinuousClock.now + .seconds(20)
        var ready = 0
        while ready != 200, ContinuousClock.now < deadline, process.exitStatus == nil {
            usleep(50_000)
            ready = (try? TestHTTPClient(port: port).request("GET", "/readyz").status) ?? 0
        }
        #expect(ready == 200, "evserver over TLS ready: \(process.errorOutput.suffix(1500))")
        #expect(process.errorOutput.contains("connected to Redis at 127.0.0.1:\(redis.port) (single server, TLS, Redis"),
                "\(process.errorOutput.suffix(1500))")

        let client = try TestHTTPClient(port: port)
        let first = try client.request("GET", "/")
        #expect(first.status == 200)
        let cookie = try #require(first.headers["Set-Cookie"]?.split(separator: ";").first.map(String.init))
        let login = try client.request("GET", "/login", headers: ["Cookie": cookie])
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
}
