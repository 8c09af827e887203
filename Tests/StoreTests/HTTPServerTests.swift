import Foundation
import Synchronization
import Testing
@testable import EvServer

// Drives a real server on an ephemeral port with TestHTTPClient: the wire behaviour of evhttp plus our handling.

/// Starts `app` on port 0, runs `body`, and always shuts the server down.
func withServer(_ app: Application, threads: Int = 1,
                _ body: (RunningServer) async throws -> Void) async throws {
    let server = try app.start(host: "127.0.0.1", port: 0, threads: threads)
    do {
        try await body(server)
    } catch {
        await server.shutdown(timeout: .seconds(2))
        throw error
    }
    await server.shutdown(timeout: .seconds(2))
}

/// Runs blocking work on a thread of its own, so the test can await other things meanwhile (the blocking client
/// would otherwise hold one of the few cooperative threads).
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// A one-shot gate: `wait()` suspends until `open()` (at once, if already open).
final class TestGate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Waits for a loop timer: the way a handler awaits something that completes later on its loop.
func sleep(on loop: EventLoop, _ delay: Duration) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        loop.schedule(after: delay) { continuation.resume() }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(3), _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return await condition()
}

struct Boom: Error, CustomStringConvertible {
    var description: String { "secret database password is hunter2" }
}

/// An application with the routes most tests use.
func makeTestApplication(configuration: HTTPServerConfiguration = .init()) -> Application {
    let app = Application(configuration: configuration)
    app.get("/hello") { _, response in response.send("hello world") }
    app.get("/users/:id") { request, response in response.send("user \(request.parameters["id"] ?? "?")") }
    app.get("/query") { request, response in
        let items = request.queryItems.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        response.send(items.joined(separator: "&"))
    }
    app.get("/header") { request, response in
        response.send(request.headers.values("X-Test").joined(separator: "|"))
    }
    app.get("/cookies") { request, response in
        response.send(request.cookies.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            .joined(separator: ";"))
    }
    app.post("/login") { _, response in
        response.setCookie(SetCookie(name: "sid", value: "s%3Aabc.def"))
        response.send("ok")
    }
    app.post("/echo") { request, response in
        response.headers.replace("Content-Type", "application/octet-stream")
        response.body = request.body
    }
    app.get("/slow") { request, response in
        await sleep(on: request.loop!, .milliseconds(150))
        response.send("slow done")
    }
    app.get("/slower") { request, response in
        // Long enough that a poller on a loaded machine sees it in flight.
        await sleep(on: request.loop!, .milliseconds(1000))
        response.send("slow done")
    }
    app.get("/slow-big") { request, response in
        await sleep(on: request.loop!, .milliseconds(100))
        response.body = [UInt8](repeating: 120, count: 8 << 20)   // many writes: the later ones hit a reset socket
    }
    app.get("/forbidden") { _, response in
        response.headers.add("Set-Cookie", "a=1; Path=/")
        throw HTTPError(.forbidden, message: "no \"entry\"")
    }
    app.get("/boom") { _, _ in throw Boom() }
    app.get("/remote") { request, response in response.send(request.remoteAddress) }
    app.get("/loop") { request, response in response.send(request.loop?.name ?? "none") }
    return app
}

