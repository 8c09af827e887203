import Foundation
import EvServer
import RedisSessionStore
import Synchronization
import Testing
@testable import EvServerApp

/// Runs `body(i)` for i in 0..<count on `count` real threads released at once (blocking test clients would
/// otherwise share the two threads of the concurrency pool and never overlap).
func inParallelThreads<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) throws -> T) async throws -> [T] {
    let results = Mutex<[Int: Result<T, any Error>]>([:])
    let ready = Atomic<Int>(0)
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let group = DispatchGroup()
        for index in 0..<count {
            group.enter()
            Thread.detachNewThread {
                ready.add(1, ordering: .sequentiallyConsistent)
                while ready.load(ordering: .sequentiallyConsistent) < count { sched_yield() }
                let result = Result { try body(index) }
                results.withLock { $0[index] = result }
                group.leave()
            }
        }
        group.notify(queue: .global()) { continuation.resume() }
    }
    return try results.withLock { results in try (0..<count).map { try results[$0]!.get() } }
}

/// Requests of one session in flight at once lose nothing (the reliability issue's "concurrent requests").
@Suite struct ConcurrentSessionTests {
    /// Three instances on one Redis, one prefix, one secret: a load-balanced deployment in one process.
    func withThreeInstances(_ body: ([DemoServer]) async throws -> Void) async throws {
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        var servers: [DemoServer] = []
        do {
            for name in ["app1", "app2", "app3"] {
                servers.append(try DemoServer(prefix: prefix, instance: name))
            }
            try await body(servers)
        } catch {
            for server in servers { await server.stop() }
            throw error
        }
        for server in servers { await server.stop() }
    }

    @Test func twentyParallelWritesOfDifferentKeysThroughThreeInstancesAllLand() async throws {
        try await withThreeInstances { servers in
            let first = try servers[0].client()
            _ = try first.request("GET", "/")
            let cookie = try #require(first.cookieJar["connect.sid"])
            let ports = servers.map(\.server.port)

            let statuses = try await inParallelThreads(20) { index -> Int in
                let client = try TestHTTPClient(port: ports[index % 3])
                client.cookieJar["connect.sid"] = cookie
                return try client.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                          body: #"{"key\#(index)":\#(index)}"#).status
            }
            #expect(statuses == Array(repeating: 200, count: 20))

            let data = try JSONValue(parsing: try first.request("GET", "/session").body)["data"]?.objectValue
            for index in 0..<20 {
                #expect(data?["key\(index)"] == .number(String(index)), "key\(index) lost")
            }
            #expect(data?["userName"] == "Aditya@123")
        }
    }

    @Test func parallelWritesOfOneKeyLeaveOneOfTheWrittenValues() async throws {
        try await withThreeInstances { servers in
            let first = try servers[0].client()
            _ = try first.request("GET", "/")
            let cookie = try #require(first.cookieJar["connect.sid"])
            let ports = servers.map(\.server.port)
            let written = (0..<20).map { #"{"n":\#($0),"s":"\#(String(repeating: "v\($0)", count: 50))"}"# }

            let statuses = try await inParallelThreads(20) { index -> Int in
                let client = try TestHTTPClient(port: ports[index % 3])
                client.cookieJar["connect.sid"] = cookie
                return try client.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                          body: #"{"same":\#(written[index])}"#).status
            }
            #expect(statuses == Array(repeating: 200, count: 20))
            let same = try JSONValue(parsing: try first.request("GET", "/session").body)["data"]?["same"]
            let candidates = try written.map { try JSONValue(parsing: $0) }
            #expect(same.map { candidates.contains($0) } == true, "\(String(describing: same)) is not one of the writes")
        }
    }

    @Test func regeneratedAwaySessionIsNotRecreatedByAnOldCookie() async throws {
        try await withDemo { app in
            let client = try app.client()
            _ = try client.request("GET", "/")
            let oldCookie = try #require(client.cookieJar["connect.sid"])
            let oldID = try #require(DemoServer.sessionID(fromCookie: oldCookie))
            _ = try client.request("POST", "/logout")
            let late = try app.client()
            late.cookieJar["connect.sid"] = oldCookie
            #expect(try late.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                     body: #"{"late":true}"#).status == 200)
            #expect(try await app.stored(oldID) == nil)
        }
    }
}

/// The commit contract (changes merged onto what is stored; a destroyed session stays destroyed), both stores.
@Suite struct SessionCommitTests {
    static func stores() async throws -> [(String, any SessionStore)] {
        let redis = RedisSessionStore(client: TestRedis.client, prefix: "test:\(UUID().uuidString.prefix(8)):sess:")
        return [("memory", MemorySessionStore()), ("redis", redis)]
    }

    func write(_ updates: [(String, JSONValue?)], base: StoredSession?) -> SessionWrite {
        var values = base?.data.values ?? JSONObject()
        for (key, value) in updates { values[key] = value }
        return SessionWrite(cookie: SessionCookie(), changes: SessionChanges(updates: updates.map { (key: $0.0, value: $0.1) }),
                            values: values, base: base)
    }

    @Test func commitsFromOneStaleBaseMerge() async throws {
        for (name, store) in try await Self.stores() {
            let id = SessionID.generate()
            guard case .saved = try await store.commit(id, write([("a", 1)], base: nil)) else {
                Issue.record("\(name): create failed"); continue
            }
            let base = try #require(try await store.load(id, touchingWith: nil))
            // Two requests loaded the same version; both commit.
            _ = try await store.commit(id, write([("b", 2)], base: base))
            _ = try await store.commit(id, write([("c", 3), ("a", nil)], base: base))
            let values = try await store.get(id)?.values
            #expect(values?["a"] == nil, "\(name)")
            #expect(values?["b"] == 2, "\(name)")
            #expect(values?["c"] == 3, "\(name)")
            try await store.destroy(id)
        }
    }

    @Test func aDestroyedSessionStaysDestroyed() async throws {
        for (name, store) in try await Self.stores() {
            let id = SessionID.generate()
            _ = try await store.commit(id, write([("user", "x")], base: nil))
            let base = try #require(try await store.load(id, touchingWith: nil))
            try await store.destroy(id)   // logout in another request
            let result = try await store.commit(id, write([("late", true)], base: base))
            guard case .gone = result else {
                Issue.record("\(name): a late write re-created a destroyed session")
                continue
            }
            #expect(try await store.get(id) == nil, "\(name)")
        }
    }

    @Test func loadWithACookieRefreshesTheExpiry() async throws {
        let redis = RedisSessionStore(client: TestRedis.client, prefix: "test:\(UUID().uuidString.prefix(8)):sess:")
        let id = SessionID.generate()
        _ = try await redis.commit(id, write([("k", 1)], base: nil))
        _ = try await TestRedis.client.send("EXPIRE", redis.key(for: id), "100")
        let loaded = try await redis.load(id, touchingWith: SessionCookie())
        #expect(loaded?.expiryRefreshed == true)
        guard case .integer(let ttl) = try await TestRedis.client.send("TTL", redis.key(for: id)) else {
            Issue.record("no TTL"); return
        }
        #expect((86380...86400).contains(ttl))
        try await redis.destroy(id)
    }
}
