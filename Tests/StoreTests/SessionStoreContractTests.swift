import EvServer
import Foundation
import Synchronization
import Testing
@testable import RedisSessionStore

// The SessionStore contract, written once and run against every store (as each scs store repeats the same
// Find/Commit/Delete tests). Redis is the real server named by REDIS_HOST/REDIS_PORT, never a mock.

// MARK: - Test support shared by the session tests

/// A clock tests move by hand.
final class TestClock: Sendable {
    private let current: Mutex<Date>
    init(_ start: Date = Date(timeIntervalSince1970: 1_764_583_200)) { current = Mutex(start) }   // 2025-12-01T10:00Z
    func now() -> Date { current.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { current.withLock { $0 = $0.addingTimeInterval(seconds) } }
    var closure: @Sendable () -> Date { { self.now() } }
}

/// The Redis server the tests use. Tests that need it fail (never skip) when it does not answer.
enum TestRedis {
    struct Unavailable: Error, CustomStringConvertible {
        let description: String
    }

    static var configuration: RedisConfiguration {
        let environment = ProcessInfo.processInfo.environment
        return RedisConfiguration(host: environment["REDIS_HOST"] ?? "127.0.0.1",
                                  port: environment["REDIS_PORT"].flatMap(Int.init) ?? 6379)
    }

    /// A connected client on a loop thread of its own; call `close()` when done.
    final class Connection: Sendable {
        let thread: EventLoopThread
        let client: RedisClient
        init(thread: EventLoopThread, client: RedisClient) {
            self.thread = thread
            self.client = client
        }
        func close() {
            client.close()
            thread.shutdown()
        }
    }

    static func connect() async throws -> Connection {
        let configuration = Self.configuration
        let thread = try EventLoopThread(name: "redis-test")
        let client = RedisClient(configuration: configuration, loop: thread.loop)
        var lastError: (any Error)?
        // The client connects in the background: give it a moment.
        for _ in 0..<20 {
            do {
                try await client.ping()
                return Connection(thread: thread, client: client)
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        client.close()
        thread.shutdown()
        throw Unavailable(description: "Redis is not answering at \(configuration.host):\(configuration.port) "
            + "(\(lastError.map { "\($0)" } ?? "no reply")). Start one with `redis-server --port 6390 --save '' "
            + "--appendonly no --daemonize yes` and run the tests with REDIS_PORT=6390.")
    }
}

extension RedisValue {
    var integer: Int? {
        if case .integer(let value) = self { return value }
        return nil
    }
    var bytes: [UInt8]? {
        if case .bulkString(let value) = self { return value }
        return nil
    }
}

// MARK: - Fixtures

enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case memory, redis
    var testDescription: String { rawValue }
}

/// One store under test, with the few things the contract needs that the protocol does not offer.
protocol StoreFixture: Sendable {
    var store: any SessionStore { get }
    /// Another store on the same backend but a separate namespace (another prefix, another instance).
    func sibling() -> any SessionStore
    /// Puts raw bytes under `id`, bypassing encoding.
    func writeGarbage(_ id: String, _ bytes: [UInt8]) async throws
    /// Seconds until `id` expires, or nil when it is not held.
    func secondsToLive(_ id: String) async throws -> Int?
    /// The present, as the store sees it.
    func now() -> Date
    /// Lets `seconds` pass for the store (a clock move for memory, a real wait for Redis).
    func wait(_ seconds: TimeInterval) async throws
    func close() async
}

struct MemoryFixture: StoreFixture {
    let clock = TestClock()
    let memory: MemorySessionStore
    init() { memory = MemorySessionStore(now: clock.closure) }
    var store: any SessionStore { memory }
    func sibling() -> any SessionStore { MemorySessionStore(now: clock.closure) }
    func writeGarbage(_ id: String, _ bytes: [UInt8]) async throws { memory.storeRaw(id, bytes) }
    func secondsToLive(_ id: String) async throws -> Int? {
        memory.expiry(of: id).map { Int(($0.timeIntervalSince(clock.now())).rounded(.up)) }
    }
    func now() -> Date { clock.now() }
    func wait(_ seconds: TimeInterval) async throws { clock.advance(seconds) }
    func close() async {}
}

struct RedisFixture: StoreFixture {
    let connection: TestRedis.Connection
    let prefix = "test:\(UUID().uuidString):sess:"
    let redis: RedisSessionStore

