import Foundation   // JSONSerialization, to read the log lines as any log shipper would
@testable import EvServer
@testable import EvServerApp
import InMemoryTracing
import Logging
import Synchronization
import Testing
import Tracing

/// Request ids (trusted and untrusted proxies, malformed ids, the server's own refusals), the request id in the
/// log lines written while a request is served, the JSON log line, the access log of a real `evserver`, and the
/// span tree of a session request under an in-memory tracer.
@Suite struct ObservabilityTests {
    /// Log lines captured by a ``JSONLogHandler``.
    final class CapturedLines: Sendable {
        private let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
        func logger(_ label: String) -> Logger {
            Logger(label: label) { label in
                JSONLogHandler(label: label, metadataProvider: RequestID.metadataProvider) { [self] line in
                    lines.withLock { $0.append(String(decoding: line, as: UTF8.self)) }
                }
            }
        }
    }

    static func json(_ line: String) throws -> [String: String] {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        return object.compactMapValues { $0 as? String }
    }

    static func isGenerated(_ id: String?) -> Bool {
        guard let id else { return false }
        return id.utf8.count == 15 && id.utf8.allSatisfy { (48...57).contains($0) || (97...122).contains($0) }
    }

    // MARK: - Request ids

    @Test func generatedIDsCountUpInBase36AfterOnePrefixPerGenerator() {
        var first = RequestIDGenerator()
        var second = RequestIDGenerator()
        let ids = (0..<40).map { _ in first.next() }
        #expect(ids.allSatisfy(Self.isGenerated), "\(ids)")
        #expect(Set(ids.map { $0.prefix(8) }).count == 1)
        #expect(ids[0].hasSuffix("0000001") && ids[9].hasSuffix("000000a") && ids[34].hasSuffix("000000z"))
        #expect(ids[35].hasSuffix("0000010"), "\(ids[35])")
        #expect(Set(ids).count == ids.count)
        #expect(second.next().prefix(8) != ids[0].prefix(8), "two generators, one prefix (1 in 2^41)")
    }

    @Test func aTrustedProxysRequestIDIsKeptAndReturned() async throws {
        // The test client connects from 127.0.0.1.
        try await withDemo(["--trust-proxy", "127.0.0.0/8"]) { app in
            let response = try app.client().request("GET", "/hello", headers: ["X-Request-Id": "lb-4f2a:77"])
            #expect(response.headers.values("X-Request-Id") == ["lb-4f2a:77"])
        }
    }

    @Test func anUntrustedPeersRequestIDIsReplacedByTheServersOwn() async throws {
        try await withDemo(["--trust-proxy", "10.0.0.0/8"]) { app in
            let client = try app.client()
            let first = try client.request("GET", "/hello", headers: ["X-Request-Id": "chosen-by-client"])
            let second = try client.request("GET", "/hello", headers: ["X-Request-Id": "chosen-by-client"])
            let ids = first.headers.values("X-Request-Id") + second.headers.values("X-Request-Id")
            #expect(ids.count == 2)
            #expect(ids.allSatisfy(Self.isGenerated), "\(ids)")
            #expect(Set(ids).count == 2, "two requests, one id: \(ids)")
        }
    }

