import EvServer
import Foundation
import Synchronization
import Testing
@testable import EvServerApp
@testable import RedisSessionStore

// Hot sessions: many requests of one session at once. A commit applies its changes onto whatever is stored when it
// runs (Redis: in one script call), so no writer waits for, retries after or is refused because of another, and
// counters add where they are stored.

/// The commit script against a real redis-server: byte-exact merges onto values another writer left.
@Suite struct SessionMergeTests {
    let store = RedisSessionStore(client: TestRedis.client, prefix: "test:\(UUID().uuidString.prefix(8)):sess:")
    static let cookie = #"{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/","sameSite":"lax"}"#

    /// A base that is not what is stored: the commit must take the merge path.
    static let staleBase = StoredSession(data: SessionData(), version: Array("stale".utf8), expiryRefreshed: false)

    func storeRaw(_ id: String, _ json: String) async throws {
        _ = try await TestRedis.client.send("SET", store.key(for: id), json, "EX", "60")
    }

    func raw(_ id: String) async throws -> String? {
        try await store.rawValue(of: id).map { String(decoding: $0, as: UTF8.self) }
    }

    func write(_ updates: [(String, JSONValue?)] = [], increments: [(String, Int64)] = [],
               base: StoredSession? = SessionMergeTests.staleBase) -> SessionWrite {
        SessionWrite(cookie: SessionCookie(),
                     changes: SessionChanges(updates: updates.map { (key: $0.0, value: $0.1) },
                                             increments: increments.map { (key: $0.0, amount: $0.1) }),
                     values: JSONObject(), base: base)
    }

