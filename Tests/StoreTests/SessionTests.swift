import EvServer
import Foundation
import Testing
@testable import RedisSessionStore

/// 2026-12-01T10:00:00.000Z
let decemberFirst = Date(timeIntervalSince1970: 1_796_119_200)

// MARK: - SessionData JSON (express-session's stored shape)

@Suite struct SessionDataJSONTests {
    @Test func defaultExpressCookieShape() {
        // express-session with `cookie: {}`: no maxAge, nothing optional set.
        let cookie = SessionCookie(originalMaxAge: nil, expires: nil, sameSite: nil)
        #expect(SessionData(cookie: cookie).jsonString
            == #"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"}}"#)
    }

    @Test func fullCookieShapeInExpressFieldOrder() {
        let cookie = SessionCookie(originalMaxAge: 86_400_000, expires: decemberFirst, secure: true, httpOnly: true,
                                   path: "/", domain: "example.com", sameSite: .lax)
        let data = SessionData(cookie: cookie, values: ["userName": "Aditya@123", "n": 1])
        #expect(data.jsonString == #"{"cookie":{"originalMaxAge":86400000,"expires":"2026-12-01T10:00:00.000Z","secure":true,"httpOnly":true,"domain":"example.com","path":"/","sameSite":"lax"},"userName":"Aditya@123","n":1}"#)
    }

    /// Builds the same session the way express-session does (a Cookie whose `data` getter lists the fields in
    /// express's order, undefined where unset; the session's own properties after `cookie`) and lets Node's
    /// JSON.stringify write it.
    @Test func matchesJSONStringifyOfAnExpressSession() throws {
        let script = """
            const ms = Number(process.argv[1]);
            function Cookie(o) { Object.assign(this, o); }
            Cookie.prototype.toJSON = function () {
              return { originalMaxAge: this.originalMaxAge, partitioned: this.partitioned, priority: this.priority,
                       expires: this._expires, secure: this.secure, httpOnly: this.httpOnly, domain: this.domain,
                       path: this.path, sameSite: this.sameSite };
            };
            const sess = {};
            sess.cookie = new Cookie({ originalMaxAge: 3600000, _expires: new Date(ms), httpOnly: true, path: '/',
                                       secure: false, sameSite: 'strict' });
            sess.user = 'Zoë "Z" \\\\ </script>';
            sess[7] = 'seven'; sess[1] = 'one';
            sess.cart = { items: [1, 2.5, null, true], total: 12.34 };
            sess['01'] = 'not an index';
            process.stdout.write(JSON.stringify(sess));
            """
        let expires = Date(javaScriptMilliseconds: 1_796_119_200_123)
        let node = try Node.run(script, arguments: ["1796119200123"])
        let cookie = SessionCookie(originalMaxAge: 3_600_000, expires: expires, secure: false, sameSite: .strict)
        var values = JSONObject()
        values["user"] = "Zoë \"Z\" \\ </script>"
        values["7"] = "seven"
        values["1"] = "one"
        values["cart"] = ["items": [1, 2.5, nil, true], "total": 12.34]
        values["01"] = "not an index"
        #expect(SessionData(cookie: cookie, values: values).jsonString == node)
    }

    @Test func nodeWrittenSessionsLoad() throws {
        let text = #"{"cookie":{"originalMaxAge":604800000,"partitioned":true,"priority":"high","expires":"2026-12-01T10:00:00.000Z","secure":false,"httpOnly":true,"path":"/","sameSite":"none","future":{"x":1}},"passport":{"user":"42"},"views":7}"#
        let data = try SessionData(json: text)
        #expect(data.cookie.originalMaxAge == 604_800_000)
        #expect(data.cookie.expires == decemberFirst)
        #expect(data.cookie.secure == false)
        #expect(data.cookie.httpOnly)
        #expect(data.cookie.path == "/")
        #expect(data.cookie.domain == nil)
        #expect(data.cookie.sameSite == SetCookie.SameSite.none)
        #expect(data.values.keys == ["passport", "views"])
        #expect(data.values["views"] == 7)
        // Written back: the same bytes minus the fields this server does not model (partitioned, priority, future).
        #expect(data.jsonString == #"{"cookie":{"originalMaxAge":604800000,"expires":"2026-12-01T10:00:00.000Z","secure":false,"httpOnly":true,"path":"/","sameSite":"none"},"passport":{"user":"42"},"views":7}"#)
    }