@Suite("HTTPServer")
struct HTTPServerTests {
    @Test func routeAnswersWithTextAndEvhttpDefaultsRemoved() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/hello")
            #expect(response.status == 200)
            #expect(response.reason == "OK")
            #expect(response.text == "hello world")
            #expect(response.headers["Content-Type"] == "text/html; charset=utf-8")
            #expect(response.headers.values("Content-Type").count == 1)   // no ISO-8859-1 from evhttp
            #expect(response.headers["Content-Length"] == "11")
            #expect(response.headers["Date"] != nil)
        }
    }

    @Test func pathParameterIsPercentDecoded() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/users/a%20b%2Fc").text == "user a b/c")
            #expect(try client.request("GET", "/users/42/").text == "user 42")
        }
    }

    @Test func queryStringIsParsed() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/query?q=a+b&x=%21&q=second&flag").text == "flag=&q=a b&x=!")
        }
    }

    @Test func requestHeadersReachTheHandlerInOrder() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/header", headers: ["X-Test": "one", "x-test": "two"])
            #expect(response.text == "one|two")
        }
    }

    @Test func cookiesAreParsedAndSetCookieRoundTrips() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let login = try client.request("POST", "/login")
            #expect(login.setCookies == ["sid=s%3Aabc.def; Path=/; HttpOnly; SameSite=Lax"])
            #expect(client.cookieJar["sid"] == "s%3Aabc.def")
            client.cookieJar["plain"] = "\"quoted value\""
            #expect(try client.request("GET", "/cookies").text == "plain=quoted value;sid=s:abc.def")
        }
    }

    @Test func bodyIsEchoedByteForByte() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let body: [UInt8] = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) }   // includes NUL and 0xFF
            let response = try client.request("POST", "/echo", body: body)
            #expect(response.status == 200)
            #expect(response.body == body)
            #expect(response.headers["Content-Type"] == "application/octet-stream")
            // Chunked request bodies are decoded by evhttp.
            try client.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            #expect(try client.readResponse().text == "hello world")
        }
    }

    @Test func keepAliveServesTwoRequestsOnOneConnection() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/hello").status == 200)
            #expect(try client.request("GET", "/users/7").text == "user 7")
            #expect(client.connectionsOpened == 1)
            #expect(client.isConnected)

            // HTTP/1.0 keeps the connection only when asked to.
            let old = try TestHTTPClient(port: server.port)
            let first = try old.request("GET", "/hello", headers: ["Connection": "keep-alive"], version: "HTTP/1.0")
            #expect(first.headers["Connection"]?.lowercased() == "keep-alive")
            #expect(try old.request("GET", "/hello", headers: ["Connection": "keep-alive"], version: "HTTP/1.0")
                .text == "hello world")
            #expect(old.connectionsOpened == 1)

            let closing = try TestHTTPClient(port: server.port)
            try closing.send("GET /hello HTTP/1.0\r\n\r\n")
            #expect(try closing.readResponse().text == "hello world")
            #expect(closing.waitForClose())
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            try client.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /users/2 HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try client.readResponse().text == "slow done")
            #expect(try client.readResponse().text == "user 2")
        }
    }

    @Test func headSendsHeadersWithoutBody() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let head = try client.request("HEAD", "/hello")
            #expect(head.status == 200)
            #expect(head.headers["Content-Length"] == "11")
            #expect(head.body.isEmpty)
            // Had a body followed the head, it would be read as the start of this response.
            let next = try client.request("GET", "/users/9")
            #expect(next.status == 200)
            #expect(next.text == "user 9")
        }
    }

    @Test func unknownPathIs404WithJSONBody() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/nope")
            #expect(response.status == 404)
            #expect(response.text == #"{"error":"Not Found"}"#)
            #expect(response.headers["Content-Type"] == "application/json; charset=utf-8")
        }
    }

    @Test func wrongMethodIs405WithAllow() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("DELETE", "/hello")
            #expect(response.status == 405)
            #expect(response.headers["Allow"] == "GET, HEAD, OPTIONS")
            #expect(response.text == #"{"error":"Method Not Allowed"}"#)
            let options = try client.request("OPTIONS", "/echo")
            #expect(options.status == 204)
            #expect(options.headers["Allow"] == "POST, OPTIONS")
        }
    }

    @Test func bodyOverTheLimitIs413AndServerKeepsServing() async throws {
        let app = makeTestApplication(configuration: .init(maxBodySize: 1024))
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("POST", "/echo", body: [UInt8](repeating: 65, count: 70_000))
            #expect(response.status == 413)
            #expect(try TestHTTPClient(port: server.port).request("POST", "/echo", body: "small").text == "small")
        }
    }

    @Test func headersOverTheLimitAreRejected() async throws {
        let app = makeTestApplication(configuration: .init(maxHeaderSize: 1024))
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/hello",
                                              headers: ["X-Big": String(repeating: "a", count: 4000)])
            #expect(response.status == 431)   // Request Header Fields Too Large (evhttp alone said 400)
            #expect(try TestHTTPClient(port: server.port).request("GET", "/hello").status == 200)
        }
    }

    @Test func asyncHandlerAwaitsALoopTimerOnItsLoop() async throws {
        let app = Application()
        app.get("/timer") { request, response in
            let loop = try #require(request.loop)
            let start = ContinuousClock.now
            await sleep(on: loop, .milliseconds(80))
            let waited = ContinuousClock.now - start
            response.send("waited=\(waited >= .milliseconds(70)) onLoop=\(loop.inLoop)")
        }
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/timer").text == "waited=true onLoop=true")
        }
    }

    @Test func httpErrorIsRenderedAsJSONKeepingEarlierHeaders() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/forbidden")
            #expect(response.status == 403)
            #expect(response.text == #"{"error":"no \"entry\""}"#)
            #expect(response.setCookies == ["a=1; Path=/"])
        }
    }

    @Test func otherErrorIs500WithoutDetails() async throws {
        try await withServer(makeTestApplication()) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/boom")
            #expect(response.status == 500)
            #expect(response.text == #"{"error":"Internal Server Error"}"#)
            #expect(!response.text.contains("hunter2"))
        }
    }

    @Test func middlewareSetsHeadersBeforeAndAfterNext() async throws {
        let app = makeTestApplication()
        app.use { request, response, next in
            response.headers.replace("X-Before", "set")
            try await next()
            response.headers.replace("X-After", "status \(response.status.code) route \(request.route ?? "none")")
        }
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/users/5")
            #expect(response.headers["X-Before"] == "set")
            #expect(response.headers["X-After"] == "status 200 route /users/:id")
            let missing = try client.request("GET", "/missing")
            #expect(missing.status == 404)
            #expect(missing.headers["X-Before"] == "set")   // headers set before the error survive
        }
    }

    @Test func headerValuesWithLineBreaksAreDropped() async throws {
        let app = Application()
        app.get("/inject") { _, response in
            response.headers.add("X-Bad", "a\r\nInjected: yes")
            response.headers.add("X-Good", "fine")
            response.status = HTTPStatus(code: 200, reason: "OK\r\nInjected: yes")
            response.send("body")
        }
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/inject")
            #expect(response.status == 200)
            #expect(response.reason == "OK")
            #expect(response.headers["Injected"] == nil)
            #expect(response.headers["X-Bad"] == nil)
            #expect(response.headers["X-Good"] == "fine")
            #expect(response.text == "body")
        }
    }

    /// The server writes a response's fields as one evhttp entry (HTTPServer.appendHeaderBlock): every field the
    /// handler set arrives once, in order and byte for byte, however many and however long, and evhttp still sees
    /// the three it acts on (`Date`, `Content-Length`, `Connection`).
    @Test func responseFieldsArriveAsTheHandlerSetThem() async throws {
        let big = String(repeating: "0123456789", count: 700)   // past the block's first allocation
        let app = Application()
        app.get("/fields") { _, response in
            for index in 0..<40 { response.headers.add("X-Field-\(index)", "value \(index)") }
            response.headers.add("X-Big", big)
            response.headers.add("X-Unicode", "caf\u{e9} \u{1F600}")
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            response.headers.add("X-Nul", "a\u{0}b")          // C would cut it short: dropped
            response.headers.add("X-Folded", "a\r\n b")       // obsolete line folding: dropped
            response.headers.add("X-Empty", "")
            response.send("fields")
        }
        app.get("/dated") { _, response in
            response.headers.add("Date", "Sat, 01 Jan 2000 00:00:00 GMT")
            response.send("dated")
        }
        app.get("/close") { _, response in
            response.headers.add("Connection", "close")
            response.send("closing")
        }
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            let response = try client.request("GET", "/fields")
            #expect(response.status == 200)
            #expect(response.text == "fields")
            let names = response.headers.fields.map(\.name).filter { $0.hasPrefix("X-Field-") }
            #expect(names == (0..<40).map { "X-Field-\($0)" })
            #expect(response.headers["X-Field-39"] == "value 39")
            #expect(response.headers["X-Big"] == big)
            #expect(response.headers["X-Unicode"] == "caf\u{e9} \u{1F600}")
            #expect(response.headers.values("Set-Cookie") == ["a=1", "b=2"])
            #expect(response.headers["X-Nul"] == nil)
            #expect(response.headers["X-Folded"] == nil)
            #expect(response.headers.values("X-Empty") == [""])
            #expect(response.headers.values("Date").count == 1)
            #expect(response.headers.values("Content-Length") == ["6"])

            let dated = try client.request("GET", "/dated")
            #expect(dated.headers.values("Date") == ["Sat, 01 Jan 2000 00:00:00 GMT"])
            #expect(dated.text == "dated")

            // HTTP/1.0 answers carry a Date too.
            let old = try TestHTTPClient(port: server.port)
            let answer = try old.request("GET", "/dated", headers: ["Connection": "keep-alive"], version: "HTTP/1.0")
            #expect(answer.headers.values("Date") == ["Sat, 01 Jan 2000 00:00:00 GMT"])

            // A handler's `Connection: close` is evhttp's to act on: one such field, and the connection closes.
            let closer = try TestHTTPClient(port: server.port)
            try closer.send("GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
            let closing = try closer.readResponse()
            #expect(closing.text == "closing")
            #expect(closing.headers.values("Connection") == ["close"])
            #expect(closer.waitForClose())
        }
    }

    @Test func noContentResponseCarriesNoBody() async throws {
        let app = Application()
        app.delete("/thing") { _, response in
            response.status = .noContent
            response.body = Array("ignored".utf8)
        }
        app.get("/after") { _, response in response.send("after") }
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("DELETE", "/thing").status == 204)
            #expect(try client.request("GET", "/after").text == "after")
        }
    }

    @Test func remoteAddressIsThePeerIP() async throws {
        try await withServer(makeTestApplication()) { server in
            let response = try TestHTTPClient(port: server.port).request("GET", "/remote")
            #expect(response.text == "127.0.0.1")
        }
    }

    @Test func clientThatHangsUpBeforeTheAnswerDoesNotHurtTheServer() async throws {
        try await withServer(makeTestApplication()) { server in
            let port = server.port
            // Sequential: FIN and RST, right after sending or a little later, GET and POST.
            for round in 0..<40 {
                let client = try TestHTTPClient(port: port)
                if round % 2 == 0 {
                    try client.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                } else {
                    try client.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                }
                if round % 3 == 0 { usleep(20_000) }
                if round % 4 < 2 { client.close() } else { client.abort() }
            }
            // A large reply to a client that left takes several writes; the ones after the peer's reset fail with
            // EPIPE, which must not raise a fatal SIGPIPE.
            for _ in 0..<3 {
                let client = try TestHTTPClient(port: port)
                try client.send("GET /slow-big HTTP/1.1\r\nHost: x\r\n\r\n")
                client.close()
            }
            try await Task.sleep(for: .milliseconds(300))
            // Concurrent: many clients on threads hang up while their requests are in flight.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        try await onThread {
                            let client = try TestHTTPClient(port: port)
                            try client.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                            usleep(useconds_t(1_000 * (index % 5) * 30))
                            index % 2 == 0 ? client.close() : client.abort()
                        }
                    }
                }
                try await group.waitForAll()
            }
            // The server still answers, and every abandoned request is finished and freed.
            #expect(try TestHTTPClient(port: port).request("GET", "/hello").text == "hello world")
            let settled = await eventually { await server.pendingCount() == 0 }
            #expect(settled)
        }
    }

    @Test func twoThreadsServeOnePort() async throws {
        let app = makeTestApplication()
        try await withServer(app, threads: 2) { server in
            #expect(server.loops.count == 2)
            var seen: Set<String> = []
            for _ in 0..<60 {
                let client = try TestHTTPClient(port: server.port)   // a new connection each time
                let response = try client.request("GET", "/loop")
                #expect(response.status == 200)
                seen.insert(response.text)
            }
            #expect(seen == ["http-0", "http-1"])
        }
    }

    @Test func shutdownAnswersTheRequestInFlight() async throws {
        // The handler waits for a gate the test opens only once shutdown has begun, so the request is in flight
        // during the shutdown however slow the machine is.
        let gate = TestGate()
        let app = makeTestApplication()
        app.get("/gated") { _, response in
            await gate.wait()
            response.send("slow done")
        }
        let server = try app.start(host: "127.0.0.1", port: 0)
        let port = server.port
        let answer = Task {
            try await onThread { () -> TestHTTPResponse in
                let client = try TestHTTPClient(port: port, timeout: .seconds(30))
                return try client.request("GET", "/gated")
            }
        }
        #expect(await eventually(timeout: .seconds(20)) { await server.pendingCount() == 1 })
        let shutdown = Task { await server.shutdown(timeout: .seconds(20)) }
        #expect(await eventually(timeout: .seconds(20)) { server.isShuttingDown })
        // isShuttingDown flips before the loop has stopped accepting; a refused connection shows it has.
        #expect(await eventually(timeout: .seconds(20)) { (try? TestHTTPClient(port: port)) == nil })
        gate.open()
        await shutdown.value
        let response = try await answer.value
        #expect(response.status == 200)
        #expect(response.text == "slow done")
        #expect(response.closesConnection)
        // The port is closed now.
        #expect(throws: TestHTTPClientError.self) { try TestHTTPClient(port: port) }
    }

    @Test func shutdownGivesUpOnAStuckRequestAfterTheTimeout() async throws {
        let app = Application()
        app.get("/stuck") { request, response in
            await sleep(on: request.loop!, .seconds(30))
            response.send("too late")
        }
        let server = try app.start(host: "127.0.0.1", port: 0)
        let port = server.port
        let answer = Task {
            try await onThread { () -> Bool in
                let client = try TestHTTPClient(port: port, timeout: .seconds(60))
                do {
                    _ = try client.request("GET", "/stuck")
                    return false
                } catch TestHTTPClientError.closedByPeer {
                    return true
                }
            }
        }
        #expect(await eventually(timeout: .seconds(20)) { await server.pendingCount() == 1 })
        let start = ContinuousClock.now
        await server.shutdown(timeout: .milliseconds(200))
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(try await answer.value)   // the connection was closed, no answer
        await server.shutdown()           // a second call returns at once
    }

    @Test func portInUseIsAClearError() async throws {
        try await withServer(makeTestApplication()) { server in
            let other = Application()
            #expect {
                try other.start(host: "127.0.0.1", port: server.port)
            } throws: { error in
                let error = error as? HTTPServerError
                return error?.code == .addressInUse && error?.description.contains("address already in use") == true
            }
            #expect(throws: HTTPServerError.self) { try other.start(host: "no-such-host.invalid", port: 0) }
            #expect(throws: HTTPServerError.self) { try other.start(host: "127.0.0.1", port: 70000) }
            #expect(throws: HTTPServerError.self) { try other.start(host: "127.0.0.1", port: 0, threads: 0) }
        }
    }

    @Test func listenBlocksUntilShutdown() async throws {
        let app = makeTestApplication()
        let port = try await freePort()
        let listening = Task { try await onThread { try app.listen(host: "127.0.0.1", port: port) } }
        #expect(await eventually { (try? TestHTTPClient(port: port).request("GET", "/hello").status) == 200 })
        await app.shutdown()
        try await listening.value   // listen returned
    }
}

/// A port nobody listens on right now.
func freePort() async throws -> Int {
    let server = try Application().start(host: "127.0.0.1", port: 0)
    await server.shutdown()
    return server.port
}
