import EvServer
import Foundation
import Synchronization
import Testing
@testable import EvServerApp
@testable import RedisSessionStore

// Sessions per user (issue 13): sign-in, the per-user index, listing, ending them, the limit, regenerating with the
// data, on a real redis-server (several store instances sharing it, as several server processes would) and on the
// memory store. The cluster versions are in UserSessionsClusterTests.

// MARK: - A small application over one store

/// An application with the users API on `store`, served on a free port: one "instance".
final class UsersTestServer: Sendable {
    let server: RunningServer
    let store: any UserSessionStore

    init(store: any UserSessionStore, maxSessionsPerUser: Int? = nil, maxAge: Int64? = nil,
         absoluteTimeout: Duration? = nil) throws {
        self.store = store
        var options = SessionConfiguration(secrets: ["test secret"])
        options.absoluteTimeout = absoluteTimeout
        options.maxSessionsPerUser = maxSessionsPerUser
        options.cookie.maxAge = maxAge
        let app = Application()
        app.use(try SessionMiddleware(store: store, configuration: options))
        app.post("/signin/:user") { request, response in
            try await request.session.signIn(user: request.parameters["user"] ?? "",
                                             client: SessionClient(request: request, trusting: .none))
            response.send(json: ["id": .string(request.session.id)])
        }
        app.get("/whoami") { request, response in
            response.send(json: ["user": request.session.user.map { .string($0) } ?? .null,
                                 "n": request.session["n"] ?? .null])
        }
        app.post("/write/:n") { request, response in
            request.session["n"] = .number(request.parameters["n"] ?? "0")
            response.send(json: ["user": request.session.user.map { .string($0) } ?? .null])
        }
        app.post("/rotate") { request, response in
            try await request.session.regenerate(keepingData: true)
            response.send(json: ["user": request.session.user.map { .string($0) } ?? .null])
        }
        app.post("/everywhere") { request, response in
            guard let user = request.session.user else { throw HTTPError(.unauthorized) }
            let ended = try await store.destroySessions(ofUser: user, except: request.session.id)
            response.send(json: ["ended": .number(String(ended))])
        }
        app.post("/signout") { request, response in
            try await request.session.signOut()
            response.send(json: ["user": request.session.user.map { .string($0) } ?? .null])
        }
        server = try app.start(host: "127.0.0.1", port: 0, threads: 2)
    }

    func client() throws -> TestHTTPClient { try TestHTTPClient(port: server.port) }
    func stop() async { await server.shutdown(timeout: .seconds(2)) }
}

extension TestHTTPClient {
    /// The session id in this client's cookie.
    var sessionID: String? { cookieJar["connect.sid"].flatMap(DemoServer.sessionID(fromCookie:)) }

    /// A client on `port` with this one's cookies: the same device through another instance.
    func through(_ port: Int) throws -> TestHTTPClient {
        let client = try TestHTTPClient(port: port)
        client.cookieJar = cookieJar
        return client
    }

    /// `GET /whoami`'s user (nil: a guest).
    func user() throws -> String? {
        try JSONValue(parsing: try freshRequest("GET", "/whoami").body)["user"]?.stringValue
    }

    /// `request` on a new connection: a device that waited (a loaded machine can stall a test past the server's
    /// 15 s keep-alive timeout) must not send on a connection the server has closed meanwhile.
    @discardableResult
    func freshRequest(_ method: String, _ path: String, headers: KeyValuePairs<String, String> = [:],
                      body: String = "") throws -> TestHTTPResponse {
        close()
        return try request(method, path, headers: headers, body: Array(body.utf8))
    }
}

/// A fresh user name (each test its own index).
func freshUser(_ name: String = "alice") -> String { "\(name)-\(UUID().uuidString.prefix(8))" }

/// Which store a test runs on.
enum UsersStoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case redis, memory
    var testDescription: String { rawValue }
}

