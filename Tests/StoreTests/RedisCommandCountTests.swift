import Foundation
import EvServer
import RedisSessionStore
import Testing
@testable import EvServerApp

/// Which Redis commands each kind of request costs, counted by a private redis-server's `INFO commandstats`:
/// express-session's resave / saveUninitialized / rolling semantics, and the round-trip budget (a read is one
/// `GETEX`, a write `GETEX` + one commit-script `EVALSHA`, a new session one `EVALSHA`, plain HTTP nothing).
@Suite struct RedisCommandCountTests {
    /// Runs `request` and returns the commands it caused (connection handshakes and INFO itself excluded).
    func commands(_ redis: PrivateRedis, _ request: () throws -> Void) async throws -> [String: Int] {
        let before = try await redis.commandCounts()
        try request()
        let after = try await redis.commandCounts()
        var delta: [String: Int] = [:]
        for (name, calls) in after where !["info", "ping", "script|load", "select", "auth"].contains(name) {
            let change = calls - (before[name] ?? 0)
            if change != 0 { delta[name] = change }
        }
        // commandstats also counts the GET and SET the commit script runs inside Redis; without
        // contention every script run is one of each. Only what the server sent is wanted.
        let scripts = (delta["evalsha"] ?? 0) + (delta["eval"] ?? 0)
        for inner in ["get", "set"] {
            let sent = (delta[inner] ?? 0) - scripts
            delta[inner] = sent > 0 ? sent : nil
        }
        return delta
    }

    func expectCommands(_ redis: PrivateRedis, _ expected: [String: Int], sourceLocation: SourceLocation = #_sourceLocation,
                        _ request: () throws -> Void) async throws {
        let actual = try await commands(redis, request)
        #expect(actual == expected, "Redis commands: \(actual)", sourceLocation: sourceLocation)
    }

    func withCountingServer(_ arguments: [String], _ body: (DemoServer, PrivateRedis) async throws -> Void) async throws {
        let redis = try PrivateRedis()
        try await withDemo(arguments + ["--threads", "1"], redisPort: redis.port) { app in
            // Warm up: connect, and let the commit script be cached (the first EVALSHA meets NOSCRIPT).
            let warm = try app.client()
            _ = try warm.request("GET", "/")
            _ = try warm.request("GET", "/views")
            try await body(app, redis)
        }
    }

    @Test func defaultsCostOneCommandToReadTwoToWriteOneToCreateAndNoneWithoutSession() async throws {
        try await withCountingServer([]) { app, redis in
            let client = try app.client()
            try await expectCommands(redis, ["evalsha": 1]) { _ = try client.request("GET", "/") }
            try await expectCommands(redis, ["getex": 1]) { _ = try client.request("GET", "/login") }
            try await expectCommands(redis, ["getex": 1, "evalsha": 1]) { _ = try client.request("GET", "/views") }
            let anonymous = try app.client()
            try await expectCommands(redis, [:]) { _ = try anonymous.request("GET", "/login") }
            try await expectCommands(redis, [:]) { _ = try anonymous.request("GET", "/hello") }
            #expect(anonymous.cookieJar.isEmpty, "an uninitialized session must not be saved nor sent")
        }
    }

    @Test func resaveSavesUnmodifiedSessions() async throws {
        try await withCountingServer(["--resave", "true"]) { app, redis in
            let client = try app.client()
            _ = try client.request("GET", "/")
            try await expectCommands(redis, ["getex": 1, "evalsha": 1]) { _ = try client.request("GET", "/login") }
        }
    }

    @Test func saveUninitializedStoresAndSendsUntouchedNewSessions() async throws {
        try await withCountingServer(["--save-uninitialized", "true"]) { app, redis in
            let client = try app.client()
            try await expectCommands(redis, ["evalsha": 1]) { _ = try client.request("GET", "/login") }
            #expect(client.cookieJar["connect.sid"] != nil)
        }
    }

    @Test func rollingSendsTheCookieOnEveryResponseWithoutExtraWrites() async throws {
        try await withCountingServer(["--rolling", "true", "--max-age", "600"]) { app, redis in
            let client = try app.client()
            _ = try client.request("GET", "/")
            var response: TestHTTPResponse?
            try await expectCommands(redis, ["getex": 1]) { response = try client.request("GET", "/login") }
            #expect(response?.setCookies.first?.contains("Expires=") == true)
        }
        try await withCountingServer(["--max-age", "600"]) { app, _ in
            let client = try app.client()
            _ = try client.request("GET", "/")
            #expect(try client.request("GET", "/login").setCookies.isEmpty, "without rolling an unmodified session sends no cookie")
        }
    }

    @Test func aStoredCookieWithAnotherMaxAgeIsTouchedSeparately() async throws {
        // A session written with maxAge 600 read by an instance configured without one: the load's GETEX used the
        // configured lifetime, so the touch must put the session's own lifetime back.
        try await withCountingServer([]) { app, redis in
            let client = try app.client()
            _ = try client.request("GET", "/")
            let id = try #require(DemoServer.sessionID(fromCookie: client.cookieJar["connect.sid"] ?? ""))
            let expires = Date().addingTimeInterval(600)
            let value = SessionData(cookie: SessionCookie(originalMaxAge: 600_000, expires: expires),
                                    values: ["userName": "x"]).jsonBytes()
            let raw = redis.client()
            defer { raw.close() }
            try await raw.set(app.prefix + id, to: value, expiresIn: 600)
            try await expectCommands(redis, ["getex": 1, "expire": 1]) { _ = try client.request("GET", "/login") }
            guard case .integer(let ttl) = try await raw.send("TTL", app.prefix + id) else { Issue.record("no TTL"); return }
            #expect((580...600).contains(ttl))
        }
    }
}