    init() async throws {
        connection = try await TestRedis.connect()
        redis = RedisSessionStore(client: connection.client, prefix: prefix)
    }

    var store: any SessionStore { redis }
    func sibling() -> any SessionStore {
        RedisSessionStore(client: connection.client, prefix: "test:\(UUID().uuidString):sess:")
    }
    func writeGarbage(_ id: String, _ bytes: [UInt8]) async throws {
        try await connection.client.set(prefix + id, to: bytes, expiresIn: 60)
    }
    func secondsToLive(_ id: String) async throws -> Int? {
        let ttl = try await connection.client.send("TTL", prefix + id).integer
        return ttl.flatMap { $0 >= 0 ? $0 : nil }
    }
    func now() -> Date { Date() }
    func wait(_ seconds: TimeInterval) async throws { try await Task.sleep(for: .seconds(seconds)) }
    func close() async {
        try? await redis.clear()
        connection.close()
    }
}

func makeFixture(_ kind: StoreKind) async throws -> any StoreFixture {
    switch kind {
    case .memory: MemoryFixture()
    case .redis: try await RedisFixture()
    }
}

/// Runs `body` with a fresh fixture and always closes it.
func withFixture(_ kind: StoreKind, _ body: (any StoreFixture) async throws -> Void) async throws {
    let fixture = try await makeFixture(kind)
    do {
        try await body(fixture)
    } catch {
        await fixture.close()
        throw error
    }
    await fixture.close()
}

/// A session with an expiry `seconds` after `now` and a few values of every kind.
func sampleSession(expiringIn seconds: Int64?, now: Date, values: JSONObject? = nil) -> SessionData {
    var cookie = SessionCookie()
    cookie.setMaxAge(seconds.map { $0 * 1000 }, now: now)
    return SessionData(cookie: cookie, values: values ?? [
        "userName": "Aditya@123", "visits": 3, "big": .number("12345678901234567890"), "ratio": 0.25,
        "flags": [true, false, nil], "profile": ["lang": "fr", "tags": ["a", "é"]],
    ])
}

// MARK: - The contract

@Suite struct SessionStoreContractTests {
    @Test(arguments: StoreKind.allCases)
    func getOfMissingIdIsNil(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let loaded = try await fixture.store.get(SessionID.generate())
            #expect(loaded == nil)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func setThenGetRoundTrips(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let id = SessionID.generate()
            let session = sampleSession(expiringIn: 3600, now: fixture.now())
            try await fixture.store.set(id, session)
            #expect(try await fixture.store.get(id) == session)
            // Browser-session cookies round-trip too.
            let browserSession = sampleSession(expiringIn: nil, now: fixture.now())
            try await fixture.store.set(id, browserSession)
            #expect(try await fixture.store.get(id) == browserSession)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func setOverwrites(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let id = SessionID.generate()
            try await fixture.store.set(id, sampleSession(expiringIn: 3600, now: fixture.now()))
            let replacement = sampleSession(expiringIn: 60, now: fixture.now(), values: ["only": "this"])
            try await fixture.store.set(id, replacement)
            #expect(try await fixture.store.get(id) == replacement)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func valuesAreCopiesNotShared(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let id = SessionID.generate()
            var session = sampleSession(expiringIn: 3600, now: fixture.now())
            try await fixture.store.set(id, session)
            session.values["visits"] = 4
            #expect(try await fixture.store.get(id)?.values["visits"] == 3)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func destroyRemovesAndIgnoresMissingIds(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let id = SessionID.generate()
            try await fixture.store.destroy(id)   // missing: no-op, no error
            try await fixture.store.set(id, sampleSession(expiringIn: 3600, now: fixture.now()))
            try await fixture.store.destroy(id)
            #expect(try await fixture.store.get(id) == nil)
            try await fixture.store.destroy(id)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func expiryFollowsTheCookieOrTheDefaultTTL(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let id = SessionID.generate()
            try await fixture.store.set(id, sampleSession(expiringIn: 100, now: fixture.now()))
            #expect((80...100).contains(try await fixture.secondsToLive(id) ?? -1))
            try await fixture.store.set(id, sampleSession(expiringIn: nil, now: fixture.now()))
            #expect((86380...86400).contains(try await fixture.secondsToLive(id) ?? -1))
        }
    }