    @Test func aMalformedRequestIDIsReplacedEvenFromATrustedProxy() async throws {
        try await withDemo(["--trust-proxy", "true"]) { app in
            let client = try app.client()
            for claimed in ["has space", "quote\"d", String(repeating: "a", count: RequestID.maxLength + 1), "ünï"] {
                let response = try client.request("GET", "/hello", headers: ["X-Request-Id": claimed])
                let ids = response.headers.values("X-Request-Id")
                #expect(ids.count == 1 && Self.isGenerated(ids.first), "\(claimed): \(ids)")
            }
            let longest = String(repeating: "b", count: RequestID.maxLength)
            #expect(try client.request("GET", "/hello", headers: ["X-Request-Id": longest]).headers["X-Request-Id"]
                    == longest)
        }
    }

    @Test func theServersOwnRefusalsCarryARequestID() async throws {
        try await withDemo(["--max-body", "1000", "--trust-proxy", "true"]) { app in
            let port = app.server.port
            let responses = try await responsesOnFreshConnections(to: port, [
                "POST /session HTTP/1.1\r\nHost: x\r\nX-Request-Id: kept?\r\nContent-Length: 5000\r\n\r\n",
                "GET /session HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 17_000))\r\n\r\n",
                "GET /\(String(repeating: "a", count: 8200)) HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET  /session HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET //a:b HTTP/1.1\r\nHost: x\r\n\r\n",   // refused by evhttp's own parser
            ])
            #expect(responses.map(\.status) == [413, 431, 414, 400, 400])
            for response in responses {
                let ids = response.headers.values("X-Request-Id")
                #expect(ids.count == 1 && Self.isGenerated(ids.first), "\(response.status): \(ids)")
            }
        }
    }

    /// Every line logged while the request is served carries its id: a handler's own (through the metadata
    /// provider) and the server's 500 line for an error the handler threw.
    @Test func logLinesWrittenWhileServingARequestCarryItsID() async throws {
        struct Broken: Error {}
        let captured = CapturedLines()
        let handlerLogger = captured.logger("handler")
        let app = Application(configuration: HTTPServerConfiguration(requestIDs: RequestIDConfiguration()),
                              logger: captured.logger("evserver.http"))
        app.get("/fails") { request, _ in
            handlerLogger.info("about to fail", metadata: ["seen": .string(RequestID.current ?? "none")])
            #expect(request.id == RequestID.current)
            throw Broken()
        }
        try await withServer(app) { server in
            let response = try TestHTTPClient(port: server.port).request("GET", "/fails?secret=1")
            #expect(response.status == 500)
            let id = try #require(response.headers["X-Request-Id"])
            let lines = try captured.all.map(Self.json)
            #expect(lines.count == 2, "\(captured.all)")
            #expect(lines.allSatisfy { $0["request_id"] == id }, "\(captured.all)")
            #expect(lines.first?["seen"] == id)
            #expect(lines.last?["label"] == "evserver.http")
            #expect(lines.last?["message"]?.hasPrefix("unhandled error answering GET /fails") == true)
        }
        #expect(RequestID.current == nil)
    }

    // MARK: - Log lines

    @Test func aJSONLogLineIsOneObjectWithEscapedFields() throws {
        let date = Date(timeIntervalSince1970: 1_796_959_260.5)   // 2026-12-11T03:21:00.500Z
        let bytes = JSONLogHandler.line(timestamp: date, level: .warning, label: "evserver",
                                        message: "a \"quoted\"\nline", metadata: ["message": "shadow", "b": "2"])
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasSuffix("}\n"))
        #expect(text.dropLast().contains("\n") == false, "one line: \(text)")
        #expect(text.hasPrefix(#"{"timestamp":"2026-12-11T03:21:00.500Z","level":"warning","label":"evserver","#))
        let object = try Self.json(text)
        #expect(object["message"] == "a \"quoted\"\nline")
        #expect(object["meta_message"] == "shadow")
        #expect(object["b"] == "2")
    }

    @Test func logFlagsAreValidated() throws {
        let base = ["--secret", "s"]
        #expect(try ServerOptions.parse(base).resolve(environment: [:]).accessLog == false)
        #expect(try ServerOptions.parse(base).resolve(environment: [:]).logFormat == .text)
        let set = try ServerOptions.parse(base + ["--access-log", "true", "--log-format", "JSON"]).resolve(environment: [:])
        #expect(set.accessLog && set.logFormat == .json)
        let fromEnvironment = try ServerOptions.parse(base).resolve(environment: ["ACCESS_LOG": "1", "LOG_FORMAT": "json"])
        #expect(fromEnvironment.accessLog && fromEnvironment.logFormat == .json)
        #expect(throws: ConfigurationError.self) {
            try ServerOptions.parse(base + ["--log-format", "xml"]).resolve(environment: [:])
        }
    }

    /// A real `evserver --access-log true --log-format json`: one JSON line per request with method, path, status,
    /// bytes, duration, instance and request id, and never the cookie, the session id or the query.
    @Test func theAccessLogHasOneLinePerRequestAndNoSecrets() async throws {
        // Started on a thread of its own: waiting for it to answer blocks, and the cooperative pool is small.
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        let server = try await onThread {
            try EvServerProcess(instance: "app-log", redisPort: TestRedis.port, prefix: prefix,
                                arguments: ["--access-log", "true", "--log-format", "json"])
        }
        let client = try server.client()
        let created = try client.request("GET", "/")   // a new session: Set-Cookie
        let cookie = try #require(client.cookieJar["connect.sid"])
        let sessionID = try #require(DemoServer.sessionID(fromCookie: cookie))
        let read = try client.request("GET", "/login?token=hunter2&next=%2Fadmin")
        #expect(read.text == "Welcome Aditya@123")
        let missing = try client.request("GET", "/nope")
        let ids = [created, read, missing].compactMap { $0.headers["X-Request-Id"] }
        #expect(ids.count == 3)
        // The line is written after the reply: give the last one a moment.
        var access: [[String: String]] = []
        for _ in 0..<100 {
            access = try server.process.errorOutput.split(separator: "\n").map { try Self.json(String($0)) }
                .filter { $0["label"] == "evserver.access" && $0["path"] != "/readyz" }
            if access.count >= 3 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(access.map { $0["path"] } == ["/", "/login", "/nope"])
        #expect(access.map { $0["status"] } == ["200", "200", "404"])
        #expect(access.map { $0["route"] } == ["/", "/login", "unmatched"])
        #expect(access.map { $0["request_id"] } == ids)
        #expect(access.allSatisfy { $0["method"] == "GET" && $0["instance"] == "app-log" })
        #expect(access[1]["bytes"] == String("Welcome Aditya@123".utf8.count))
        #expect(access.allSatisfy { $0["duration_ms"].flatMap(Double.init) != nil })
        #expect(access[1]["message"] == "GET /login 200")
        let everything = server.process.errorOutput
        for secret in ["hunter2", "token", "admin", sessionID, cookie, "connect.sid"] {
            #expect(!everything.contains(secret), "the log holds \(secret)")
        }
        server.stop()
    }

    // MARK: - Spans

    /// The demo with `tracer`, trusting 127.0.0.1 (the test client) as a proxy when `trusted`.
    static func withTracedDemo(_ tracer: InMemoryTracer, trusted: Bool,
                               _ body: (RunningServer, String) async throws -> Void) async throws {
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        let options = try ServerOptions.parse([
            "--port", "0", "--redis-url", "redis://\(TestRedis.host):\(TestRedis.port)/0", "--secret", "test secret",
            "--prefix", prefix, "--instance", "traced", "--trust-proxy", trusted ? "127.0.0.0/8" : "10.0.0.0/8",
        ])
        let demo = try DemoApp(configuration: options.resolve(environment: [:]), tracer: tracer)
        try await withServer(demo.makeApplication()) { server in try await body(server, prefix) }
    }

    static func string(_ span: FinishedInMemorySpan, _ name: String) -> String? {
        guard case .string(let value)? = span.attributes[name]?.toSpanAttribute() else { return nil }
        return value
    }

    static func int(_ span: FinishedInMemorySpan, _ name: String) -> Int64? {
        switch span.attributes[name]?.toSpanAttribute() {
        case .int64(let value)?: value
        case .int32(let value)?: Int64(value)
        default: nil
        }
    }

    /// One session request: a server span named after the route, continuing the trusted proxy's trace, with a
    /// client span per Redis command (the load's GETEX, the increment's EVALSHA) under it, none holding a key.
    @Test func aSessionRequestIsASpanWithAChildPerRedisCommand() async throws {
        let tracer = InMemoryTracer()
        try await Self.withTracedDemo(tracer, trusted: true) { server, prefix in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/views").status == 200)   // the session, and the script loaded
            tracer.clearAll()
            let response = try client.request("GET", "/views", headers: [
                InMemoryTracer.traceIDKey: "trace-of-the-proxy", InMemoryTracer.spanIDKey: "span-of-the-proxy",
            ])
            #expect(response.status == 200)
            let spans = tracer.finishedSpans
            let root = try #require(spans.first { $0.kind == .server }, "\(spans.map(\.operationName))")
            #expect(root.operationName == "GET /views")
            #expect(root.traceID == "trace-of-the-proxy")
            #expect(root.parentSpanID == "span-of-the-proxy")
            #expect(Self.string(root, "http.route") == "/views")
            #expect(Self.int(root, "http.response.status_code") == 200)
            #expect(Self.string(root, "http.request.header.x_request_id") == response.headers["X-Request-Id"])
            let children = spans.filter { $0.parentSpanID == root.spanID }
            #expect(children.map(\.operationName) == ["GETEX", "EVALSHA"])
            #expect(spans.count == 1 + children.count, "every span is the request's or one of its commands'")
            for child in children {
                #expect(child.kind == .client)
                #expect(child.traceID == root.traceID)
                #expect(Self.string(child, "db.operation.name") == child.operationName)
                #expect(Self.int(child, "server.port") == Int64(TestRedis.port))
                child.attributes.forEach { name, attribute in
                    #expect(!"\(attribute)".contains(prefix), "\(name) holds a key")
                }
            }
        }
    }

    /// A trace context from a peer that is not a trusted proxy is ignored: the request starts a trace of its own.
    @Test func anUntrustedPeersTraceContextIsIgnored() async throws {
        let tracer = InMemoryTracer()
        try await Self.withTracedDemo(tracer, trusted: false) { server, _ in
            let response = try TestHTTPClient(port: server.port).request("GET", "/hello", headers: [
                InMemoryTracer.traceIDKey: "trace-of-the-client", InMemoryTracer.spanIDKey: "span-of-the-client",
            ])
            #expect(response.status == 200)
            let root = try #require(tracer.finishedSpans.first { $0.kind == .server })
            #expect(root.operationName == "GET /hello")
            #expect(root.traceID != "trace-of-the-client")
            #expect(root.parentSpanID == nil)
        }
    }
}
