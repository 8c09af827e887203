import EvServer
import Foundation
import Synchronization
import Testing
@testable import RedisSessionStore

// The middleware driven as the server drives it: value Requests, a Response, a Next closure standing for the
// handler. The store is a real MemorySessionStore behind a wrapper that records every call (and can fail on cue).

/// Records the calls that reach a store, and fails them on demand.
final class CountingStore: SessionStore {
    struct Failure: Error, CustomStringConvertible {
        var description: String { "injected store failure" }
    }

    let base: MemorySessionStore
    private let log = Mutex<[(operation: String, id: String)]>([])
    private let failFlag = Atomic<Bool>(false)

    init(base: MemorySessionStore) { self.base = base }

    /// When true, every call throws ``Failure``.
    var failing: Bool {
        get { failFlag.load(ordering: .relaxed) }
        set { failFlag.store(newValue, ordering: .relaxed) }
    }

    /// The operations so far, e.g. `["get", "touch"]`.
    var operations: [String] { log.withLock { $0.map(\.operation) } }
    /// The operations with their ids.
    var calls: [(operation: String, id: String)] { log.withLock { $0 } }
    func reset() { log.withLock { $0.removeAll() } }

    private func record(_ operation: String, _ id: String = "") throws {
        log.withLock { $0.append((operation, id)) }
        if failing { throw Failure() }
    }

    func get(_ id: String) async throws -> SessionData? {
        try record("get", id)
        return try await base.get(id)
    }
    func set(_ id: String, _ session: SessionData) async throws {
        try record("set", id)
        try await base.set(id, session)
    }
    func destroy(_ id: String) async throws {
        try record("destroy", id)
        try await base.destroy(id)
    }
    func touch(_ id: String, _ session: SessionData) async throws {
        try record("touch", id)
        try await base.touch(id, session)
    }
    func all() async throws -> [String: SessionData] {
        try record("all")
        return try await base.all()
    }
    func length() async throws -> Int {
        try record("length")
        return try await base.length()
    }
    func clear() async throws {
        try record("clear")
        try await base.clear()
    }
    func ping() async throws {
        try record("ping")
    }
}

/// A middleware on a counting memory store with a hand-moved clock.
final class Harness {
    let clock: TestClock
    let memory: MemorySessionStore
    let store: CountingStore
    let middleware: SessionMiddleware

    init(sharing other: Harness? = nil, _ configure: (inout SessionConfiguration) -> Void = { _ in }) throws {
        clock = other?.clock ?? TestClock()
        memory = other?.memory ?? MemorySessionStore(now: clock.closure)
        store = other?.store ?? CountingStore(base: memory)
        var configuration = SessionConfiguration(secrets: ["keyboard cat"], now: clock.closure)
        configure(&configuration)
        middleware = try SessionMiddleware(store: store, configuration: configuration)
    }

    struct Outcome {
        let request: Request
        let response: Response
        var setCookies: [String] { response.headers.values("Set-Cookie") }
        /// The `connect.sid` Set-Cookie header, if one was sent.
        var sessionCookie: String? { setCookies.first { $0.hasPrefix("connect.sid=") } }
        /// What a browser would send back: `connect.sid=<value>`.
        var cookieHeader: String? { sessionCookie.map { String($0.prefix { $0 != ";" }) } }
        var session: Session { request.session }
    }

    /// Runs one request through the middleware; `handler` plays the route.
    @discardableResult
    func send(cookie: String? = nil, uri: String = "/", headers: [(String, String)] = [],
              _ handler: @escaping (Request, Response) async throws -> Void = { _, _ in }) async throws -> Outcome {
        var fields = headers
        if let cookie { fields.append(("Cookie", cookie)) }
        let request = Request(method: .get, uri: uri, headers: HTTPHeaders(fields))
        let response = Response()
        try await middleware.handle(request, response, next: Next { try await handler(request, response) })
        return Outcome(request: request, response: response)
    }