    @Test(arguments: StoreKind.allCases)
    func touchRefreshesExpiryAndKeepsValues(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let id = SessionID.generate()
            let session = sampleSession(expiringIn: 100, now: fixture.now())
            try await fixture.store.set(id, session)
            var touched = sampleSession(expiringIn: 500, now: fixture.now(), values: ["ignored": true])
            touched.cookie.path = "/"
            try await fixture.store.touch(id, touched)
            #expect((480...500).contains(try await fixture.secondsToLive(id) ?? -1))
            #expect(try await fixture.store.get(id)?.values == session.values)
            // Touching a missing session does not create it.
            let missing = SessionID.generate()
            try await fixture.store.touch(missing, touched)
            #expect(try await fixture.store.get(missing) == nil)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func expiredSessionsLoadAsNil(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let past = SessionID.generate()
            try await fixture.store.set(past, sampleSession(expiringIn: -10, now: fixture.now()))
            #expect(try await fixture.store.get(past) == nil)

            let soon = SessionID.generate()
            var session = sampleSession(expiringIn: nil, now: fixture.now())
            session.cookie.setMaxAge(2000, now: fixture.now())   // two seconds
            let setAt = ContinuousClock.now
            try await fixture.store.set(soon, session)
            let loaded = try await fixture.store.get(soon)
            // Still there while it lives (a suite starting up can stall this task for a second or more: then the
            // read says nothing about the store).
            if ContinuousClock.now - setAt < .milliseconds(1800) { #expect(loaded != nil) }
            try await fixture.wait(3.1)
            #expect(try await fixture.store.get(soon) == nil)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func listingSeesOnlyItsOwnNamespace(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let other = fixture.sibling()
            let ids = (0..<5).map { _ in SessionID.generate() }
            for id in ids { try await fixture.store.set(id, sampleSession(expiringIn: 3600, now: fixture.now())) }
            let foreign = SessionID.generate()
            try await other.set(foreign, sampleSession(expiringIn: 3600, now: fixture.now()))

            #expect(try await fixture.store.length() == 5)
            let all = try await fixture.store.all()
            #expect(Set(all.keys) == Set(ids))
            #expect(all[ids[0]]?.values == sampleSession(expiringIn: 3600, now: fixture.now()).values)

            try await fixture.store.clear()
            #expect(try await fixture.store.length() == 0)
            #expect(try await fixture.store.all().isEmpty)
            #expect(try await other.get(foreign) != nil)
            #expect(try await other.length() == 1)
            try await other.clear()
        }
    }

    @Test(arguments: StoreKind.allCases)
    func listingScalesPastOneScanPage(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let ids = (0..<250).map { _ in SessionID.generate() }
            let session = sampleSession(expiringIn: 3600, now: fixture.now(), values: ["n": 1])
            for id in ids { try await fixture.store.set(id, session) }
            #expect(try await fixture.store.length() == 250)
            #expect(try await fixture.store.all().count == 250)
            try await fixture.store.clear()
            #expect(try await fixture.store.length() == 0)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func undecodableValuesLoadAsNil(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let cases: [[UInt8]] = [
                Array("not json".utf8), Array("[1,2]".utf8), Array(#"{"cookie":1}"#.utf8), Array("{}".utf8),
                Array(#"{"cookie":{"path":"/"},"x":"#.utf8), [0xFF, 0xFE], [],
            ]
            for bytes in cases {
                let id = SessionID.generate()
                try await fixture.writeGarbage(id, bytes)
                #expect(try await fixture.store.get(id) == nil, "for \(String(decoding: bytes, as: UTF8.self))")
            }
            // A good one among them still loads, and listing skips the bad ones.
            let good = SessionID.generate()
            try await fixture.store.set(good, sampleSession(expiringIn: 3600, now: fixture.now()))
            #expect(try await fixture.store.get(good) != nil)
            #expect(try await fixture.store.all().keys.contains(good))
        }
    }

