import Foundation
import Testing
@testable import EvServer

// Header fields on every response (HTTPServerConfiguration.defaultHeaders): the handlers', and the answers the
// server sends before any handler runs (the limits' refusals, the slow head's 408, the 503 past the connection
// cap, evhttp's own error page). Real sockets, raw bytes; the client side on a thread of its own (`onThread`).

private let instance = "limits-7"

/// The test application with `X-Instance: limits-7` as a default field, and a route that sets the field itself.
private func makeApplication(_ configuration: HTTPServerConfiguration = .init()) throws -> Application {
    var configuration = configuration
    configuration.maxBodySize = 1024
    configuration.defaultHeaders = try DefaultHeaders([("X-Instance", instance)])
    let app = makeTestApplication(configuration: configuration)
    app.get("/own") { _, response in
        response.headers.replace("x-instance", "the handler's")
        response.send("own")
    }
    return app
}

/// Every `X-Instance` field of `response` (names compared case-insensitively, as the client parsed them).
private func instances(_ response: TestHTTPResponse) -> [String] {
    response.headers.values("X-Instance")
}

@Suite("Default headers")
struct DefaultHeadersTests {
    @Test(arguments: [
        ("malformed request line", "GET  /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("smuggling shape", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
        // The scanner lets it through; evhttp's URI parser refuses it, with evhttp_send_error's page.
        ("a target evhttp's URI parser refuses", "GET //a:b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("Content-Length over the body limit", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n", 413),
        ("a chunk over the body limit", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "200\r\n\(String(repeating: "b", count: 512))\r\n201\r\n", 413),
        ("URI over the limit", "GET /\(String(repeating: "a", count: 8192)) HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        ("header block over the limit",
         "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 17_000))\r\n\r\n", 431),
        ("more than 100 header fields",
         "GET /hello HTTP/1.1\r\n" + (0..<101).map { "X-F\($0): v\r\n" }.joined() + "\r\n", 431),
        ("unknown method", "BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        ("HTTP/2.0", "GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("unknown expectation", "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx", 417),
        ("a handler's answer", "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        ("HEAD", "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        ("no route", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("wrong method", "DELETE /hello HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ])
    func everyAnswerCarriesTheFieldOnce(_ shape: String, _ request: String, _ status: Int) async throws {
        try await withServer(try makeApplication()) { server in
            let port = server.port
            let response = try await onThread { () -> TestHTTPResponse in
                let client = try TestHTTPClient(port: port)
                try client.send(request)
                return try client.readResponse(method: request.hasPrefix("HEAD") ? "HEAD" : "GET")
            }
            #expect(response.status == status, "\(shape)")
            #expect(instances(response) == [instance], "\(shape): \(response.headers.fields)")
        }
    }

    @Test func aHandlersOwnFieldWins() async throws {
        try await withServer(try makeApplication()) { server in
            let port = server.port
            let response = try await onThread { try TestHTTPClient(port: port).request("GET", "/own") }
            #expect(response.text == "own")
            #expect(instances(response) == ["the handler's"])
        }
    }

    @Test func aSlowHeadIsAnswered408WithTheField() async throws {
        try await withServer(try makeApplication(.init(headerTimeout: .milliseconds(300)))) { server in
            let port = server.port
            let response = try await onThread { () -> TestHTTPResponse in
                let client = try TestHTTPClient(port: port)
                try client.send("GET /hello HTTP/1.1\r\nHost: x\r\n")
                return try client.readResponse()
            }
            #expect(response.status == 408)
            #expect(instances(response) == [instance])
        }
    }

    @Test func aConnectionPastTheCapIsAnswered503WithTheField() async throws {
        // A header timeout past the test's length: the held connections send nothing (see HTTPLimitsTests).
        try await withServer(try makeApplication(.init(headerTimeout: .seconds(300), maxConnections: 2))) { server in
            let port = server.port
            let held = try await onThread { HeldConnections(try (0..<2).map { _ in try TestHTTPClient(port: port) }) }
            #expect(await eventually { await server.connectionCount() == 2 })
            let response = try await onThread { try TestHTTPClient(port: port).request("GET", "/hello") }
            #expect(response.status == 503)
            #expect(response.headers["Retry-After"] == "1")
            #expect(instances(response) == [instance])
            held.close()
        }
    }

    @Test func evhttpsOwnAnswerAfterOursOnOneConnectionGetsTheFieldOnceEach() async throws {
        // Our reply switches the watch on evhttp's own answers off and on again: neither answer gets it twice.
        try await withServer(try makeApplication()) { server in
            let port = server.port
            let (first, second, third) = try await onThread { () -> (TestHTTPResponse, TestHTTPResponse, TestHTTPResponse) in
                let client = try TestHTTPClient(port: port)
                let first = try client.request("GET", "/hello")
                try client.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n")
                return (first, try client.readResponse(), try client.readResponse())
            }
            #expect(first.status == 200 && second.status == 200)
            #expect(instances(first) == [instance])
            #expect(instances(second) == [instance])
            #expect(third.status == 400)
            #expect(instances(third) == [instance])
        }
    }

    @Test func aHundredContinueIsLeftAloneAndTheAnswerAfterItGetsTheField() async throws {
        try await withServer(try makeApplication()) { server in
            let port = server.port
            let (interim, final) = try await onThread { () -> (TestHTTPResponse, TestHTTPResponse) in
                let client = try TestHTTPClient(port: port)
                try client.send("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
                let interim = try client.readResponse()
                try client.send("hello")
                return (interim, try client.readResponse())
            }
            #expect(interim.status == 100)
            #expect(instances(interim).isEmpty)
            #expect(final.status == 200 && final.text == "hello")
            #expect(instances(final) == [instance])
        }
    }

    @Test func theServersOwnFieldsWinOverDefaultOnesOfTheSameName() async throws {
        let fields = try DefaultHeaders([("Content-Type", "text/plain"), ("Retry-After", "9"), ("X-A", "a")])
        try await withServer(makeTestApplication(configuration: .init(defaultHeaders: fields))) { server in
            let port = server.port
            let (refused, evhttps) = try await onThread { () -> (TestHTTPResponse, TestHTTPResponse) in
                let client = try TestHTTPClient(port: port)
                try client.send("BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
                let other = try TestHTTPClient(port: port)
                try other.send("GET //a:b HTTP/1.1\r\nHost: x\r\n\r\n")
                return (try client.readResponse(), try other.readResponse())
            }
            #expect(refused.status == 501)
            #expect(refused.headers.values("Content-Type") == ["application/json; charset=utf-8"])
            #expect(refused.headers.values("Retry-After") == ["9"])
            #expect(refused.headers.values("X-A") == ["a"])
            #expect(evhttps.status == 400)
            #expect(evhttps.headers.values("Content-Type").count == 1)
            #expect(evhttps.headers.values("X-A") == ["a"])
        }
        let capped = makeTestApplication(configuration: .init(maxConnections: 1, defaultHeaders: fields))
        try await withServer(capped) { server in
            let port = server.port
            let held = try await onThread { HeldConnections([try TestHTTPClient(port: port)]) }
            #expect(await eventually { await server.connectionCount() == 1 })
            let response = try await onThread { try TestHTTPClient(port: port).request("GET", "/hello") }
            #expect(response.status == 503)
            #expect(response.headers.values("Retry-After") == ["1"])
            #expect(response.headers.values("X-A") == ["a"])
            held.close()
        }
    }

    // MARK: Checked when configured

    @Test(arguments: [
        ("X Instance", "a", "not a token"),
        ("", "a", "not a token"),
        ("X-Instance:", "a", "not a token"),
        ("Ünstance", "a", "not a token"),
        ("X-Instance", "a\r\nSet-Cookie: x=y", "line break"),
        ("X-Instance", "a\nb", "line break"),
        ("X-Instance", "a\rb", "line break"),
        ("X-Instance", "a\u{0}b", "NUL"),
        ("X-Instance", "a\u{7}b", "0x7"),
        ("X-Instance", "a\u{7f}b", "0x7F"),
        ("content-length", "5", "set by the server"),
        ("Transfer-Encoding", "chunked", "set by the server"),
        ("Connection", "close", "set by the server"),
        ("Date", "today", "set by the server"),
    ])
    func fieldsThatCannotBeSentAreRefusedWhenMade(_ name: String, _ value: String, _ reason: String) {
        let error = #expect(throws: InvalidHeaderFieldError.self) {
            try DefaultHeaders([("X-Ok", "fine"), (name, value)])
        }
        #expect(error?.name == name)
        #expect(error?.description.contains(reason) == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("\n") == false)
        #expect(error?.description.contains("\r") == false)
    }

    @Test func sendableFieldsAreKeptInOrder() throws {
        let fields = try DefaultHeaders([("X-Instance", "app 1"), ("X-Tab", "a\tb"), ("X-Empty", ""),
                                         ("X-UTF8", "café"), ("Strict-Transport-Security", "max-age=63072000")])
        #expect(fields.fields.map(\.name) == ["X-Instance", "X-Tab", "X-Empty", "X-UTF8", "Strict-Transport-Security"])
        #expect(fields.fields.map(\.value) == ["app 1", "a\tb", "", "café", "max-age=63072000"])
        #expect(DefaultHeaders().isEmpty)
        #expect(HTTPServerConfiguration().defaultHeaders.isEmpty)
        #expect(HTTPServerConfiguration(defaultHeaders: fields) == HTTPServerConfiguration(defaultHeaders: fields))
        #expect(HTTPServerConfiguration(defaultHeaders: fields) != HTTPServerConfiguration())
    }

    @Test func statusLineStartsAreRead() {
        #expect(HTTPServer.statusClass(ofStatusLineStart: Array("HTTP/1.1 400 Ba".utf8)) == 4)
        #expect(HTTPServer.statusClass(ofStatusLineStart: Array("HTTP/1.1 100 Co".utf8)) == 1)
        #expect(HTTPServer.statusClass(ofStatusLineStart: Array("HTTP/1.0 200".utf8)) == 2)
        #expect(HTTPServer.statusClass(ofStatusLineStart: Array("HTTP/1.1 ".utf8)) == nil)
        #expect(HTTPServer.statusClass(ofStatusLineStart: Array("<HTML>".utf8)) == nil)
        #expect(HTTPServer.statusClass(ofStatusLineStart: Array("HTTP/1.1 x".utf8)) == nil)
    }
}

/// Open connections handed from one test thread to another; only one touches them at a time.
private final class HeldConnections: @unchecked Sendable {
    // @unchecked Sendable: the test uses the clients from one thread at a time, in sequence.
    private let clients: [TestHTTPClient]
    init(_ clients: [TestHTTPClient]) { self.clients = clients }
    func close() { for client in clients { client.close() } }
}