/// `count` instances sharing one store's data: separate RedisSessionStores on the test server with one prefix, or
/// (memory) one store behind `count` servers.
func withUserInstances(_ kind: UsersStoreKind, count: Int = 3, maxSessionsPerUser: Int? = nil,
                       maxAges: [Int64?]? = nil,
                       _ body: ([UsersTestServer]) async throws -> Void) async throws {
    let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
    let memory = MemorySessionStore()
    var servers: [UsersTestServer] = []
    for index in 0..<count {
        let store: any UserSessionStore = kind == .memory
            ? memory : try RedisSessionStore(url: TestRedis.url, prefix: prefix)
        servers.append(try UsersTestServer(store: store, maxSessionsPerUser: maxSessionsPerUser,
                                           maxAge: maxAges?[index] ?? nil))
    }
    do {
        try await body(servers)
    } catch {
        for server in servers { await server.stop() }
        throw error
    }
    for server in servers { await server.stop() }
}

/// One new device per instance signs `user` in, in order: the devices, and when the last sign-in was answered.
func signInOneDevicePerInstance(_ instances: [UsersTestServer], as user: String) throws
    -> (devices: [TestHTTPClient], lastSignIn: ContinuousClock.Instant)
{
    var devices: [TestHTTPClient] = []
    var signedIn = ContinuousClock.now
    for instance in instances {
        let device = try instance.client()
        #expect(try device.freshRequest("POST", "/signin/\(user)").status == 200)
        signedIn = .now
        devices.append(device)
    }
    return (devices, signedIn)
}

