import EvServer
import Foundation
import Testing
@testable import EvServerApp
@testable import RedisSessionStore

// MARK: - What a signed-in user's requests cost

@Suite struct UserSessionCostTests {
    /// `INFO commandstats` of a private redis-server around each request of a signed-in user: a read is one GETEX
    /// and a write GETEX + one EVALSHA, as for a guest; the index is written only when its entry is due (made due
    /// here by moving the bound recorded in the session back, as a minute's wait would), and then not again.
    @Test func aSignedInUsersRequestsCostWhatAGuestsDoExceptOncePerInterval() async throws {
        let counting = RedisCommandCountTests()
        try await counting.withCountingServer([]) { app, redis in
            let device = try app.client()
            _ = try device.request("GET", "/")   // a guest with a stored session first
            var signIn: TestHTTPResponse?
            let signInCost = try await counting.commands(redis) {
                signIn = try device.request("POST", "/signin", headers: ["Content-Type": "application/json"],
                                            body: #"{"user":"\#(freshUser())"}"#)
            }
            #expect(signIn?.status == 200)
            // Load, the new session, its index entry, the old id's DEL, the end-of-request save.
            #expect(signInCost["getex"] == 1 && signInCost["evalsha"] == 3 && signInCost["del"] == 1, "\(signInCost)")
            try await counting.expectCommands(redis, ["getex": 1]) { _ = try device.request("GET", "/login") }
            try await counting.expectCommands(redis, ["getex": 1, "evalsha": 1]) {
                _ = try device.request("GET", "/views")
            }
            try await counting.expectCommands(redis, ["getex": 1]) { _ = try device.request("GET", "/login") }
            // Due: the entry is rewritten (one script on the index), and its bound saved with the session.
            let id = try #require(device.sessionID)
            let raw = redis.client()
            defer { raw.close() }
            let stored = String(decoding: try #require(try await raw.get(app.prefix + id)), as: UTF8.self)
            let due = stored.replacingOccurrences(of: #""indexedUntil":[0-9]+"#, with: #""indexedUntil":1"#,
                                                  options: .regularExpression)
            #expect(due != stored)
            _ = try await raw.send("SET", app.prefix + id, due, "KEEPTTL")
            let rewrite = try await counting.commands(redis) { _ = try device.request("GET", "/login") }
            #expect(rewrite["getex"] == 1 && rewrite["evalsha"] == 2 && rewrite["zadd"] == 1, "\(rewrite)")
            // And not again within the interval (a minute with the default lifetime of a day).
            try await counting.expectCommands(redis, ["getex": 1]) { _ = try device.request("GET", "/login") }
            try await counting.expectCommands(redis, ["getex": 1, "evalsha": 1]) {
                _ = try device.request("GET", "/views")
            }
            print("UserSessionCostTests: sign-in \(signInCost); read {getex: 1}, write {getex: 1, evalsha: 1}, "
                + "due once: \(rewrite)")
        }
    }
}
