import Foundation
import EvServer
import RedisSessionStore
import Testing
@testable import EvServerApp

// The demo server against a redis-server of the test's own that the test kills (SIGKILL) or pauses: session routes
// answer 503 + Retry-After: 1 + JSON within the Redis deadline, /healthz stays 200, /readyz says 503; when Redis is
// back the same server answers 200 again, /readyz within 2 s, and sessions written before the crash are still
// there (the private Redis keeps an fsync-always AOF).

/// An `evserver` demo on port 0 against a private redis-server.
final class OutageServer {
    static let secret = "test secret"
    static let deadlineMilliseconds = 300

    let redis: PrivateRedis
    let server: RunningServer
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("evserver-outage-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // Later arguments win over PrivateRedis's defaults: persist every write before acknowledging it, so a
        // SIGKILL loses nothing that was acknowledged.
        redis = try PrivateRedis(arguments: ["--appendonly", "yes", "--appendfsync", "always",
                                             "--dir", directory.path])
        let options = try ServerOptions.parse([
            "--port", "0", "--threads", "2", "--redis-url", "redis://127.0.0.1:\(redis.port)/0",
            "--secret", Self.secret, "--instance", "outage", "--redis-timeout", "\(Self.deadlineMilliseconds)",
        ])
        let demo = try DemoApp(configuration: try options.resolve(environment: [:]))
        server = try demo.makeApplication().start(host: "127.0.0.1", port: 0, threads: 2)
    }

    /// A new connection each time: with two loops, new connections land on either one (SO_REUSEPORT), and each
    /// loop has its own Redis connection, so one connection would only ever see one of them.
    func request(_ method: String, _ path: String, cookie: String? = nil,
                 body: String? = nil) throws -> (TestHTTPResponse, Duration) {
        let client = try TestHTTPClient(port: server.port)
        client.usesCookieJar = false
        var headers: [(String, String)] = []
        if let cookie { headers.append(("Cookie", "connect.sid=\(cookie)")) }
        if body != nil { headers.append(("Content-Type", "application/json")) }
        let start = ContinuousClock.now
        let response: TestHTTPResponse
        switch headers.count {
        case 0: response = try client.request(method, path, body: body ?? "")
        case 1: response = try client.request(method, path, headers: [headers[0].0: headers[0].1], body: body ?? "")
        default:
            response = try client.request(method, path, headers: [headers[0].0: headers[0].1,
                                                                   headers[1].0: headers[1].1], body: body ?? "")
        }
        return (response, ContinuousClock.now - start)
    }

    /// Polls /readyz on new connections until `count` answers in a row are 200, or `timeout` passes.
    /// - Returns: the time until the first of those answers, or nil.
    func waitUntilReady(consecutive count: Int = 6, timeout: Duration) throws -> Duration? {
        let start = ContinuousClock.now
        var streak = 0
        var firstOfStreak: Duration?
        while ContinuousClock.now - start < timeout {
            let (response, _) = try request("GET", "/readyz")
            if response.status == 200 {
                if streak == 0 { firstOfStreak = ContinuousClock.now - start }
                streak += 1
                if streak == count { return firstOfStreak }
            } else {
                streak = 0
            }
            usleep(20_000)
        }
        return nil
    }