@Suite struct UserSessionsTests {
    @Test(arguments: UsersStoreKind.allCases)
    func threeDevicesOnThreeInstancesAreListedAndEndedTogether(_ kind: UsersStoreKind) async throws {
        try await withUserInstances(kind) { instances in
            let user = freshUser()
            // Three devices, each signing in through another instance (a guest value first: it survives).
            var devices: [TestHTTPClient] = []
            for (index, instance) in instances.enumerated() {
                let device = try instance.client()
                #expect(try device.freshRequest("POST", "/write/\(index)").status == 200)
                let guestID = try #require(device.sessionID)
                #expect(try device.freshRequest("POST", "/signin/\(user)").status == 200)
                let signedIn = try #require(device.sessionID)
                #expect(signedIn != guestID, "sign-in must give a new id")
                #expect(try await instance.store.get(guestID) == nil, "the guest id must stop working at once")
                devices.append(device)
            }
            // Every device, through every instance, is the user, with its own values kept.
            for (index, device) in devices.enumerated() {
                for instance in instances {
                    let answer = try JSONValue(parsing: try device.through(instance.server.port).request("GET", "/whoami").body)
                    #expect(answer["user"]?.stringValue == user, "device \(index) via port \(instance.server.port)")
                    #expect(answer["n"]?.intValue == index)
                }
            }
            let listed = try await instances[1].store.sessions(ofUser: user)
            #expect(Set(listed.map(\.id)) == Set(devices.compactMap(\.sessionID)))
            #expect(listed.allSatisfy { $0.user == user && $0.signedInAt != nil && $0.expiresAt != nil })
            #expect(listed.allSatisfy { ($0.lastActiveAt ?? .distantPast) > Date().addingTimeInterval(-60) })
            #expect(listed.first?.client?.address == "127.0.0.1")
            #expect(try await instances[2].store.sessions(ofUser: freshUser("nobody")).isEmpty)

            // Destroy-all from device 0: the other two are guests on their next request, on every instance.
            let ended = try JSONValue(parsing: try devices[0].freshRequest("POST", "/everywhere").body)
            #expect(ended["ended"]?.intValue == 2)
            for device in devices.dropFirst() {
                for instance in instances {
                    #expect(try device.through(instance.server.port).user() == nil,
                            "an ended session must be a guest on every instance")
                }
            }
            #expect(try devices[0].user() == user)
            #expect(try await instances[0].store.sessions(ofUser: user).map(\.id) == [devices[0].sessionID])
        }
    }

    @Test(arguments: UsersStoreKind.allCases)
    func aSessionThatExpiresLeavesTheListAtOnce(_ kind: UsersStoreKind) async throws {
        // Instance 2 gives its sessions a 3 s max age (Redis keeps whole seconds, rounded up); the others a day.
        try await withUserInstances(kind, maxAges: [nil, nil, 3000]) { instances in
            let user = freshUser()
            let (devices, signedIn) = try signInOneDevicePerInstance(instances, as: user)
            let short = try #require(devices[2].sessionID)
            let before = try await instances[0].store.sessions(ofUser: user).map(\.id)
            // (On a machine so loaded that the listing came 2.5 s after the sign-in, the short one may be gone.)
            if ContinuousClock.now - signedIn < .milliseconds(2500) {
                #expect(before.count == 3 && before.contains(short), "listed: \(before.count)")
            }
            try await Task.sleep(until: signedIn + .milliseconds(3300))
            // The documented time: gone from the list as soon as its key has expired (the listing reads each key).
            let listed = try await instances[0].store.sessions(ofUser: user).map(\.id)
            #expect(listed.count == 2 && !listed.contains(short), "listed: \(listed.count)")
            #expect(try devices[2].user() == nil)
        }
    }

    @Test(arguments: UsersStoreKind.allCases)
    func theLimitEndsTheOldestSessionsOnSignIn(_ kind: UsersStoreKind) async throws {
        try await withUserInstances(kind, count: 2, maxSessionsPerUser: 2) { instances in
            let user = freshUser()
            var devices: [TestHTTPClient] = []
            for index in 0..<4 {
                let device = try instances[index % 2].client()
                #expect(try device.freshRequest("POST", "/signin/\(user)").status == 200)
                devices.append(device)
                try await Task.sleep(for: .milliseconds(5))   // distinct sign-in times
            }
            // Each sign-in past two ended the oldest: devices 2 and 3 remain.
            let users = try devices.map { try $0.user() }
            #expect(users == [nil, nil, user, user])
            let listed = try await instances[0].store.sessions(ofUser: user).map(\.id)
            #expect(listed == [devices[2].sessionID, devices[3].sessionID])

            // Eight sign-ins at once: none ends one of the two newest, so two at least survive (never zero).
            let racer = freshUser("racer")
            let ports = instances.map(\.server.port)
            let survivors = try await inParallelThreads(8) { index -> Bool in
                let device = try TestHTTPClient(port: ports[index % 2])
                _ = try device.freshRequest("POST", "/signin/\(racer)")
                return try device.user() == racer
            }.filter { $0 }.count
            let stillListed = try await instances[1].store.sessions(ofUser: racer).count
            #expect(survivors >= 2 && stillListed >= 2, "\(survivors) survivors, \(stillListed) listed")
        }
    }

    @Test(arguments: UsersStoreKind.allCases)
    func regenerateKeepingDataMovesTheValuesAndKillsTheOldId(_ kind: UsersStoreKind) async throws {
        try await withUserInstances(kind, count: 1) { instances in
            let store = instances[0].store
            let user = freshUser()
            let device = try instances[0].client()
            _ = try device.freshRequest("POST", "/signin/\(user)")
            _ = try device.freshRequest("POST", "/write/42")
            let old = try #require(device.sessionID)
            let oldCookie = try #require(device.cookieJar["connect.sid"])
            #expect(try device.freshRequest("POST", "/rotate").status == 200)
            let new = try #require(device.sessionID)
            #expect(new != old)
            #expect(try await store.get(old) == nil, "no grace: the old id must stop working")
            let answer = try JSONValue(parsing: try device.freshRequest("GET", "/whoami").body)
            #expect(answer["user"]?.stringValue == user)
            #expect(answer["n"]?.intValue == 42)
            #expect(try await store.sessions(ofUser: user).map(\.id) == [new])
            // The old cookie is a guest now.
            let attacker = try instances[0].client()
            attacker.cookieJar["connect.sid"] = oldCookie
            #expect(try attacker.user() == nil)
            // A guest's rotation keeps its values too.
            let guest = try instances[0].client()
            _ = try guest.freshRequest("POST", "/write/7")
            let guestID = try #require(guest.sessionID)
            _ = try guest.freshRequest("POST", "/rotate")
            #expect(guest.sessionID != guestID)
            #expect(try await store.get(guestID) == nil)
            #expect(try JSONValue(parsing: try guest.freshRequest("GET", "/whoami").body)["n"]?.intValue == 7)
        }
    }

    @Test(arguments: UsersStoreKind.allCases)
    func signOutEndsThisSessionAndLeavesTheIndex(_ kind: UsersStoreKind) async throws {
        try await withUserInstances(kind, count: 1) { instances in
            let user = freshUser()
            let device = try instances[0].client()
            _ = try device.freshRequest("POST", "/signin/\(user)")
            let id = try #require(device.sessionID)
            _ = try device.freshRequest("POST", "/signout")
            #expect(try device.user() == nil)
            #expect(try await instances[0].store.get(id) == nil)
            #expect(try await instances[0].store.sessions(ofUser: user).isEmpty)
        }
    }

    @Test(arguments: UsersStoreKind.allCases)
    func badUserNamesAreRefusedWith400(_ kind: UsersStoreKind) async throws {
        try await withUserInstances(kind, count: 1) { instances in
            let device = try instances[0].client()
            let long = String(repeating: "x", count: 257)
            for path in ["/signin/%00", "/signin/\(long)"] {
                let response = try device.freshRequest("POST", path)
                #expect(response.status == 400, "\(path.prefix(12)): \(response.status)")
                #expect(response.text.contains("invalid user name"))
            }
            #expect(try device.user() == nil)
        }
    }

    /// Sign-out-everywhere while the other devices keep writing (and rotating their ids): none of them is alive
    /// afterwards, on any id it ever had.
    @Test(arguments: UsersStoreKind.allCases)
    func signOutEverywhereWhileTheOtherDevicesWriteLeavesNoneAlive(_ kind: UsersStoreKind) async throws {
        try await withUserInstances(kind) { instances in
            try await signOutEverywhereWhileOthersWrite(instances, label: kind.rawValue)
        }
    }
}