    @Test(arguments: StoreKind.allCases)
    func pingAnswers(kind: StoreKind) async throws {
        try await withFixture(kind) { fixture in
            let store = fixture.store
            try await store.ping()
        }
    }
}

// MARK: - Redis specifics

@Suite struct RedisSessionStoreTests {
    @Test func savedSessionIsExpressJSONUnderSessPrefix() async throws {
        let connection = try await TestRedis.connect()
        defer { connection.close() }
        let store = RedisSessionStore(client: connection.client)   // default "sess:" prefix, default ttl
        let middleware = try SessionMiddleware(store: store, secrets: ["keyboard cat"],
                                               cookie: SessionCookieOptions(maxAge: 86_400_000))
        let request = Request(method: .get, uri: "/login")
        try await middleware.handle(request, Response(), next: Next {
            request.session["userName"] = "Aditya@123"
        })
        let id = request.session.id

        let raw = try await connection.client.send("GET", "sess:\(id)").bytes
        let text = String(decoding: try #require(raw), as: UTF8.self)
        let expires = try #require(request.session.cookie.expires)
        let iso = ISO8601Milliseconds.format(expires.javaScriptMilliseconds)
        #expect(text == #"{"cookie":{"originalMaxAge":86400000,"expires":"\#(iso)","httpOnly":true,"path":"/","sameSite":"lax"},"userName":"Aditya@123"}"#)
        let ttl = try #require(try await connection.client.send("TTL", "sess:\(id)").integer)
        #expect((86380...86400).contains(ttl))
        try await store.destroy(id)
    }

    @Test func browserSessionCookieUsesTheDefaultTTL() async throws {
        let connection = try await TestRedis.connect()
        defer { connection.close() }
        let prefix = "test:\(UUID().uuidString):"
        let store = RedisSessionStore(client: connection.client, prefix: prefix, ttl: 1234)
        let id = SessionID.generate()
        try await store.set(id, sampleSession(expiringIn: nil, now: Date()))
        let ttl = try await connection.client.send("TTL", prefix + id).integer
        #expect((1214...1234).contains(ttl ?? -1))
        try await store.clear()
    }

    @Test func ttlIsSecondsUntilExpiresRoundedUp() {
        let now = Date(timeIntervalSince1970: 1_000_000)
        func ttl(_ offset: TimeInterval?) -> Int {
            var session = SessionData()
            session.cookie.expires = offset.map { now.addingTimeInterval($0) }
            return RedisSessionStore.ttl(for: session, defaultTTL: 86400, now: now)
        }
        #expect(ttl(10.001) == 11)
        #expect(ttl(10) == 10)
        #expect(ttl(0.2) == 1)
        #expect(ttl(0) == 0)
        #expect(ttl(-5.5) == -5)
        #expect(ttl(nil) == 86400)
    }

    @Test func disableTouchLeavesTheTTLAlone() async throws {
        let connection = try await TestRedis.connect()
        defer { connection.close() }
        let prefix = "test:\(UUID().uuidString):"
        let store = RedisSessionStore(client: connection.client, prefix: prefix, disableTouch: true)
        let id = SessionID.generate()
        try await store.set(id, sampleSession(expiringIn: 100, now: Date()))
        try await store.touch(id, sampleSession(expiringIn: 5000, now: Date()))
        let ttl = try await connection.client.send("TTL", prefix + id).integer
        #expect((80...100).contains(ttl ?? -1))
        try await store.clear()
    }

    @Test func globCharactersInThePrefixAreEscaped() async throws {
        let connection = try await TestRedis.connect()
        defer { connection.close() }
        let base = "test:\(UUID().uuidString)"
        let store = RedisSessionStore(client: connection.client, prefix: "\(base):s[1]*:")
        let lookalike = RedisSessionStore(client: connection.client, prefix: "\(base):s1x:")
        #expect(store.matchPattern == "\(base):s\\[1\\]\\*:*")
        try await store.set("a", sampleSession(expiringIn: 60, now: Date()))
        try await lookalike.set("b", sampleSession(expiringIn: 60, now: Date()))
        #expect(try await store.length() == 1)
        try await store.clear()
        #expect(try await lookalike.length() == 1)
        try await lookalike.clear()
    }

    @Test func urlStoreMakesOneClientPerLoopAndWorksOffLoop() async throws {
        let configuration = TestRedis.configuration
        let url = "redis://\(configuration.host):\(configuration.port)/0"
        _ = try await TestRedis.connect().close()   // fails clearly when Redis is absent
        let store = try RedisSessionStore(url: url, prefix: "test:\(UUID().uuidString):")
        let id = SessionID.generate()
        let session = sampleSession(expiringIn: 60, now: Date())
        // Off any loop: the store's own loop thread.
        try await store.set(id, session)
        // On a request loop: a client made for that loop.
        let thread = try EventLoopThread(name: "request-loop")
        defer { thread.shutdown() }
        let loaded = try await Task(executorPreference: thread.loop) { () async throws -> SessionData? in
            precondition(EventLoop.current === thread.loop)
            return try await store.get(id)
        }.value
        #expect(loaded == session)
        try await store.clear()
    }

    @Test func middlewareOnARequestLoopSavesAndTouchesThroughRedis() async throws {
        let connection = try await TestRedis.connect()
        defer { connection.close() }
        let configuration = TestRedis.configuration
        let prefix = "test:\(UUID().uuidString):"
        let store = try RedisSessionStore(url: "redis://\(configuration.host):\(configuration.port)", prefix: prefix)
        let middleware = try SessionMiddleware(store: store, configuration: SessionConfiguration(
            secrets: ["keyboard cat"], cookie: SessionCookieOptions(maxAge: 120_000)))
        let thread = try EventLoopThread(name: "server-loop")
        defer { thread.shutdown() }

        // As the server runs handlers: a task on the request's loop.
        @Sendable func run(cookie: String?, write: Bool) async throws -> (setCookie: String?, id: String) {
            try await Task(executorPreference: thread.loop) { () async throws -> (String?, String) in
                let request = Request(method: .get, uri: "/", headers: HTTPHeaders(cookie.map { [("Cookie", $0)] } ?? []))
                let response = Response()
                try await middleware.handle(request, response, next: Next {
                    if write { request.session["visits"] = .number(String((request.session["visits"]?.intValue ?? 0) + 1)) }
                })
                return (response.headers["Set-Cookie"], request.session.id)
            }.value
        }

        let first = try await run(cookie: nil, write: true)
        let cookie = try #require(first.setCookie.map { String($0.prefix { $0 != ";" }) })
        #expect((110...120).contains(try await connection.client.send("TTL", prefix + first.id).integer ?? -1))
        try await Task.sleep(for: .milliseconds(1100))
        #expect((108...119).contains(try await connection.client.send("TTL", prefix + first.id).integer ?? -1))
        let second = try await run(cookie: cookie, write: false)   // unmodified: EXPIRE only
        #expect(second.id == first.id && second.setCookie == nil)
        #expect((110...120).contains(try await connection.client.send("TTL", prefix + first.id).integer ?? -1))
        let third = try await run(cookie: cookie, write: true)
        #expect(third.setCookie != nil)   // modified, with an expiry: a fresh cookie
        let stored = try await connection.client.get(prefix + first.id).map { String(decoding: $0, as: UTF8.self) }
        #expect(stored?.hasSuffix(#","visits":2}"#) == true)
        #expect(middleware.metrics.saved == 2 && middleware.metrics.touched == 1)
        try await store.clear()
    }

    @Test func badURLThrows() {
        #expect(throws: (any Error).self) { try RedisSessionStore(url: "http://nope") }
    }
}