    /// A request that stores `user` in a new session; returns the cookie to send back.
    func login(_ user: String = "Aditya@123") async throws -> (cookie: String, id: String) {
        let outcome = try await send { request, _ in request.session["userName"] = .string(user) }
        return (try #require(outcome.cookieHeader), outcome.session.id)
    }
}

func encodedCookie(id: String, secret: String = "keyboard cat") throws -> String {
    "connect.sid=" + (try CookieSigner(secrets: [secret])).cookieValue(for: id)
}

@Suite struct SessionMiddlewareTests {
    // MARK: New sessions

    @Test func requestWithoutCookieThatStoresNothingCostsNoStoreCall() async throws {
        let harness = try Harness()
        let outcome = try await harness.send { request, response in
            response.send("Welcome \(request.session["userName"] ?? "guest")")
        }
        #expect(harness.store.operations == [])
        #expect(outcome.setCookies == [])
        #expect(outcome.session.isNew)
        #expect(String(decoding: outcome.response.body, as: UTF8.self) == "Welcome guest")
    }

    @Test func modifiedNewSessionIsSavedAndGetsASignedCookie() async throws {
        let harness = try Harness()
        let outcome = try await harness.send { request, _ in request.session["userName"] = "Aditya@123" }
        let id = outcome.session.id
        #expect(harness.store.operations == ["set"])
        let signed = try CookieSigner(secrets: ["keyboard cat"]).cookieValue(for: id)
        #expect(outcome.setCookies == ["connect.sid=\(signed); Path=/; HttpOnly; SameSite=Lax"])
        let stored = try #require(try await harness.memory.get(id))
        #expect(stored.jsonString
            == #"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/","sameSite":"lax"},"userName":"Aditya@123"}"#)
        #expect(harness.middleware.metrics.created == 1)
        #expect(harness.middleware.metrics.saved == 1)
    }

    @Test func genidMakesTheIds() async throws {
        let harness = try Harness { $0.genid = { "custom-id-1" } }
        let outcome = try await harness.send { request, _ in request.session["a"] = 1 }
        #expect(outcome.session.id == "custom-id-1")
        #expect(try await harness.memory.get("custom-id-1") != nil)
    }

    @Test func untouchedNewSessionsMakeNoId() async throws {
        final class Counter: Sendable {
            let count = Mutex(0)
        }
        let made = Counter()
        let harness = try Harness {
            $0.genid = {
                made.count.withLock { $0 += 1 }
                return SessionID.generate()
            }
        }
        try await harness.send { request, _ in _ = request.session["anything"] }
        #expect(made.count.withLock { $0 } == 0)   // no random bytes for a request that stores nothing
        let outcome = try await harness.send { request, _ in request.session["a"] = 1 }
        #expect(made.count.withLock { $0 } == 1)
        #expect(outcome.cookieHeader == (try encodedCookie(id: outcome.session.id)))
    }

    @Test func saveUninitializedSavesEmptyNewSessions() async throws {
        let harness = try Harness { $0.saveUninitialized = true }
        let first = try await harness.send()
        #expect(harness.store.operations == ["set"])
        #expect(first.sessionCookie != nil)
        harness.store.reset()
        let second = try await harness.send(cookie: first.cookieHeader)
        #expect(harness.store.operations == ["get", "touch"])
        #expect(second.session.id == first.session.id)
        #expect(second.sessionCookie == nil)
    }

    // MARK: Returning sessions

    @Test func returningCookieLoadsTheSessionAndTouchesIt() async throws {
        let harness = try Harness()
        let (cookie, id) = try await harness.login()
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, response in
            response.send("Welcome \(request.session["userName"] ?? "guest")")
        }
        #expect(String(decoding: outcome.response.body, as: UTF8.self) == "Welcome Aditya@123")
        #expect(outcome.session.id == id)
        #expect(!outcome.session.isNew)
        #expect(harness.store.operations == ["get", "touch"])
        #expect(outcome.setCookies == [])   // no expiry, not modified, not rolling
        #expect(harness.middleware.metrics.touched == 1)
    }