    func stop() async {
        await server.shutdown(timeout: .seconds(2))
        redis.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

func withOutageServer(_ body: (OutageServer) async throws -> Void) async throws {
    let server = try OutageServer()
    do {
        try await body(server)
    } catch {
        await server.stop()
        throw error
    }
    await server.stop()
}

// In ScaleSuites (one suite at a time with the process-heavy ones): its deadlines measure the client, and a
// 10,000-user or 6-node-cluster suite saturating both cores at the same moment made them measure the machine.
extension ScaleSuites {
    @Suite struct StoreOutageTests {
        /// The deadline plus what a loaded 2-core machine adds to one loopback HTTP request.
        static let bound = Duration.milliseconds(OutageServer.deadlineMilliseconds + 400)

        static func expectUnavailable(_ response: TestHTTPResponse, _ elapsed: Duration, _ what: String,
                                      sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(response.status == 503, "\(what): \(response.status) \(response.text)", sourceLocation: sourceLocation)
            #expect(response.headers["Retry-After"] == "1", "\(what)", sourceLocation: sourceLocation)
            #expect(response.headers["Content-Type"]?.hasPrefix("application/json") == true, "\(what)",
                    sourceLocation: sourceLocation)
            let json = try? JSONValue(parsing: response.body)
            #expect(json?["error"]?.stringValue?.isEmpty == false, "\(what): body \(response.text)",
                    sourceLocation: sourceLocation)
            #expect(elapsed <= bound, "\(what) took \(elapsed)", sourceLocation: sourceLocation)
        }

        @Test func killedRedisIsAnswered503AndTheSameServerRecovers() async throws {
            try await withOutageServer { app in
                // A session, acknowledged before the crash.
                let (first, _) = try app.request("GET", "/views")
                #expect(first.status == 200)
                let cookie = try #require(first.cookies["connect.sid"])
                let (second, _) = try app.request("GET", "/views", cookie: cookie)
                #expect(second.text == #"{"views":2,"instance":"outage"}"#)

                app.redis.stop()   // SIGKILL

                for attempt in 1...6 {
                    let (views, viewsTime) = try app.request("GET", "/views", cookie: cookie)
                    Self.expectUnavailable(views, viewsTime, "GET /views #\(attempt)")
                    let (login, loginTime) = try app.request("GET", "/login", cookie: cookie)
                    Self.expectUnavailable(login, loginTime, "GET /login #\(attempt)")
                    let (post, postTime) = try app.request("POST", "/session", cookie: cookie, body: #"{"a":1}"#)
                    Self.expectUnavailable(post, postTime, "POST /session #\(attempt)")
                    // A new session has to be saved too: no store, no session.
                    let (fresh, freshTime) = try app.request("GET", "/views")
                    Self.expectUnavailable(fresh, freshTime, "GET /views without a cookie #\(attempt)")
                    #expect(fresh.setCookies.isEmpty, "a session that was not saved must not be handed out")
                }
                // A request that needs no session does not need the store.
                let (guest, _) = try app.request("GET", "/login")
                #expect(guest.status == 200)
                #expect(guest.text == "Welcome guest")
                for _ in 1...4 {
                    let (health, _) = try app.request("GET", "/healthz")
                    #expect(health.status == 200)
                    #expect(health.text == "ok")
                    let (ready, readyTime) = try app.request("GET", "/readyz")
                    #expect(ready.status == 503)
                    #expect(ready.headers["Retry-After"] == "1")
                    #expect(readyTime <= Self.bound, "/readyz took \(readyTime)")
                }

                try app.redis.start()   // same port, same AOF; returns once Redis answers PING
                let readyAfter = try app.waitUntilReady(timeout: .seconds(5))
                let after = try #require(readyAfter, "/readyz never came back")
                #expect(after <= .seconds(2), "/readyz took \(after) to answer 200 after Redis came back")

                // Both loops serve sessions again, and the session written before the crash survived it.
                var views = 2
                for _ in 1...6 {
                    let (response, _) = try app.request("GET", "/views", cookie: cookie)
                    #expect(response.status == 200, "\(response.status) \(response.text)")
                    views += 1
                    #expect(response.text == #"{"views":\#(views),"instance":"outage"}"#)
                    #expect(response.setCookies.isEmpty, "the old session must be loaded, not replaced")
                }
                #expect(try app.request("GET", "/views").0.status == 200)
            }
        }

        @Test func silentRedisIsAnsweredWithinTheDeadline() async throws {
            try await withOutageServer { app in
                let (first, _) = try app.request("GET", "/views")
                let cookie = try #require(first.cookies["connect.sid"])

                // CLIENT PAUSE: Redis accepts commands and answers nothing for 6 s (long enough that the probes below
                // all fall inside it even on a loaded machine). Sent on a connection of its own from a thread of its
                // own: through the tests' shared Redis loop, busy with the rest of the suite, the reply took up to
                // seconds, and a pause that ended before the probes made them pass (seen under load).
                let port = app.redis.port
                let pausedAt = ContinuousClock.now
                let reply = try await onThread { inlineCommandReply(port: port, "CLIENT PAUSE 6000", capacity: 64) }
                #expect(reply.map { String(decoding: $0, as: UTF8.self) } == "+OK\r\n")
                // A probe sent 6 s or more after `pausedAt` may find the pause over (a machine loaded enough to stall this
                // thread that long): it may then be answered, and its increment counts.
                var answeredAfterThePause = 0
                for attempt in 1...3 {
                    let sent = ContinuousClock.now
                    let (views, viewsTime) = try app.request("GET", "/views", cookie: cookie)
                    if views.status == 200, sent - pausedAt >= .seconds(6) {
                        answeredAfterThePause += 1
                        break
                    }
                    Self.expectUnavailable(views, viewsTime, "GET /views while paused #\(attempt)")
                    if ContinuousClock.now - pausedAt > .milliseconds(1600) { break }
                }
                let (health, healthTime) = try app.request("GET", "/healthz")
                #expect(health.status == 200)
                #expect(healthTime < .milliseconds(200), "/healthz must not wait for Redis: \(healthTime)")

                // After the pause (and the client's reconnect), everything answers again and the session is intact.
                let ready = try app.waitUntilReady(timeout: .seconds(15))
                #expect(ready != nil, "/readyz never came back after the pause")
                // A request has 300 ms of Redis time in all here: on a loaded machine a first try can still miss it.
                var response = try app.request("GET", "/views", cookie: cookie).0
                for _ in 1..<5 where response.status == 503 {
                    usleep(100_000)
                    response = try app.request("GET", "/views", cookie: cookie).0
                }
                #expect(response.status == 200)
                #expect(response.text == #"{"views":\#(2 + answeredAfterThePause),"instance":"outage"}"#)
            }
        }
    }
}