/// The race: six devices of one user write through three instances (every third request rotates the id) while a
/// seventh signs out everywhere; afterwards none of the ids any writer ever held is a signed-in session, every
/// writer became a guest, and only the seventh is listed. Bounded: each writer stops 20 requests after the
/// sign-out returned, or at 400.
func signOutEverywhereWhileOthersWrite(_ instances: [UsersTestServer], label: String) async throws {
    let user = freshUser()
    let keeper = try instances[0].client()
    _ = try keeper.freshRequest("POST", "/signin/\(user)")
    let ports = instances.map(\.server.port)
    let writers = 6
    var cookies: [String] = []
    for index in 0..<writers {
        let device = try instances[index % 3].client()
        _ = try device.freshRequest("POST", "/signin/\(user)")
        cookies.append(try #require(device.cookieJar["connect.sid"]))
    }
    let writerCookies = cookies
    let keeperCookie = try #require(keeper.cookieJar["connect.sid"])
    let signedOut = Atomic<Bool>(false)
    let seen = Mutex<Set<String>>([])
    // Each writer: writes (and every 3rd request rotates its id) until 20 requests after the sign-out
    // returned; bounded in time (30 s), not in requests: a fast store can answer any fixed number before a
    // loaded machine gets round to the sign-out.
    let deadline = ContinuousClock.now + .seconds(30)
    async let writing = inParallelThreads(writers) { index -> (requests: Int, guest: Bool) in
        let device = try TestHTTPClient(port: ports[index % 3])
        device.cookieJar["connect.sid"] = writerCookies[index]
        var after = 0
        var requests = 0
        var guest = false
        while after < 20, ContinuousClock.now < deadline {
            requests += 1
            let path = requests % 3 == 0 ? "/rotate" : "/write/\(requests)"
            let response = try device.freshRequest("POST", path)
            if let id = device.sessionID { seen.withLock { _ = $0.insert(id) } }
            if try JSONValue(parsing: response.body)["user"] == .null { guest = true }
            if signedOut.load(ordering: .acquiring) { after += 1 }
        }
        return (requests, guest)
    }
    try await Task.sleep(for: .milliseconds(150))
    let keeperPort = ports[0]
    let ended = try await onThread {
        let client = try TestHTTPClient(port: keeperPort)
        client.cookieJar["connect.sid"] = keeperCookie
        return try JSONValue(parsing: try client.freshRequest("POST", "/everywhere").body)["ended"]?.intValue
    }
    signedOut.store(true, ordering: .releasing)
    let results = try await writing
    #expect((ended ?? 0) >= 1)
    let guests = results.filter(\.guest).count
    #expect(guests == writers, "every writer must have become a guest")
    // None of the ids any writer ever held is a signed-in session; only the keeper is listed.
    let store = instances[0].store
    var alive = 0
    for id in seen.withLock({ $0 }) {
        if let data = try await store.get(id), SessionOwner(data.values) != nil { alive += 1 }
    }
    #expect(alive == 0, "\(alive) signed-in sessions survived sign-out-everywhere")
    #expect(try await store.sessions(ofUser: user).map(\.id) == [keeper.sessionID])
    #expect(try keeper.user() == user)
    print("UserSessionsTests(\(label)): sign-out-everywhere ended \(ended ?? -1) during "
        + "\(results.map(\.requests).reduce(0, +)) writes; \(seen.withLock { $0.count }) ids seen; 0 alive")
}

// MARK: - The index's own rules

@Suite struct UserIndexTests {
    @Test func boundsStayAheadOfTheSlidingExpiryAndAreRewrittenOncePerInterval() {
        let day: Int64 = 86_400_000
        #expect(UserIndexTiming.interval(lifetime: day) == 60_000)
        #expect(UserIndexTiming.interval(lifetime: 2_000) == 200)
        let written: Int64 = 1_000_000
        let bound = UserIndexTiming.bound(now: written, lifetime: day)
        #expect(bound == written + 2 * day + 60_000)
        #expect(!UserIndexTiming.isDue(bound: bound, now: written + 59_999, lifetime: day))
        #expect(UserIndexTiming.isDue(bound: bound, now: written + 60_001, lifetime: day))
        #expect(UserIndexTiming.isDue(bound: nil, now: written, lifetime: day))
        // A request at any time the session is alive (before written + interval + lifetime, if no rewrite
        // happened) moves its expiry to at most a lifetime later: still within the bound.
        let lastAlive = written + 60_000 + day - 1
        #expect(lastAlive + day <= bound)
    }

    @Test func memoryIndexesGoWithTheirSessions() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(defaultTTL: 10, now: clock.closure)
        for user in 0..<50 {
            for device in 0..<3 {
                let id = "u\(user)d\(device)"
                var data = SessionData()
                data.values[SessionOwner.key] = SessionOwner(name: "user\(user)", since: 0, indexedUntil: nil,
                                                             client: nil).jsonValue
                try await store.set(id, data)
                try await store.index(id, user: "user\(user)", until: clock.now().javaScriptMilliseconds + 21_000)
            }
        }
        #expect(store.indexedUserCount == 50)
        #expect(try await store.sessions(ofUser: "user7").count == 3)
        clock.advance(11)
        #expect(try await store.sessions(ofUser: "user7").isEmpty)
        _ = try await store.length()   // sweeps
        #expect(store.indexedUserCount == 0, "indexes must not outlive their sessions")
    }

    @Test func indexKeysAreOutsideThePrefixAndFixedLength() throws {
        let store = try RedisSessionStore(url: TestRedis.url, prefix: "sess:")
        let key = store.indexKey(ofUser: "alice")
        #expect(key == "evserver-users:sess:" + sha256Hex("alice"))
        #expect(store.indexKey(ofUser: "a\u{1F600} b*?[]\\").count == key.count)
        let odd = try RedisSessionStore(url: TestRedis.url, prefix: "ev")
        #expect(!odd.indexKey(ofUser: "alice").hasPrefix("ev"))
        #expect(SessionClient.family(ofUserAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36") == "Chrome (headless)")
        #expect(SessionClient.family(ofUserAgent: "curl/8.5.0") == "curl")
    }
}