    @Test func modifiedReturningSessionIsSavedWithoutACookieWhenItHasNoExpiry() async throws {
        let harness = try Harness()
        let (cookie, id) = try await harness.login()
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, _ in request.session["visits"] = 2 }
        #expect(harness.store.operations == ["get", "set"])
        #expect(outcome.setCookies == [])
        #expect(try await harness.memory.get(id)?.values["visits"] == 2)
    }

    @Test func rewritingTheSameValueIsNotAModification() async throws {
        let harness = try Harness()
        let (cookie, _) = try await harness.login()
        harness.store.reset()
        try await harness.send(cookie: cookie) { request, _ in request.session["userName"] = "Aditya@123" }
        #expect(harness.store.operations == ["get", "touch"])
    }

    /// "é" as one code point and as "e" + U+0301 are equal Swift strings but different JSON text, and express
    /// compares the text: rewriting one as the other is a modification, and the new bytes are saved.
    @Test func rewritingAValueAsCanonicallyEquivalentTextIsAModification() async throws {
        let harness = try Harness()
        let (cookie, id) = try await harness.login("caf\u{E9}")
        harness.store.reset()
        try await harness.send(cookie: cookie) { request, _ in request.session["userName"] = "cafe\u{301}" }
        #expect(harness.store.operations == ["get", "set"])
        let stored = try #require(try await harness.memory.get(id)?.values["userName"]?.stringValue)
        #expect(Array(stored.utf8) == Array("cafe\u{301}".utf8))
    }

    @Test func modifiedSessionWithMaxAgeGetsAFreshExpires() async throws {
        let harness = try Harness { $0.cookie.maxAge = 60_000 }
        let (cookie, _) = try await harness.login()
        harness.clock.advance(10)
        let outcome = try await harness.send(cookie: cookie) { request, _ in request.session["visits"] = 2 }
        let expires = harness.clock.now().addingTimeInterval(60)
        #expect(outcome.sessionCookie?.hasSuffix("; Path=/; Expires=\(expires.httpDate); HttpOnly; SameSite=Lax") == true)
        #expect(outcome.sessionCookie?.contains("Max-Age") == false)
    }

    @Test func unmodifiedSessionWithMaxAgeGetsNoCookieButIsTouched() async throws {
        let harness = try Harness { $0.cookie.maxAge = 60_000 }
        let (cookie, id) = try await harness.login()
        harness.store.reset()
        harness.clock.advance(30)
        let outcome = try await harness.send(cookie: cookie)
        #expect(outcome.setCookies == [])
        #expect(harness.store.operations == ["get", "touch"])
        // The store's expiry moved with the touch: 60 s from now, not from the login.
        #expect(harness.memory.expiry(of: id) == harness.clock.now().addingTimeInterval(60))
        #expect(try await harness.memory.get(id)?.cookie.expires == harness.clock.now().addingTimeInterval(60))
    }

    @Test func rollingSendsTheCookieOnEveryResponse() async throws {
        let harness = try Harness {
            $0.rolling = true
            $0.cookie.maxAge = 60_000
        }
        let (cookie, _) = try await harness.login()
        harness.store.reset()
        harness.clock.advance(30)
        let outcome = try await harness.send(cookie: cookie)
        #expect(harness.store.operations == ["get", "touch"])
        let expires = harness.clock.now().addingTimeInterval(60)
        #expect(outcome.sessionCookie?.contains("Expires=\(expires.httpDate)") == true)
        #expect(outcome.cookieHeader == cookie)
    }

    @Test func resaveSavesUnmodifiedSessions() async throws {
        let harness = try Harness { $0.resave = true }
        let (cookie, _) = try await harness.login()
        harness.store.reset()
        try await harness.send(cookie: cookie)
        #expect(harness.store.operations == ["get", "set"])
    }

    @Test func expiredSessionStartsOver() async throws {
        let harness = try Harness { $0.cookie.maxAge = 1000 }
        let (cookie, id) = try await harness.login()
        harness.clock.advance(2)
        let outcome = try await harness.send(cookie: cookie) { request, _ in
            #expect(request.session["userName"] == nil)
        }
        #expect(outcome.session.isNew)
        #expect(outcome.session.id != id)
    }

    @Test func validCookieForAnUnknownIdStartsANewSession() async throws {
        let harness = try Harness()
        let cookie = try encodedCookie(id: "not-in-the-store")
        let outcome = try await harness.send(cookie: cookie) { request, _ in request.session["a"] = 1 }
        #expect(harness.store.operations == ["get", "set"])
        #expect(outcome.session.id != "not-in-the-store")
        #expect(outcome.cookieHeader == (try encodedCookie(id: outcome.session.id)))
    }

    // MARK: Bad cookies

    @Test(arguments: [
        "connect.sid=s%3Aabcdefghijklmnopqrstuvwxyz012345.2T3g1YIBqofc0ViEUEt59cUq%2Ba6Wlfi59xfb4RQsxSR",  // signature
        "connect.sid=s%3Aabcdefghijklmnopqrstuvwxyz012346.2T3g1YIBqofc0ViEUEt59cUq%2Ba6Wlfi59xfb4RQsxSQ",  // id
        "connect.sid=abcdefghijklmnopqrstuvwxyz012345",                                                     // unsigned
        "connect.sid=s%3Aabcdefghijklmnopqrstuvwxyz012345",                                                // no signature
        "connect.sid=%%%", "connect.sid=s:", "connect.sid=", "connect.sid", "=;;;", "connect.sid=s%3A.",
        "other=1; connect.sid=\u{1F600}",
    ])
    func badCookiesStartNewSessionsWithoutAStoreCall(cookie: String) async throws {
        let harness = try Harness()
        try await harness.memory.set("abcdefghijklmnopqrstuvwxyz012345", sampleSession(expiringIn: 60, now: harness.clock.now()))
        let outcome = try await harness.send(cookie: cookie) { request, _ in
            #expect(request.session["userName"] == nil)
        }
        #expect(harness.store.operations == [])
        #expect(outcome.session.isNew)
        #expect(outcome.session.id != "abcdefghijklmnopqrstuvwxyz012345")
    }

    @Test func theKnownVectorCookieLoads() async throws {
        let harness = try Harness()
        try await harness.memory.set("abcdefghijklmnopqrstuvwxyz012345", sampleSession(expiringIn: 60, now: harness.clock.now()))
        let outcome = try await harness.send(
            cookie: "connect.sid=s%3Aabcdefghijklmnopqrstuvwxyz012345.2T3g1YIBqofc0ViEUEt59cUq%2Ba6Wlfi59xfb4RQsxSQ")
        #expect(!outcome.session.isNew)
        #expect(outcome.session["userName"] == "Aditya@123")
    }

    // MARK: Secrets

    @Test func cookieSignedWithAnOldSecretStillLoadsAndNewCookiesUseTheFirst() async throws {
        let old = try Harness {
            $0.secrets = ["old secret"]
            $0.cookie.maxAge = 60_000
        }
        let (cookie, id) = try await old.login()
        let rotated = try Harness(sharing: old) {
            $0.secrets = ["new secret", "old secret"]
            $0.cookie.maxAge = 60_000
        }
        let outcome = try await rotated.send(cookie: cookie) { request, _ in request.session["visits"] = 1 }
        #expect(outcome.session.id == id)
        #expect(outcome.session["userName"] == "Aditya@123")
        #expect(outcome.cookieHeader == (try encodedCookie(id: id, secret: "new secret")))
    }

    @Test func emptySecretsAreRefused() {
        #expect(throws: CookieSignerError.self) { try Harness { $0.secrets = [] } }
        #expect(throws: CookieSignerError.self) { try Harness { $0.secrets = [""] } }
    }

    // MARK: unset, destroy, regenerate

    @Test func unsetWithDestroyRemovesTheStoredSession() async throws {
        let harness = try Harness { $0.unset = .destroy }
        let (cookie, id) = try await harness.login()
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, _ in request.session.unset() }
        #expect(harness.store.calls.map { "\($0.operation) \($0.id)" } == ["get \(id)", "destroy \(id)"])
        #expect(outcome.setCookies == [])
        #expect(try await harness.memory.get(id) == nil)
    }

    @Test func unsetWithKeepLeavesTheStoredSession() async throws {
        let harness = try Harness { $0.unset = .keep }
        let (cookie, id) = try await harness.login()
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, _ in request.session.unset() }
        #expect(harness.store.operations == ["get"])
        #expect(outcome.setCookies == [])
        #expect(try await harness.memory.get(id) != nil)
    }

    @Test func destroyInAHandlerRemovesTheSessionAndSetsNoCookie() async throws {
        let harness = try Harness { $0.unset = .destroy }
        let (cookie, id) = try await harness.login()
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, _ in
            try await request.session.destroy()
        }
        #expect(harness.store.operations == ["get", "destroy"])
        #expect(outcome.setCookies == [])
        #expect(outcome.session.status == .destroyed)
        #expect(harness.middleware.metrics.destroyed == 1)
        harness.store.reset()
        let after = try await harness.send(cookie: cookie)
        #expect(harness.store.operations == ["get"])
        #expect(after.session.isNew && after.session.id != id)
    }

    @Test func regenerateIssuesANewIdAndDestroysTheOldOne() async throws {
        let harness = try Harness()
        let (cookie, oldId) = try await harness.login("anonymous")
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, _ in
            try await request.session.regenerate()
            request.session["userName"] = "admin"
        }
        let newId = outcome.session.id
        #expect(newId != oldId)
        #expect(harness.store.calls.map { "\($0.operation) \($0.id)" } == ["get \(oldId)", "destroy \(oldId)", "set \(newId)"])
        #expect(outcome.cookieHeader == (try encodedCookie(id: newId)))
        #expect(try await harness.memory.get(oldId) == nil)
        #expect(try await harness.memory.get(newId)?.values == ["userName": "admin"])
        #expect(harness.middleware.metrics.created == 2)
    }

    @Test func regeneratedEmptySessionIsStillSaved() async throws {
        // express: another id counts as a modification, so even an empty regenerated session is saved and sent.
        let harness = try Harness()
        let (cookie, _) = try await harness.login()
        harness.store.reset()
        let outcome = try await harness.send(cookie: cookie) { request, _ in try await request.session.regenerate() }
        #expect(harness.store.operations == ["get", "destroy", "set"])
        #expect(outcome.sessionCookie != nil)
    }

    @Test func explicitSaveIsNotRepeatedAtTheEnd() async throws {
        let harness = try Harness()
        try await harness.send { request, _ in
            request.session["a"] = 1
            try await request.session.save()
        }
        #expect(harness.store.operations == ["set"])
    }

    // MARK: Cookie options

    @Test func cookieOptionsShapeTheSetCookieHeader() async throws {
        let harness = try Harness {
            $0.name = "app.sid"
            $0.cookie = SessionCookieOptions(path: "/app", domain: "example.com", httpOnly: false, sameSite: .strict,
                                             maxAge: 3_600_000)
        }
        let outcome = try await harness.send(uri: "/app/login?x=1") { request, _ in request.session["a"] = 1 }
        let id = outcome.session.id
        let expires = harness.clock.now().addingTimeInterval(3600)
        let value = try CookieSigner(secrets: ["keyboard cat"]).cookieValue(for: id)
        #expect(outcome.setCookies
            == ["app.sid=\(value); Domain=example.com; Path=/app; Expires=\(expires.httpDate); SameSite=Strict"])
        let stored = try #require(try await harness.memory.get(id))
        #expect(stored.cookie.originalMaxAge == 3_600_000)
        #expect(stored.jsonString.hasPrefix(
            #"{"cookie":{"originalMaxAge":3600000,"expires":"2025-12-01T11:00:00.000Z","httpOnly":false,"domain":"example.com","path":"/app","sameSite":"strict"}"#))
    }

    @Test func sameSiteCanBeLeftOut() async throws {
        let harness = try Harness { $0.cookie.sameSite = nil }
        let outcome = try await harness.send { request, _ in request.session["a"] = 1 }
        #expect(outcome.sessionCookie?.hasSuffix("; Path=/; HttpOnly") == true)
    }

    @Test func requestsOutsideTheCookiePathGetADetachedSession() async throws {
        let harness = try Harness { $0.cookie.path = "/app" }
        let login = try await harness.send(uri: "/app") { request, _ in request.session["a"] = 1 }
        harness.store.reset()
        let outcome = try await harness.send(cookie: login.cookieHeader, uri: "/other") { request, _ in
            #expect(request.session["a"] == nil)
            request.session["b"] = 2
            try await request.session.save()
        }
        #expect(harness.store.operations == [])
        #expect(outcome.setCookies == [])
    }

    @Test func secureCookieIsWithheldOverPlainHTTP() async throws {
        let harness = try Harness { $0.cookie.secure = .always }
        let outcome = try await harness.send(headers: [("X-Forwarded-Proto", "https")]) { request, _ in
            request.session["a"] = 1
        }
        #expect(harness.store.operations == ["set"])   // saved, as express does; only the cookie is withheld
        #expect(outcome.setCookies == [])
        #expect(harness.middleware.metrics.secureCookieWithheld == 1)
    }

    @Test func secureCookieIsSentBehindATrustedTLSProxy() async throws {
        let harness = try Harness {
            $0.cookie.secure = .always
            $0.trustProxy = true
        }
        let outcome = try await harness.send(headers: [("X-Forwarded-Proto", "HTTPS , http")]) { request, _ in
            request.session["a"] = 1
        }
        #expect(outcome.sessionCookie?.hasSuffix("; Path=/; HttpOnly; Secure; SameSite=Lax") == true)
        let plain = try await harness.send(headers: [("X-Forwarded-Proto", "http")]) { request, _ in
            request.session["a"] = 1
        }
        #expect(plain.setCookies == [])
        #expect(harness.middleware.metrics.secureCookieWithheld == 1)
    }

    @Test func autoSecureFollowsTheRequestScheme() async throws {
        let harness = try Harness {
            $0.cookie.secure = .auto
            $0.trustProxy = true
        }
        let https = try await harness.send(headers: [("X-Forwarded-Proto", "https")]) { request, _ in
            request.session["a"] = 1
        }
        #expect(https.sessionCookie?.contains("; Secure") == true)
        #expect(try await harness.memory.get(https.session.id)?.cookie.secure == true)
        let http = try await harness.send { request, _ in request.session["a"] = 1 }
        #expect(http.sessionCookie?.contains("; Secure") == false)
        #expect(try await harness.memory.get(http.session.id)?.jsonString.contains(#""secure":false"#) == true)
    }

    /// express-session stores `cookie.secure` as the option gives it: left out, no `secure` member; `false`,
    /// `"secure":false`; `'auto'`, what the request resolved to (over plain HTTP, `false`). None of them sends a
    /// `Secure` cookie over plain HTTP.
    @Test(arguments: [
        (SessionCookieOptions.Secure.off,
         #"{"originalMaxAge":null,"expires":null,"secure":false,"httpOnly":true,"path":"/","sameSite":"lax"}"#),
        (.never, #"{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/","sameSite":"lax"}"#),
        (.auto, #"{"originalMaxAge":null,"expires":null,"secure":false,"httpOnly":true,"path":"/","sameSite":"lax"}"#),
    ])
    func storedCookieCarriesSecureAsExpressStoresIt(_ secure: SessionCookieOptions.Secure, _ cookieJSON: String)
        async throws
    {
        let harness = try Harness {
            $0.cookie.secure = secure
            $0.saveUninitialized = true
        }
        let outcome = try await harness.send()
        let stored = try #require(try await harness.memory.get(outcome.session.id))
        #expect(stored.jsonString == #"{"cookie":"# + cookieJSON + "}")
        #expect(stored.cookie.jsonValue.description == cookieJSON)
        let setCookie = try #require(outcome.sessionCookie)
        #expect(setCookie.hasSuffix("; Path=/; HttpOnly; SameSite=Lax"), "\(setCookie)")

        // A later request that loads it keeps the stored member as it was.
        let again = try await harness.send(cookie: outcome.cookieHeader) { request, _ in request.session["a"] = 1 }
        #expect(again.session.id == outcome.session.id)
        let updated = try #require(try await harness.memory.get(outcome.session.id))
        #expect(updated.jsonString == #"{"cookie":"# + cookieJSON + #","a":1}"#)
    }

    // MARK: Failures

    @Test func storeFailureOnLoadAnswers503WithRetryAfter() async throws {
        let harness = try Harness()
        let (cookie, _) = try await harness.login()
        harness.store.failing = true
        var handlerRan = false
        do {
            try await harness.send(cookie: cookie) { _, _ in handlerRan = true }
            Issue.record("expected a 503")
        } catch let error as HTTPError {
            #expect(error.status.code == 503)
            #expect(error.headers["Retry-After"] == "1")
            #expect(error.message == "session store unavailable")
        }
        #expect(!handlerRan)
        #expect(harness.middleware.metrics.storeErrors == 1)
    }

    @Test func storeFailureOnSaveAnswers503() async throws {
        let harness = try Harness()
        harness.store.failing = true
        let error = await #expect(throws: HTTPError.self) {
            _ = try await harness.send { request, _ in request.session["a"] = 1 }
        }
        #expect(error?.status.code == 503)
        #expect(error?.headers["Retry-After"] == "1")
        #expect(harness.middleware.metrics.storeErrors == 1)
    }

    @Test func storeFailureInsideTheHandlerAnswers503() async throws {
        let harness = try Harness()
        let (cookie, _) = try await harness.login()
        let error = await #expect(throws: HTTPError.self) {
            _ = try await harness.send(cookie: cookie) { request, _ in
                harness.store.failing = true
                try await request.session.regenerate()
            }
        }
        #expect(error?.status.code == 503)
        #expect(harness.middleware.metrics.storeErrors == 1)
    }

    @Test func handlerErrorsStillCommitTheSessionAndCarryTheCookie() async throws {
        let harness = try Harness()
        var sessionId = ""
        do {
            try await harness.send { request, _ in
                request.session["flash"] = "try again"
                sessionId = request.session.id
                throw HTTPError(.badRequest, message: "bad input")
            }
            Issue.record("expected the handler's error")
        } catch let error as HTTPError {
            #expect(error.status.code == 400)
            #expect(error.headers.values("Set-Cookie").first?.hasPrefix("connect.sid=s%3A\(sessionId).") == true)
        }
        #expect(try await harness.memory.get(sessionId)?.values["flash"] == "try again")
    }

    // MARK: Misc

    @Test func aSecondSessionMiddlewareLeavesTheFirstAlone() async throws {
        let harness = try Harness()
        let (cookie, _) = try await harness.login()
        harness.store.reset()
        let request = Request(method: .get, uri: "/", headers: ["Cookie": cookie])
        let response = Response()
        try await harness.middleware.handle(request, response, next: Next {
            try await harness.middleware.handle(request, response, next: Next { request.session["inner"] = true })
        })
        #expect(harness.store.operations == ["get", "set"])
    }

    @Test func metricsCountWhatHappened() async throws {
        let harness = try Harness()
        let (cookie, _) = try await harness.login()
        try await harness.send(cookie: cookie)
        try await harness.send(cookie: cookie) { request, _ in request.session["x"] = 1 }
        try await harness.send(cookie: cookie) { request, _ in try await request.session.destroy() }
        let metrics = harness.middleware.metrics
        #expect([metrics.created, metrics.saved, metrics.touched, metrics.destroyed, metrics.storeErrors]
            == [1, 2, 1, 1, 0] as [Int])
    }

    @Test func theExpressExampleConvenienceInitializerWorks() async throws {
        let memory = MemorySessionStore()
        let middleware = try SessionMiddleware(store: memory, secrets: ["keyboard cat"], resave: false,
                                               saveUninitialized: false)
        #expect(middleware.configuration.name == "connect.sid")
        #expect(middleware.configuration.cookie == SessionCookieOptions())
        let request = Request(method: .get, uri: "/")
        try await middleware.handle(request, Response(), next: Next { request.session["a"] = 1 })
        #expect(try await memory.length() == 1)
    }

    @Test func rawPathIgnoresQueryAndAbsoluteForm() {
        #expect(SessionMiddleware.rawPath(of: "/app/x?y=/z") == "/app/x")
        #expect(SessionMiddleware.rawPath(of: "http://host:8080/app?q") == "/app")
        #expect(SessionMiddleware.rawPath(of: "http://host") == "/")
        #expect(SessionMiddleware.rawPath(of: "/a%20b#frag") == "/a%20b")
    }
}
