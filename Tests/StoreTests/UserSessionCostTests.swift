import EvServer
import Foundation
import Testing
@testable import EvServerApp
@testable import RedisSessionStore

// MARK: - What a signed-in user's requests cost

@Suite struct UserSessionCostTests {
    /// `INFO commandstats` of a private redis-server around each request of a signed-in user: a read is one GETEX
    /// and a write GETEX + one EVALSHA, as for a guest; the index is written only when its entry is due (here,
    /// with a 20 s lifetime, 2 s after the sign-in), and then not again.
    @Test func aSignedInUsersRequestsCostWhatAGuestsDoExceptOncePerInterval() async throws {
        let counting = RedisCommandCountTests()
        try await counting.withCountingServer(["--max-age", "20"]) { app, redis in
            let device = try app.client()
            let signIn = try device.request("POST", "/signin", headers: ["Content-Type": "application/json"],
                                            body: #"{"user":"\#(freshUser())"}"#)
            #expect(signIn.status == 200)
            try await counting.expectCommands(redis, ["getex": 1]) { _ = try device.request("GET", "/login") }
            try await counting.expectCommands(redis, ["getex": 1, "evalsha": 1]) {
                _ = try device.request("GET", "/views")
            }
            try await counting.expectCommands(redis, ["getex": 1]) { _ = try device.request("GET", "/login") }
            // Due: the entry is rewritten (one script on the index), and its bound saved with the session.
            try await Task.sleep(for: .milliseconds(2100))
            let due = try await counting.commands(redis) { _ = try device.request("GET", "/login") }
            #expect(due["getex"] == 1 && due["evalsha"] == 2 && due["zadd"] == 1, "\(due)")
            // And not again within the interval.
            try await counting.expectCommands(redis, ["getex": 1]) { _ = try device.request("GET", "/login") }
            try await counting.expectCommands(redis, ["getex": 1, "evalsha": 1]) {
                _ = try device.request("GET", "/views")
            }
            print("UserSessionCostTests: read {getex: 1}, write {getex: 1, evalsha: 1}, due once: \(due)")
        }
    }
}