// MARK: - Failures

/// A memory store whose index writes fail (a cluster node of the index down, say).
final class FailingIndexStore: UserSessionStore {
    struct Failure: Error {}
    let memory = MemorySessionStore()

    func get(_ id: String) async throws -> SessionData? { try await memory.get(id) }
    func set(_ id: String, _ session: SessionData) async throws { try await memory.set(id, session) }
    nonisolated(nonsending) func destroy(_ id: String) async throws { try await memory.destroy(id) }
    nonisolated(nonsending) func touch(_ id: String, _ session: SessionData) async throws {
        try await memory.touch(id, session)
    }
    func all() async throws -> [String: SessionData] { try await memory.all() }
    func length() async throws -> Int { try await memory.length() }
    func clear() async throws { try await memory.clear() }
    func ping() async throws {}
    nonisolated(nonsending) func load(_ id: String, touchingWith cookie: SessionCookie?) async throws
        -> StoredSession? { try await memory.load(id, touchingWith: cookie) }
    nonisolated(nonsending) func commit(_ id: String, _ write: SessionWrite) async throws -> SessionCommitResult {
        try await memory.commit(id, write)
    }
    func index(_ id: String, user: String, until bound: Int64) async throws { throw Failure() }
    func sessions(ofUser user: String) async throws -> [UserSession] { try await memory.sessions(ofUser: user) }
    func destroySessions(ofUser user: String, except: String?) async throws -> Int {
        try await memory.destroySessions(ofUser: user, except: except)
    }
    nonisolated(nonsending) func destroy(_ id: String, ofUser user: String) async throws -> Bool {
        try await memory.destroy(id, ofUser: user)
    }
    func lifetime(of session: SessionData, now: Date) -> Int64 { memory.lifetime(of: session, now: now) }
}

