#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@testable import EvServerApp
@testable import EvServer
import RedisClient
import Testing

/// The Prometheus text of `/metrics`: what the HTTP server records through swift-metrics (handles cached per loop)
/// and the Redis hook records, rendered by swift-prometheus with the bucket bounds and names of before.
@Suite struct MetricsTests {
    /// The value of the first line of `text` that starts with `prefix` (a series and its labels).
    static func value(_ text: String, _ prefix: String) -> String? {
        text.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }.map { String($0.dropFirst(prefix.count + 1)) }
    }

    @Test func latencyBucketsCountEveryObservationAtOrBelowTheirBound() {
        let metrics = Metrics()
        let server = HTTPServerMetrics(factory: metrics.factory)
        for milliseconds in [0.3, 3, 3, 300, 5_000] {   // 5 s is above the last bound: only in +Inf
            server.recordRequest(route: "/r", method: .get, status: 200, nanoseconds: Int64(milliseconds * 1_000_000))
        }
        let text = metrics.render(extra: [])
        func bucket(_ bound: String) -> String? {
            Self.value(text, #"evserver_http_request_duration_seconds_bucket{route="/r",le="\#(bound)"}"#)
        }
        #expect(bucket("0.0005") == "1")
        #expect(bucket("0.001") == "1")
        #expect(bucket("0.005") == "3")
        #expect(bucket("0.25") == "3")
        #expect(bucket("0.5") == "4")
        #expect(bucket("2.5") == "4")
        #expect(bucket("+Inf") == "5")
        #expect(Self.value(text, #"evserver_http_request_duration_seconds_count{route="/r"}"#) == "5")
        #expect(Self.value(text, #"evserver_http_requests_total{route="/r",method="GET",status="200"}"#) == "5")
    }

    /// Requests served by several loops land in one series per route, method and status; so do the Redis commands
    /// of a client on each loop.
    @Test func countsFromSeveralLoopsAreSummed() async throws {
        let metrics = Metrics()
        let app = Application(metricsFactory: metrics.factory)
        app.get("/r") { _, response in response.send("ok") }
        app.post("/r") { _, _ in throw HTTPError(.conflict) }
        try await withServer(app, threads: 3) { server in
            for _ in 0..<12 {   // a connection each: the kernel spreads them over the loops' sockets
                let client = try TestHTTPClient(port: server.port)
                #expect(try client.request("GET", "/r").status == 200)
            }
            #expect(try TestHTTPClient(port: server.port).request("POST", "/r").status == 409)
            #expect(try TestHTTPClient(port: server.port).request("GET", "/nope").status == 404)
            // The Redis client records its commands into the same registry, one connection per loop.
            var redis = RedisConfiguration(host: TestRedis.host, port: TestRedis.port)
            redis.metricsFactory = metrics.factory
            for loop in server.loops {
                let client = RedisClient(configuration: redis, loop: loop)
                _ = try await client.send("GET", "test:metrics:\(UUID().uuidString)")
                await #expect(throws: RedisError.self) { try await client.send("GET") }   // wrong number of arguments
                client.close()
            }
            let text = metrics.render(extra: [("evserver_sessions_created_total", "Sessions created.", 7)])
            #expect(Self.value(text, #"evserver_http_requests_total{route="/r",method="GET",status="200"}"#) == "12")
            #expect(Self.value(text, #"evserver_http_requests_total{route="/r",method="POST",status="409"}"#) == "1")
            #expect(Self.value(text, #"evserver_http_requests_total{route="unmatched",method="GET",status="404"}"#) == "1")
            #expect(Self.value(text, #"evserver_http_request_duration_seconds_count{route="/r"}"#) == "13")
            #expect(Self.value(text, #"evserver_redis_command_duration_seconds_count{command="GET"}"#) == "6")
            #expect(Self.value(text, #"evserver_redis_errors_total{command="GET",kind="redis_error"}"#) == "3")
            #expect(Self.value(text, "evserver_sessions_created_total") == "7")
            #expect(text.contains("# TYPE evserver_http_requests_total counter"))
            #expect(text.contains("# TYPE evserver_http_request_duration_seconds histogram"))
        }
    }

    /// The server's own refusals are counted by status, and open connections by a gauge.
    @Test func refusalsAndOpenConnectionsAreCounted() async throws {
        let metrics = Metrics()
        let app = Application(configuration: HTTPServerConfiguration(maxBodySize: 100), metricsFactory: metrics.factory)
        app.post("/r") { _, response in response.send("ok") }
        try await withServer(app) { server in
            let refused = try TestHTTPClient(port: server.port)
            #expect(try refused.request("POST", "/r", body: [UInt8](repeating: 65, count: 500)).status == 413)
            let open = try [TestHTTPClient(port: server.port), TestHTTPClient(port: server.port)]
            for client in open { #expect(try client.request("POST", "/r").status == 200) }
            let text = metrics.render(extra: [])
            #expect(Self.value(text, #"evserver_http_refusals_total{status="413"}"#) == "1")
            // The two kept-alive clients, and the refused one until it lingers out: at least two, at most three.
            let connections: Double? = Self.value(text, "evserver_http_connections_open").flatMap { Double($0) }
            #expect(connections.map { (2.0...3.0).contains($0) } == true, "\(String(describing: connections))")
            for client in open { client.close() }
            refused.close()
        }
    }

    /// A signed cookie whose session is in the store is a hit; one whose session is gone (expired, destroyed) a miss.
    @Test func sessionLoadsAreCountedAsHitsAndMisses() async throws {
        try await withDemo { app in
            let client = try app.client()
            _ = try client.request("GET", "/")   // no cookie yet: a new session, nothing loaded
            #expect(try client.request("GET", "/login").text == "Welcome Aditya@123")
            let id = try #require(DemoServer.sessionID(fromCookie: client.cookieJar["connect.sid"] ?? ""))
            _ = try await app.redis.send("DEL", app.prefix + id)
            #expect(try client.request("GET", "/login").text == "Welcome guest")
            let text = try client.request("GET", "/metrics").text
            #expect(Self.value(text, "evserver_session_hits_total") == "1")
            #expect(Self.value(text, "evserver_session_misses_total") == "1")
        }
    }

    /// The Redis client counts a connection it re-established after losing it.
    @Test func aLostRedisConnectionCountsAReconnect() async throws {
        let metrics = Metrics()
        var redis = RedisConfiguration(host: TestRedis.host, port: TestRedis.port)
        redis.metricsFactory = metrics.factory
        let thread = try EventLoopThread(name: "metrics-reconnect")
        let client = RedisClient(configuration: redis, loop: thread.loop)
        defer {
            client.close()
            thread.shutdown()
        }
        guard case .integer(let id) = try await client.send("CLIENT", "ID") else {
            Issue.record("CLIENT ID did not answer an integer")
            return
        }
        #expect(Self.value(metrics.render(extra: []), "evserver_redis_reconnects_total") == "0")
        _ = try await TestRedis.client.send("CLIENT", "KILL", "ID", String(id))
        var reconnected = false
        for _ in 0..<250 where !reconnected {   // the first back-off is 25-50 ms; allow a loaded machine 5 s
            if case .integer(let now)? = try? await client.send("CLIENT", "ID"), now != id { reconnected = true }
            if !reconnected { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(reconnected)
        #expect(Self.value(metrics.render(extra: []), "evserver_redis_reconnects_total") == "1")
    }

    /// TLS handshakes with Redis are counted by outcome: one with a server whose certificate verifies, and at least
    /// one failed with a server of an unknown CA (the client retries it).
    @Test func tlsHandshakesAreCountedByOutcome() async throws {
        let certificates = try await TestCertificates.forTests()
        let good = try await tlsRedis(certificates.server)
        defer { good.stop() }
        let untrusted = try await tlsRedis(certificates.unknownCA)
        defer { untrusted.stop() }
        let metrics = Metrics()
        let thread = try EventLoopThread(name: "metrics-tls")
        defer { thread.shutdown() }
        var trusting = try rediss(port: good.port, caFile: certificates.caFile)
        trusting.metricsFactory = metrics.factory
        let client = RedisClient(configuration: trusting, loop: thread.loop)
        defer { client.close() }
        try await client.ping()
        var refusing = try rediss(port: untrusted.port, caFile: certificates.caFile)
        refusing.metricsFactory = metrics.factory
        let refused = RedisClient(configuration: refusing, loop: thread.loop)
        defer { refused.close() }
        await #expect(throws: (any Error).self) { try await refused.ping() }
        func count(_ outcome: String) -> Int {
            Self.value(metrics.render(extra: []), #"evserver_redis_tls_handshakes_total{outcome="\#(outcome)"}"#)
                .flatMap { Int($0) } ?? 0
        }
        for _ in 0..<100 where count("failed") == 0 { try await Task.sleep(for: .milliseconds(20)) }
        #expect(count("ok") == 1)
        #expect(count("failed") >= 1)
    }
}
