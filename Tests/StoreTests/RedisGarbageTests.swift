import Foundation
#if canImport(Glibc)
import Glibc
#endif
import EvServer
import RedisSessionStore
import Synchronization
import Testing
@testable import EvServerApp

// Whatever sits at `sess:<id>` (another program's value, a half-written migration, a hash someone HSET by hand),
// a request carrying a validly signed cookie for <id> must get a fresh session: 200, never a 500, a crash, or a
// 503 that repeats on every request of that user until the key expires. The store logs a warning (never the id).
// Driven through the `evserver` demo over HTTP against the test redis-server.

/// A value planted at a session key.
enum Garbage: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case notJSON
    case invalidUTF8
    case empty
    case jsonArray
    case jsonString
    case jsonNumber
    case jsonNull
    case objectWithoutCookie
    case cookieNull
    case cookieString
    case cookieArray
    case nestedTooDeep
    case tenMegabytesOfText
    case tenMegabyteJSONString
    case hash
    case list
    case set

    var testDescription: String { rawValue }

    /// Puts the value at `key` (expiring in a minute, so a failed run leaves nothing behind for long).
    func plant(at key: String, with redis: RedisClient) async throws {
        let value: [UInt8]
        switch self {
        case .notJSON: value = Array("this is not JSON".utf8)
        case .invalidUTF8: value = [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x3A, 0x31, 0x7D, 0xC3, 0x28]
        case .empty: value = []
        case .jsonArray: value = Array(#"[{"cookie":{"path":"/"}},1,2]"#.utf8)
        case .jsonString: value = Array(#""{\"cookie\":{}}""#.utf8)
        case .jsonNumber: value = Array("42".utf8)
        case .jsonNull: value = Array("null".utf8)
        case .objectWithoutCookie: value = Array(#"{"views":41,"userName":"mallory"}"#.utf8)
        case .cookieNull: value = Array(#"{"cookie":null,"views":41}"#.utf8)
        case .cookieString: value = Array(#"{"cookie":"path=/","views":41}"#.utf8)
        case .cookieArray: value = Array(#"{"cookie":[{"path":"/"}],"views":41}"#.utf8)
        case .nestedTooDeep:
            // 100 000 levels: a recursive parser without a depth limit would overflow its stack.
            value = Array(repeating: UInt8(ascii: "["), count: 100_000) + Array(repeating: UInt8(ascii: "]"), count: 100_000)
        case .tenMegabytesOfText: value = Array(repeating: UInt8(ascii: "x"), count: 10 << 20)
        case .tenMegabyteJSONString:
            value = [UInt8(ascii: "\"")] + Array(repeating: UInt8(ascii: "a"), count: 10 << 20) + [UInt8(ascii: "\"")]
        case .hash:
            _ = try await redis.send("HSET", key, "cookie", #"{"path":"/"}"#, "views", "41")
            _ = try await redis.expire(key, after: 60)
            return
        case .list:
            _ = try await redis.send("RPUSH", key, #"{"cookie":{"path":"/"}}"#, "x")
            _ = try await redis.expire(key, after: 60)
            return
        case .set:
            _ = try await redis.send("SADD", key, #"{"cookie":{"path":"/"}}"#)
            _ = try await redis.expire(key, after: 60)
            return
        }
        try await redis.set(key, to: value, expiresIn: 60)
    }
}

@Suite(.serialized) struct RedisGarbageTests {
    @Test(arguments: Garbage.allCases)
    func garbageAtTheSessionKeyLoadsAsNoSession(_ garbage: Garbage) async throws {
        // A 10 MB reply takes a debug build on a loaded machine most of a second to receive, and a request has one
        // --redis-timeout of Redis time in all: this test is about what garbage loads as, not about deadlines.
        try await withDemo(["--redis-timeout", "2500"]) { app in
            let id = SessionID.generate()
            let key = app.prefix + id
            try await garbage.plant(at: key, with: app.redis)
            let cookie = try CookieSigner(secrets: ["test secret"]).cookieValue(for: id)

            let start = ContinuousClock.now
            let (response, log) = try await capturingStandardError {
                try app.client().request("GET", "/views", headers: ["Cookie": "connect.sid=\(cookie)"])
            }
            let elapsed = ContinuousClock.now - start

            // Another Redis type at the key (GET fails with -WRONGTYPE) is "no session" like any other value that
            // is not a session: a fresh one.
            #expect(response.status == 200, "\(garbage): \(response.status) \(response.text)")
            #expect(response.text == #"{"views":1,"instance":"test-instance"}"#, "\(garbage)")
            let newCookie = try #require(response.cookies["connect.sid"], "\(garbage): no new session cookie")
            let newID = try #require(DemoServer.sessionID(fromCookie: newCookie))
            #expect(newID != id, "\(garbage): the fresh session must get a new id, not the garbage key's")

            // The store's warning carries its prefix (unique to this server) and never the session id.
            let warnings = log.split(separator: "\n").filter { $0.contains(app.prefix) && $0.contains("warning") }
            #expect(!warnings.isEmpty, "\(garbage): no warning logged; stderr had: \(log.prefix(2000))")
            #expect(!log.contains(id), "\(garbage): the session id was logged")
            #expect(elapsed < .seconds(3), "\(garbage): took \(elapsed)")

            // The server is still serving, and the fresh session works.
            let client = try app.client()
            client.cookieJar["connect.sid"] = newCookie
            #expect(try client.request("GET", "/healthz").status == 200)
            if response.status == 200 {
                #expect(try client.request("GET", "/views").text == #"{"views":2,"instance":"test-instance"}"#)
            }
            _ = try await app.redis.delete([key])
        }
    }

    @Test func storedCookieAttributesCannotInjectResponseHeaders() async throws {
        // The stored cookie's path and domain go back out in Set-Cookie (an expiring cookie is re-sent when the
        // session changes). CR LF in them must not become a header of its own.
        try await withDemo() { app in
            let id = SessionID.generate()
            let key = app.prefix + id
            let value = #"{"cookie":{"originalMaxAge":600000,"expires":"2099-01-01T00:00:00.000Z","httpOnly":true,"#
                + #""domain":"example.com\r\nX-Injected: domain","path":"/\r\nX-Injected: path"},"views":1}"#
            try await app.redis.set(key, to: Array(value.utf8), expiresIn: 60)
            let cookie = try CookieSigner(secrets: ["test secret"]).cookieValue(for: id)
            let (response, _) = try await capturingStandardError {
                try app.client().request("GET", "/views", headers: ["Cookie": "connect.sid=\(cookie)"])
            }
            #expect(response.status == 200)
            #expect(response.text == #"{"views":2,"instance":"test-instance"}"#)
            #expect(response.headers["X-Injected"] == nil)
            for setCookie in response.setCookies {
                #expect(!setCookie.contains("\r") && !setCookie.contains("\n"))
            }
            #expect(try app.client().request("GET", "/healthz").status == 200)
            _ = try await app.redis.delete([key])
        }
    }

    @Test func garbageNeverCostsMoreThanOneGet() async throws {
        // A session whose key holds garbage is replaced by a new id; the garbage is left alone (it expires by
        // itself), so a request pays one GET for it, not a DEL.
        try await withDemo() { app in
            let id = SessionID.generate()
            let key = app.prefix + id
            try await Garbage.notJSON.plant(at: key, with: app.redis)
            let cookie = try CookieSigner(secrets: ["test secret"]).cookieValue(for: id)
            let (response, _) = try await capturingStandardError {
                try app.client().request("GET", "/login", headers: ["Cookie": "connect.sid=\(cookie)"])
            }
            #expect(response.status == 200)
            #expect(response.text == "Welcome guest")
            #expect(response.setCookies.isEmpty, "an unmodified new session sets no cookie (saveUninitialized false)")
            #expect(try await app.redis.get(key) == Array("this is not JSON".utf8))
            _ = try await app.redis.delete([key])
        }
    }
}

// MARK: - Capturing the log

private let captureLock = Mutex(false)

/// Runs `body` with the process's standard error (where the demo's loggers write) redirected to a temporary file,
/// and returns what was written there. Everything captured is copied to the real standard error afterwards, so
/// nothing that other tests print in the meantime is lost. One capture at a time.
func capturingStandardError<T>(_ body: () async throws -> T) async throws -> (T, String) {
    while !captureLock.withLock({ busy in defer { busy = true }; return !busy }) {
        try await Task.sleep(for: .milliseconds(5))
    }
    defer { captureLock.withLock { $0 = false } }
    var template = Array("/tmp/evserver-stderr.XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard fd >= 0 else { throw PrivateRedis.Failure("mkstemp failed: errno \(errno)") }
    let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    defer { unlink(path); close(fd) }
    fflush(nil)   // stderr is unbuffered, but a handler may write through another FILE
    let saved = dup(2)
    dup2(fd, 2)
    let result: Result<T, any Error>
    do { result = .success(try await body()) } catch { result = .failure(error) }
    fflush(nil)
    dup2(saved, 2)
    close(saved)
    let captured = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    if !captured.isEmpty {
        var bytes = Array(captured.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            guard written > 0 else { break }
            bytes = bytes.dropFirst(written)
        }
    }
    return (try result.get(), captured)
}
