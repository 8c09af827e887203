import EvServer
import Foundation
import Testing
@testable import RedisSessionStore

// One request's session calls share one command timeout's worth of Redis time: a request whose load was slow has
// only the rest of the timeout for its save, so it is answered (503) within the timeout plus a little, not after
// one full timeout per call. A private redis-server, because CLIENT PAUSE stops every client of the server.

@Suite struct RequestBudgetTests {
    static let timeout = Duration.milliseconds(1000)

    @Test func aSlowLoadLeavesOnlyTheRestOfTheTimeoutForTheSave() async throws {
        let redis = try PrivateRedis()
        defer { redis.stop() }
        let store = RedisSessionStore(configuration: RedisConfiguration(port: redis.port, commandTimeout: Self.timeout),
                                      prefix: "budget:")
        #expect(store.requestTimeBudget == Self.timeout)
        let middleware = try SessionMiddleware(store: store, secrets: ["keyboard cat"])
        let adminThread = try EventLoopThread(name: "budget-admin")
        defer { adminThread.shutdown() }
        let admin = RedisClient(configuration: RedisConfiguration(port: redis.port), loop: adminThread.loop)
        defer { admin.close() }

        // A stored session to come back with.
        let first = Response()
        let created = Request(method: .get, uri: "/", headers: HTTPHeaders())
        try await middleware.handle(created, first, next: Next { created.session["n"] = 1 })
        let setCookie = try #require(first.headers.values("Set-Cookie").first)
        let cookie = String(setCookie.prefix { $0 != ";" })

        // The handler makes Redis slow for its reload (700 ms of a 1000 ms budget: it succeeds), then stalls Redis
        // for the save: the save may wait only the remaining ~300 ms.
        let request = Request(method: .get, uri: "/", headers: HTTPHeaders([("Cookie", cookie)]))
        var handlerStarted = ContinuousClock.now
        var reloadTook = Duration.zero
        var failure: (any Error)?
        do {
            try await middleware.handle(request, Response(), next: Next {
                handlerStarted = .now
                _ = try await admin.send("CLIENT", "PAUSE", "700")
                try await request.session.reload()
                reloadTook = ContinuousClock.now - handlerStarted
                request.session["n"] = 2
                _ = try await admin.send("CLIENT", "PAUSE", "5000")
            })
        } catch {
            failure = error
        }
        let elapsed = ContinuousClock.now - handlerStarted
        let httpError = try #require(failure as? HTTPError, "the save should have failed: \(String(describing: failure))")
        #expect(httpError.status == .serviceUnavailable)
        #expect(reloadTook >= .milliseconds(600), "the reload was not slowed down (\(reloadTook)): the test proves nothing")
        // Without a shared budget: 700 ms + a whole 1000 ms timeout for the save. With it: about 1000 ms in all.
        #expect(elapsed < Self.timeout + .milliseconds(350), "the request waited \(elapsed) on Redis")
    }
}