    @Test func cookieFieldsAreReadTolerantly() throws {
        let minimal = try SessionData(json: #"{"cookie":{}}"#)
        #expect(minimal.cookie == SessionCookie(originalMaxAge: nil, expires: nil, sameSite: nil))
        let odd = try SessionData(json: #"{"cookie":{"originalMaxAge":"x","expires":12,"secure":"yes","httpOnly":false,"path":7,"sameSite":true}}"#)
        #expect(odd.cookie.originalMaxAge == nil)
        #expect(odd.cookie.expires == nil)
        #expect(odd.cookie.secure == nil)
        #expect(odd.cookie.httpOnly == false)
        #expect(odd.cookie.path == "/")
        #expect(odd.cookie.sameSite == .strict)
        #expect(try SessionData(json: #"{"cookie":{"sameSite":"LAX"}}"#).cookie.sameSite == .lax)
        #expect(try SessionData(json: #"{"cookie":{"sameSite":false}}"#).cookie.sameSite == nil)
        #expect(try SessionData(json: #"{"cookie":{"expires":"soon"}}"#).cookie.expires == nil)
    }

    @Test(arguments: [
        ("2026-12-01T10:00:00.000Z", 1_796_119_200_000 as Int64),
        ("2026-12-01T10:00:00Z", 1_796_119_200_000),
        ("2026-12-01T10:00Z", 1_796_119_200_000),
        ("2026-12-01T10:00:00.5Z", 1_796_119_200_500),
        ("2026-12-01T10:00:00.123456Z", 1_796_119_200_123),
        ("2026-12-01T11:30:00.000+01:30", 1_796_119_200_000),
        ("2026-12-01T08:00:00-02:00", 1_796_119_200_000),
        ("2026-12-01", 1_796_083_200_000),
        ("1970-01-01T00:00:00.000Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2024-02-29T00:00:00.000Z", 1_709_164_800_000),
        ("+275760-09-13T00:00:00.000Z", 8_640_000_000_000_000),
        ("-000001-01-01T00:00:00.000Z", -62_198_755_200_000),
    ])
    func expiresDatesParse(text: String, milliseconds: Int64) {
        #expect(ISO8601Milliseconds.parse(text) == milliseconds)
    }

    @Test(arguments: ["", "2026", "2026-13-01", "2026-02-30T00:00:00Z", "2023-02-29", "2026-12-01T25:00:00Z",
                      "2026-12-01T10:00:00.Z", "2026-12-01 10:00:00Z", "2026-12-01T10:00:00Zjunk", "12/01/2026"])
    func malformedExpiresDatesDoNotParse(text: String) {
        #expect(ISO8601Milliseconds.parse(text) == nil)
    }

    @Test func expiresDatesFormatLikeToISOString() throws {
        let samples: [Int64] = [0, -1, 1_796_119_200_123, 951_782_400_000, 8_640_000_000_000_000, -62_198_755_200_000,
                                253_402_300_799_999, 253_402_300_800_000]
        let node = try Node.lines("for (const a of process.argv.slice(1)) console.log(new Date(Number(a)).toISOString())",
                                  arguments: samples.map(String.init))
        #expect(samples.map { ISO8601Milliseconds.format($0) } == node)
        for sample in samples { #expect(ISO8601Milliseconds.parse(ISO8601Milliseconds.format(sample)) == sample) }
    }

    @Test(arguments: ["not json", "[]", "\"str\"", "null", "{}", #"{"cookie":null}"#, #"{"cookie":"x"}"#,
                      #"{"cookie":[]}"#, #"{"cookie":{}"#])
    func nonSessionsFailToDecode(text: String) {
        #expect(throws: SessionDecodingError.self) { try SessionData(json: text) }
    }

    @Test func decodingErrorsNeverEchoTheValue() {
        do {
            _ = try SessionData(json: #"{"cookie":{},"secret":"hunter2"#)
            Issue.record("expected an error")
        } catch {
            #expect(!"\(error)".contains("hunter2"))
        }
    }

    @Test func aCookieKeyAmongTheValuesIsNeverStored() {
        var values = JSONObject()
        values["cookie"] = "shadow"
        values["a"] = 1
        let data = SessionData(cookie: SessionCookie(originalMaxAge: nil, expires: nil), values: values)
        #expect(data.jsonString == #"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/","sameSite":"lax"},"a":1}"#)
    }

    @Test func encodeDecodeRoundTrips() throws {
        let cookies = [
            SessionCookie(),
            SessionCookie(originalMaxAge: 1, expires: Date(javaScriptMilliseconds: 1_796_119_200_001), secure: true,
                          httpOnly: false, path: "/app", domain: "a.example", sameSite: .strict),
            SessionCookie(originalMaxAge: -5, expires: Date(javaScriptMilliseconds: -1), sameSite: SetCookie.SameSite.none),
        ]
        for cookie in cookies {
            let data = SessionData(cookie: cookie, values: ["0": "first", "x": ["y": [1, "2", nil]], "e": .number("1e400")])
            #expect(try SessionData(json: data.jsonBytes()) == data)
        }
    }
}

// MARK: - SessionCookie

@Suite struct SessionCookieTests {
    @Test func maxAgeMovesExpiresAsExpressDoes() {
        var cookie = SessionCookie()
        cookie.setMaxAge(60_000, now: decemberFirst)
        #expect(cookie.originalMaxAge == 60_000)
        #expect(cookie.expires == decemberFirst.addingTimeInterval(60))
        #expect(cookie.maxAge(now: decemberFirst.addingTimeInterval(15)) == 45_000)
        cookie.resetMaxAge(now: decemberFirst.addingTimeInterval(30))
        #expect(cookie.expires == decemberFirst.addingTimeInterval(90))
        cookie.setMaxAge(nil, now: decemberFirst)
        #expect(cookie.expires == nil && cookie.originalMaxAge == nil && cookie.maxAge == nil)
    }

    @Test func maxAgeUsesTheRealClockByDefault() throws {
        var cookie = SessionCookie()
        cookie.maxAge = 10_000
        let left = try #require(cookie.maxAge)
        #expect((9_000...10_000).contains(left))
    }

    @Test func expiresIsKeptToTheMillisecond() {
        var cookie = SessionCookie()
        cookie.setMaxAge(1, now: Date(timeIntervalSince1970: 1_796_119_200.123_456_7))
        #expect(cookie.expires?.javaScriptMilliseconds == 1_796_119_200_124)
    }
}

// MARK: - Session

/// A session on a MemorySessionStore, as the middleware would make it.
private func makeSession(store: MemorySessionStore, clock: TestClock, configuration: SessionConfiguration? = nil)
    throws -> (Session, SessionEngine) {
    let configuration = configuration ?? SessionConfiguration(secrets: ["s"], cookie: SessionCookieOptions(maxAge: 60_000),
                                                              now: clock.closure)
    let engine = try SessionEngine(store: store, configuration: configuration, metrics: SessionMetrics())
    return (Session(newWith: engine, requestIsSecure: false, now: clock.now()), engine)
}

@Suite struct SessionTests {
    @Test func subscriptSetsAndRemovesValues() throws {
        let clock = TestClock()
        let (session, _) = try makeSession(store: MemorySessionStore(now: clock.closure), clock: clock)
        #expect(session.status == .unmodified)
        session["userName"] = "Aditya@123"
        #expect(session["userName"] == "Aditya@123")
        #expect("Welcome \(session["userName"] ?? "guest")" == "Welcome Aditya@123")
        #expect(session.status == .modified)
        session["userName"] = nil
        #expect(session["userName"] == nil)
        #expect(session.status == .unmodified)   // back to what it was: express compares content, not writes
        #expect(session.data.isEmpty)
    }

    @Test func typedHelpersUseCodable() throws {
        struct Cart: Codable, Equatable { var items: [String]; var total: Double }
        let clock = TestClock()
        let (session, _) = try makeSession(store: MemorySessionStore(now: clock.closure), clock: clock)
        try session.set("cart", Cart(items: ["book"], total: 12.5))
        #expect(session["cart"]?["items"] == ["book"])
        #expect(session["cart"]?["total"] == 12.5)
        #expect(try session.value("cart", as: Cart.self) == Cart(items: ["book"], total: 12.5))
        #expect(try session.value("missing", as: Cart.self) == nil)
        session["nothing"] = nil
        session["null"] = .null
        #expect(try session.value("null", as: Int.self) == nil)
        session["wrong"] = "text"
        #expect(throws: (any Error).self) { try session.value("wrong", as: Cart.self) }
    }

    @Test func theCookieKeyIsReserved() throws {
        let clock = TestClock()
        let (session, _) = try makeSession(store: MemorySessionStore(now: clock.closure), clock: clock)
        session["cookie"] = "nope"
        #expect(session["cookie"] == nil)
        #expect(session.status == .unmodified)
    }

    @Test func saveWritesTheStore() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        let (session, engine) = try makeSession(store: store, clock: clock)
        session["a"] = 1
        try await session.save()
        #expect(try await store.get(session.id)?.values == ["a": 1])
        #expect(engine.metrics.saved == 1 && engine.metrics.created == 1)
        #expect(session.isSaved)
        session["a"] = 2
        #expect(!session.isSaved)
    }

    @Test func regenerateReplacesIdValuesAndCookie() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        let (session, engine) = try makeSession(store: store, clock: clock)
        session["user"] = "u1"
        try await session.save()
        let oldId = session.id
        clock.advance(30)
        try await session.regenerate()
        #expect(session.id != oldId)
        #expect(session.data.isEmpty)
        #expect(session.isNew)
        #expect(session.cookie.expires == clock.now().addingTimeInterval(60))
        #expect(session.status == .modified)   // another id is a modification
        #expect(try await store.get(oldId) == nil)
        #expect(engine.metrics.destroyed == 1)
    }

    @Test func destroyDropsTheSessionAndIgnoresLaterWrites() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        let (session, _) = try makeSession(store: store, clock: clock)
        session["user"] = "u1"
        try await session.save()
        try await session.destroy()
        #expect(session.status == .destroyed)
        #expect(try await store.get(session.id) == nil)
        session["user"] = "again"
        #expect(session["user"] == nil)
        try await session.save()   // nothing to save: it is gone
        #expect(try await store.get(session.id) == nil)
        try await session.regenerate()   // a new session may start
        #expect(session.status == .modified)
    }

    @Test func reloadRestoresTheStoredValues() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        let (session, _) = try makeSession(store: store, clock: clock)
        session["n"] = 1
        try await session.save()
        session["n"] = 2
        try await session.reload()
        #expect(session["n"] == 1)
        try await store.destroy(session.id)
        await #expect(throws: SessionNotFoundError.self) { try await session.reload() }
    }

    @Test func touchRestartsTheCookieLifetime() throws {
        let clock = TestClock()
        let (session, _) = try makeSession(store: MemorySessionStore(now: clock.closure), clock: clock)
        clock.advance(45)
        session.touch()
        #expect(session.cookie.expires == clock.now().addingTimeInterval(60))
        #expect(session.status == .unmodified)   // cookie changes are not modifications
    }

    @Test func storeFailuresSurfaceAsSessionStoreErrors() async throws {
        let clock = TestClock()
        let failing = CountingStore(base: MemorySessionStore(now: clock.closure))
        failing.failing = true
        let configuration = SessionConfiguration(secrets: ["s"], now: clock.closure)
        let engine = try SessionEngine(store: failing, configuration: configuration, metrics: SessionMetrics())
        let session = Session(newWith: engine, requestIsSecure: false, now: clock.now())
        session["x"] = 1
        await #expect(throws: SessionStoreError.self) { try await session.save() }
        #expect(engine.metrics.storeErrors == 1)
    }
}