@Suite struct UserSessionFailureTests {
    /// A sign-in whose index write fails leaves the session as it was (its id, no owner), even for an application
    /// that catches the error and goes on: the end-of-request save must not make the old id a signed-in one.
    @Test func aFailedSignInLeavesTheSessionAsItWas() async throws {
        let store = FailingIndexStore()
        let app = Application()
        app.use(try SessionMiddleware(store: store, configuration: SessionConfiguration(secrets: ["s"])))
        app.post("/visit") { request, response in
            request.session["cart"] = "book"
            response.send("ok")
        }
        app.post("/signin-anyway") { request, response in
            do {
                try await request.session.signIn(user: "alice")
            } catch {
                request.session["tried"] = true
            }
            response.send(json: ["user": request.session.user.map { .string($0) } ?? .null])
        }
        let server = try app.start(host: "127.0.0.1", port: 0, threads: 1)
        do {
            let device = try TestHTTPClient(port: server.port)
            _ = try device.freshRequest("POST", "/visit")
            let id = try #require(device.sessionID)
            let answer = try JSONValue(parsing: try device.freshRequest("POST", "/signin-anyway").body)
            #expect(answer["user"] == .null)
            #expect(device.sessionID == id, "the id must not change when the sign-in failed")
            let stored = try #require(try await store.get(id))
            #expect(stored.values["cart"] == "book" && stored.values["tried"] == .bool(true))
            #expect(stored.values[SessionOwner.key] == nil, "a failed sign-in must not sign the old id in")
        } catch {
            await server.shutdown(timeout: .seconds(2))
            throw error
        }
        await server.shutdown(timeout: .seconds(2))
    }
}