    @Test func membersTheRequestDidNotTouchKeepTheirBytesAndOrder() async throws {
        let id = SessionID.generate()
        // What Node wrote: numbers Lua's cjson would shorten, unicode, an escaped quote, nesting, a key order.
        let untouched = #""z":0.30000000000000004,"big":9007199254740991,"u":"héllo ☃ 😀 \"q\"","#
            + #""nested":{"a":[1,2.50,{"b":null}],"s":"x}]"},"a":true"#
        try await storeRaw(id, #"{"cookie":{"originalMaxAge":1000,"expires":"2030-01-01T00:00:00.000Z","#
            + #""httpOnly":true,"path":"/"},"#
            + untouched + #","gone":1,"views":41}"#)
        let result = try await store.commit(id, write([("new", "value"), ("gone", nil)], increments: [("views", 1)]))
        guard case .saved(let saved) = result else { Issue.record("not saved: \(result)"); return }
        let expected = #"{"cookie":"# + Self.cookie + "," + untouched + #","views":42,"new":"value"}"#
        #expect(try await raw(id) == expected)
        #expect(saved.version.map { String(decoding: $0, as: UTF8.self) } == expected)
        #expect(saved.data.values["views"] == 42)
        #expect(saved.data.values["z"] == .number("0.30000000000000004"))
        try await store.destroy(id)
    }

    @Test func storedKeysMatchByNameWhateverTheirEscapingAndDuplicatesCollapse() async throws {
        let id = SessionID.generate()
        try await storeRaw(id, #"{"cookie":{},"\u0041":1,"b\"c":2,"d":3,"d":4,"e\u00e9":5}"#)
        _ = try await store.commit(id, write([("A", 10), ("b\"c", nil), ("eé", 50)], increments: [("d", 1)]))
        // "d" counted from its last copy (JSON.parse's value), written at its first place.
        #expect(try await raw(id) == #"{"cookie":"# + Self.cookie + #","\u0041":10,"d":5,"e\u00e9":50}"#)
        try await store.destroy(id)
    }

    @Test func newKeysGoWhereJavaScriptEnumeratesThem() async throws {
        let id = SessionID.generate()
        try await storeRaw(id, #"{"5":"five","x":1}"#)   // no cookie: it is put first, after the array indexes
        _ = try await store.commit(id, write([("10", "ten"), ("y", 2), ("2", "two"), ("4294967295", "big")]))
        #expect(try await raw(id) == #"{"2":"two","5":"five","10":"ten","cookie":"# + Self.cookie
            + #","x":1,"y":2,"4294967295":"big"}"#)
        try await store.destroy(id)
    }

    @Test func aValueThatIsNoJSONObjectIsLeftAlone() async throws {
        for stored in [#"[1,2]"#, "garbage", #"{"a":1"#, #"{"a":1,}"#, #"{"a":tru}"#, #"{"a":"open}"#, #"{"a":[1}"#] {
            let id = SessionID.generate()
            try await storeRaw(id, stored)
            let result = try await store.commit(id, write([("k", 1)]))
            guard case .gone = result else { Issue.record("\(stored): \(result)"); continue }
            #expect(try await raw(id) == stored)
            try await store.destroy(id)
        }
    }

    @Test func aLoadedSessionThatIsGoneIsNotRecreated() async throws {
        let id = SessionID.generate()
        for change in [write([("k", 1)]), write(increments: [("views", 1)])] {
            guard case .gone = try await store.commit(id, change) else { Issue.record("re-created"); continue }
            #expect(try await raw(id) == nil)
        }
    }

    @Test func incrementsFollowTheIntegerRules() async throws {
        for (name, store) in try await SessionCommitTests.stores() {
            let id = SessionID.generate()
            _ = try await store.commit(id, write([("s", "text"), ("f", .number("1.5")), ("n", .null),
                                                  ("max", .number("9007199254740990"))], base: nil))
            let base = try #require(try await store.load(id, touchingWith: nil))
            func add(_ key: String, _ amount: Int64) async throws -> JSONValue? {
                guard case .saved(let saved) = try await store.commit(id, write(increments: [(key, amount)], base: base))
                else { return nil }
                return saved.data.values[key]
            }
            #expect(try await add("absent", 5) == 5, "\(name)")
            #expect(try await add("absent", -7) == -2, "\(name)")
            #expect(try await add("n", 3) == 3, "\(name)")
            #expect(try await add("max", 1) == .number("9007199254740991"), "\(name)")
            for (key, reason) in [("s", SessionIncrementError.Reason.notAnInteger), ("f", .notAnInteger),
                                  ("max", .outOfRange)] {
                let before = try await store.get(id)
                await #expect(throws: SessionIncrementError(key: key, reason: reason), "\(name) \(key)") {
                    _ = try await add(key, 1)
                }
                #expect(try await store.get(id) == before, "\(name): a refused increment wrote something")
            }
            await #expect(throws: SessionIncrementError(key: "absent", reason: .outOfRange), "\(name)") {
                _ = try await add("absent", Int64.max)
            }
            try await store.destroy(id)
        }
    }

    /// The script's merge and the Swift one (the memory store's) agree byte for byte, on random sessions and
    /// changes written by the canonical serializer; and Node reads each merged value as the object it writes back
    /// unchanged (`JSON.stringify(JSON.parse(v)) === v`, but for a number a double cannot hold), so express-session
    /// sees what was meant.
    @Test func theScriptMergesAsSwiftDoes() async throws {
        var merged: [String] = []
        var random = SplitMix64(seed: 0x5E55_1011)
        for round in 0..<150 {
            let id = SessionID.generate()
            let stored = SessionData(cookie: SessionCookie(originalMaxAge: 5000, expires: nil),
                                     values: random.object(depth: 0))
            try await storeRaw(id, String(decoding: stored.jsonBytes(), as: UTF8.self))
            var updates: [(String, JSONValue?)] = []
            for key in random.keys(upTo: 4) { updates.append((key, random.next() % 4 == 0 ? nil : random.value(depth: 1))) }
            let increments = random.keys(upTo: 2).map { ($0, Int64(random.next() % 100) - 50) }
            var cookie = SessionCookie()
            cookie.secure = round % 2 == 0
            let change = SessionWrite(cookie: cookie,
                                      changes: SessionChanges(updates: updates.map { (key: $0.0, value: $0.1) },
                                                              increments: increments.map { (key: $0.0, amount: $0.1) }),
                                      values: JSONObject(), base: Self.staleBase)
            let swift = Result { () throws(SessionIncrementError) in try change.data(onto: stored.values).jsonBytes() }
            let script = await Result { try await store.commit(id, change) }
            switch (swift, script) {
            case (.success(let bytes), .success(.saved)):
                let value = try await raw(id)
                #expect(value == String(decoding: bytes, as: UTF8.self), "round \(round): \(updates) \(increments)")
                if let value { merged.append(value) }
            case (.failure(let expected), .failure(let error)):
                #expect(error as? SessionIncrementError == expected, "round \(round)")
            default:
                Issue.record("round \(round): Swift \(swift), script \(script)")
            }
            try await store.destroy(id)
        }
        #expect(merged.count > 100)
        let verdicts = try await onThread { [merged] in
            // (Node itself rounds 123456789012345678 to a double, ...680; the store kept its bytes.)
            try Node.lines("for (const v of process.argv.slice(1)) console.log(JSON.stringify(JSON.parse(v)) === "
                + "v.replace(/123456789012345678/g, '123456789012345680') ? 'same' : 'differs: ' + v)",
                arguments: merged)
        }
        #expect(verdicts == Array(repeating: "same", count: merged.count), "\(verdicts.filter { $0 != "same" })")
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// Random sessions for the merge comparison.
extension SplitMix64 {
    mutating func pick<T>(_ choices: [T]) -> T { choices[Int(next() % UInt64(choices.count))] }

    static let keyPool = ["a", "b", "views", "userName", "é", "☃", "😀", "0", "7", "42", "10", "quo\"te",
                          "back\\slash", "tab\t", "evserverCreatedAt", "z"]
    static let numberPool = ["0", "-1", "41", "0.30000000000000004", "9007199254740991", "1e+21", "12.5", "-0.001",
                             "123456789012345678"]
    static let stringPool = ["", "Aditya@123", "héllo ☃ 😀", "quote \" and \\ backslash", "line\nbreak", "\u{1}"]

    mutating func keys(upTo count: Int) -> [String] {
        var keys: [String] = []
        for _ in 0..<Int(next() % UInt64(count + 1)) {
            let key = pick(Self.keyPool)
            if !keys.contains(key) { keys.append(key) }
        }
        return keys
    }

    mutating func object(depth: Int) -> JSONObject {
        var object = JSONObject()
        for key in keys(upTo: 8) { object[key] = value(depth: depth + 1) }
        return object
    }

    mutating func value(depth: Int) -> JSONValue {
        switch next() % (depth > 2 ? 5 : 7) {
        case 0: .number(pick(Self.numberPool))
        case 1: .number(String(Int(next() % 1000)))
        case 2: .string(pick(Self.stringPool))
        case 3: pick([.bool(true), .bool(false)])
        case 4: .null
        case 5: .array((0..<Int(next() % 3)).map { _ in value(depth: depth + 1) })
        default: .object(object(depth: depth))
        }
    }
}

/// The Session API's counter, through the middleware.
@Suite struct SessionIncrementTests {
    @Test func incrementIsTheRequestsSaveAndReturnsTheNewValue() async throws {
        let harness = try Harness()
        let first = try await harness.send { request, response in
            request.session["userName"] = "Aditya@123"
            let views = try await request.session.increment("views")
            #expect(views == 1)
            #expect(request.session["views"] == 1)
        }
        // One store call for the whole request: the pending write and the increment together.
        #expect(harness.store.operations == ["set"])
        let cookie = try #require(first.cookieHeader)
        harness.store.reset()
        try await harness.send(cookie: cookie) { request, _ in
            let up = try await request.session.increment("views", by: 10)
            let down = try await request.session.increment("views", by: -1)
            #expect((up, down) == (11, 10))
        }
        #expect(harness.store.operations == ["get", "set", "set"])
        let stored = try #require(try await harness.memory.get(first.session.id))
        #expect(stored.values["views"] == 10)
        #expect(stored.values["userName"] == "Aditya@123")
    }

    /// Plain Swift values in and out of the session, stored as express-session's JSON.
    @Test func plainSwiftValuesGoInAndComeOut() async throws {
        let harness = try Harness()
        let views = 41
        let first = try await harness.send { request, _ in
            let session = request.session
            session["views"] = views
            session["name"] = "Aditya@123"
            session["price"] = 2.5
            session["admin"] = false
            session["tags"] = ["a", "b"]
            session["scores"] = ["x": 1, "y": 2]
            let read: Int? = session["views"]
            let wrongType: String? = session["views"]
            #expect(read == 41)
            #expect(wrongType == nil)
        }
        let stored = try #require(try await harness.memory.get(first.session.id))
        #expect(String(decoding: SessionData(cookie: SessionCookie(), values: stored.values).jsonBytes(), as: UTF8.self)
            .hasSuffix(#""views":41,"name":"Aditya@123","price":2.5,"admin":false,"tags":["a","b"],"scores":{"x":1,"y":2}}"#))
        try await harness.send(cookie: first.cookieHeader) { request, _ in
            let session = request.session
            let tags: [String]? = session["tags"], scores: [String: Int]? = session["scores"]
            let price: Double? = session["price"], admin: Bool? = session["admin"]
            #expect(tags == ["a", "b"] && scores == ["x": 1, "y": 2] && price == 2.5 && admin == false)
            session["tags"] = nil as [String]?
            #expect(session["tags"] == nil as JSONValue?)
        }
    }

    @Test func aValueThatCannotBeIncrementedIsA409AndAddsNothing() async throws {
        let harness = try Harness()
        let (cookie, id) = try await harness.login()
        for key in ["userName", "cookie"] {
            do {
                try await harness.send(cookie: cookie) { request, _ in
                    request.session["other"] = .string(key)
                    _ = try await request.session.increment(key)
                }
                Issue.record("incrementing \(key) did not fail")
            } catch let error as HTTPError {
                #expect(error.status == .conflict)
                #expect(error.message.contains(#""\#(key)""#), "\(error.message)")
            }
        }
        // The handler failed: its other write is committed, as express commits on an error page; nothing was added.
        let after = try #require(try await harness.memory.get(id))
        #expect(after.values["userName"] == "Aditya@123")
        #expect(after.values["other"] == "cookie")
        #expect(after.values["cookie"] == nil)
    }

    @Test func anIncrementOnASessionDestroyedMeanwhileAddsNothing() async throws {
        // The memory store itself (the harness's counting wrapper has the last-writer-wins default commit).
        let store = MemorySessionStore()
        let middleware = try SessionMiddleware(store: store, secrets: ["keyboard cat"])
        func send(_ cookie: String?, _ handler: @escaping (Request) async throws -> Void) async throws -> Request {
            let request = Request(method: .get, uri: "/", headers: HTTPHeaders(cookie.map { [("Cookie", $0)] } ?? []))
            try await middleware.handle(request, Response(), next: Next { try await handler(request) })
            return request
        }
        let id = try await send(nil) { $0.session["userName"] = "Aditya@123" }.session.id
        do {
            _ = try await send(try encodedCookie(id: id)) { request in
                try await store.destroy(id)   // a logout in another request
                _ = try await request.session.increment("views")
            }
            Issue.record("an increment on a destroyed session did not fail")
        } catch let error as HTTPError {
            #expect(error.status == .conflict)
        }
        #expect(try await store.get(id) == nil)
    }

    @Test func theMemoryStoreCountsExactlyUnderContention() async throws {
        let store = MemorySessionStore()
        let id = SessionID.generate()
        _ = try await store.commit(id, SessionWrite(cookie: SessionCookie(), changes: SessionChanges(updates: [("a", 1)]),
                                                    values: ["a": 1], base: nil))
        let base = try #require(try await store.load(id, touchingWith: nil))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<64 {
                group.addTask {
                    for _ in 0..<20 {
                        let write = SessionWrite(cookie: SessionCookie(),
                                                 changes: SessionChanges(increments: [("views", 1)]),
                                                 values: base.data.values, base: base)
                        guard case .saved = try await store.commit(id, write) else { throw SessionNotFoundError() }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await store.get(id)?.values["views"] == 1280)
    }
}

extension ScaleSuites {
    /// One instance, one session, 64 connections at once: every request answered 200, the counter exact, and one
    /// script call per request after its load.
    @Suite struct HotSessionTests {
        @Test func sixtyFourWritersOnOneSessionAreAllAnsweredAndCounted() async throws {
            let redis = try PrivateRedis()
            defer { redis.stop() }
            let server = try DemoServer(["--threads", "1"], redisPort: redis.port)
            do {
                try await hammer(server, redis: redis)
            } catch {
                await server.stop()
                throw error
            }
            await server.stop()
        }

        func hammer(_ server: DemoServer, redis: PrivateRedis) async throws {
            let first = try server.client()
            #expect(try first.request("GET", "/views").status == 200)
            let cookie = try #require(first.cookieJar["connect.sid"])
            let id = try #require(DemoServer.sessionID(fromCookie: cookie))
            let port = server.server.port

            let before = try await redis.commandCounts()
            let started = ContinuousClock.now
            let statuses = try await inParallelThreads(64) { _ -> [Int] in
                let client = try TestHTTPClient(port: port)
                client.cookieJar["connect.sid"] = cookie
                return try (0..<10).map { _ in try client.request("GET", "/views").status }
            }.flatMap { $0 }
            let elapsed = ContinuousClock.now - started
            let after = try await redis.commandCounts()

            #expect(statuses.count == 640)
            #expect(statuses.allSatisfy { $0 == 200 }, "non-2xx: \(statuses.filter { $0 != 200 })")
            let stored = try #require(try await redis.client().get(server.prefix + id))
            let views = try JSONValue(parsing: stored)["views"]?.intValue
            #expect(views == 641, "views \(views ?? -1) after 641 answered requests")
            func delta(_ name: String) -> Int { (after[name] ?? 0) - (before[name] ?? 0) }
            let scripts = delta("evalsha") + delta("eval")
            #expect(scripts <= 640 + 1, "\(scripts) script calls for 640 requests")   // + 1: EVAL after a NOSCRIPT
            let roundTrips = Double(delta("getex") + scripts) / 640
            print("HotSessionTests: 64 writers x 10 on one session: 640 x 200 in \(elapsed), \(scripts) scripts, "
                + "\(roundTrips) round trips per request")
            #expect(roundTrips <= 2.0)
        }
    }
}