@Suite struct UserSessionAbsoluteTimeoutTests {
    /// A sign-in starts the absolute lifetime afresh (it is a new session); a rotation keeps it, so regenerating
    /// never extends it.
    @Test(arguments: UsersStoreKind.allCases)
    func rotatingDoesNotExtendTheAbsoluteLifetime(_ kind: UsersStoreKind) async throws {
        let store: any UserSessionStore = kind == .memory
            ? MemorySessionStore() : try RedisSessionStore(url: TestRedis.url, prefix: "test:\(UUID().uuidString.prefix(8)):")
        let instance = try UsersTestServer(store: store, absoluteTimeout: .seconds(2))
        do {
            let user = freshUser()
            let device = try instance.client()
            _ = try device.freshRequest("POST", "/write/1")
            try await Task.sleep(for: .milliseconds(1200))
            let signedIn = ContinuousClock.now
            #expect(try device.freshRequest("POST", "/signin/\(user)").status == 200)
            try await Task.sleep(until: signedIn + .milliseconds(1200))
            // 2.4 s after the guest session began, 1.2 s after the sign-in: alive (the sign-in started afresh).
            // (Checked only when the machine let it run in time.)
            let alive = try device.user()
            if ContinuousClock.now - signedIn < .milliseconds(1800) { #expect(alive == user) }
            #expect(try device.freshRequest("POST", "/rotate").status == 200)
            try await Task.sleep(until: signedIn + .milliseconds(2300))
            // Past 2 s since the sign-in: gone, although the rotation was 1 s ago.
            #expect(try device.user() == nil)
            #expect(try await store.sessions(ofUser: user).isEmpty)
        } catch {
            await instance.stop()
            throw error
        }
        await instance.stop()
    }
}

@Suite struct UserIndexGarbageTests {
    /// What another program may leave in Redis: an index entry naming no session, one naming another user's
    /// session or a non-session value, an owner member of the wrong shape, another type at the index key. Each is
    /// skipped and pruned, or a clear error; never a crash.
    @Test func garbageInTheIndexIsPrunedOrAClearError() async throws {
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        let store = try RedisSessionStore(url: TestRedis.url, prefix: prefix)
        let redis = TestRedis.client
        let user = freshUser()
        let bob = freshUser("bob")
        let far = String(Date().javaScriptMilliseconds + 600_000)
        func owned(by name: String) -> String {
            #"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"},"evserverUser":{"name":"\#(name)"}}"#
        }
        try await redis.set(prefix + "mine", to: Array(owned(by: user).utf8), expiresIn: 600)
        try await redis.set(prefix + "bobs", to: Array(owned(by: bob).utf8), expiresIn: 600)
        try await redis.set(prefix + "junk", to: Array("not json".utf8), expiresIn: 600)
        try await redis.set(prefix + "shape", to: Array(#"{"cookie":{},"evserverUser":"\#(user)"}"#.utf8), expiresIn: 600)
        for id in ["mine", "bobs", "junk", "shape", "missing"] {
            _ = try await redis.send("ZADD", store.indexKey(ofUser: user), far, id)
        }
        #expect(try await store.sessions(ofUser: user).map(\.id) == ["mine"])
        #expect(try await store.indexedIds(ofUser: user) == ["mine"], "the others must have been pruned")
        #expect(try await store.get("shape").map { SessionOwner($0.values) } == .some(nil))

        // Another type at the index key: a clear Redis error, for the listing and for the sign-in path alike.
        try await redis.set(store.indexKey(ofUser: bob), to: Array("x".utf8), expiresIn: 60)
        await #expect(throws: RedisError.self) { try await store.sessions(ofUser: bob) }
        await #expect(throws: RedisError.self) { try await store.index("bobs", user: bob, until: 1) }
        _ = try await redis.delete([prefix + "mine", prefix + "bobs", prefix + "junk", prefix + "shape",
                                    store.indexKey(ofUser: user), store.indexKey(ofUser: bob)])
    }
}

@Suite struct UserIndexSizeTests {
    /// 600 sessions of one user (more than the 256 a listing keeps in flight): all listed, and all ended at once.
    @Test func sixHundredSessionsOfOneUserAreListedAndEnded() async throws {
        let store = try RedisSessionStore(url: TestRedis.url, prefix: "test:\(UUID().uuidString.prefix(8)):sess:")
        let user = freshUser()
        var ids: [String] = []
        for _ in 0..<600 {
            let now = Date()
            var cookie = SessionCookie()
            cookie.setMaxAge(600_000, now: now)
            let bound = UserIndexTiming.bound(now: now.javaScriptMilliseconds,
                                              lifetime: store.lifetime(of: SessionData(cookie: cookie), now: now))
            var values = JSONObject()
            values[SessionOwner.key] = SessionOwner(name: user, since: now.javaScriptMilliseconds, indexedUntil: bound,
                                                    client: nil).jsonValue
            let id = SessionID.generate()
            _ = try await store.commit(id, SessionWrite(cookie: cookie, changes: SessionChanges(replacesAll: true),
                                                        values: values, base: nil))
            try await store.index(id, user: user, until: bound)
            ids.append(id)
        }
        #expect(Set(try await store.sessions(ofUser: user).map(\.id)) == Set(ids))
        #expect(try await store.destroySessions(ofUser: user, except: ids[0]) == 599)
        #expect(try await store.sessions(ofUser: user).map(\.id) == [ids[0]])
        #expect(try await store.destroySessions(ofUser: user, except: nil) == 1)
        #expect(try await TestRedis.client.send("EXISTS", store.indexKey(ofUser: user)).integer == 0)
    }
}
