import Testing
@testable import EvServer

// Request smuggling: every framing two parsers could read differently is answered 400 and the connection closed,
// so the bytes after it (here a pipelined GET) are never read as a request. Real sockets, raw bytes.

/// A request that must never be answered: it follows the refused one on the same connection.
private let smuggled = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"

@Suite("HTTP smuggling")
struct HTTPSmugglingTests {
    @Test(arguments: [
        ("two equal Content-Length",
         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        ("two different Content-Length",
         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello"),
        ("Content-Length with Transfer-Encoding",
         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding other than chunked",
         "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding with a leading tab",
         "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding twice",
         "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold with a space", "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Content-Length: 5\r\n\r\n"),
        ("obs-fold with a tab", "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tmore\r\n\r\n"),
        ("bare LF in the request line", "GET /hello HTTP/1.1\nHost: x\r\n\r\n"),
        ("bare LF in a header", "GET /hello HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n"),
        ("bare LF ending the head", "GET /hello HTTP/1.1\r\nHost: x\r\n\n"),
        ("bare CR in a header", "GET /hello HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n"),
        ("Content-Length not a number", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello"),
        ("Content-Length with a sign", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello"),
        ("Content-Length as a list", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ("space before the colon", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello"),
        ("a HEAD with a body", "HEAD /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
        ("two Host fields", "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("chunked in HTTP/1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("malformed chunk size", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"),
        ("chunk data longer than its size",
         "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
        ("chunk extension",
         "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\r\nx\r\n0\r\n\r\n"),
    ])
    func ambiguousFramingIs400AndCloses(_ shape: String, _ request: String) async throws {
        try await withServer(makeTestApplication()) { server in
            let port = server.port
            // Blocking socket calls run on a thread of their own, off the cooperative pool.
            let (response, rest, after) = try await onThread { () -> (TestHTTPResponse, [UInt8], Int) in
                let client = try TestHTTPClient(port: port)
                try client.send(request + smuggled)
                let response = try client.readResponse()
                let rest = try client.readUntilClosed()
                return (response, rest, try TestHTTPClient(port: port).request("GET", "/hello").status)
            }
            #expect(response.status == 400, "\(shape)")
            #expect(response.closesConnection, "\(shape)")
            #expect(response.headers["Content-Type"] == "application/json; charset=utf-8", "\(shape)")
            #expect(response.text.hasPrefix(#"{"error":"#), "\(shape)")
            #expect(rest.isEmpty, "\(shape): the pipelined request was answered")
            #expect(after == 200, "\(shape): the server itself is fine")
        }
    }

    @Test func sameShapesSentByteByByteAreRefusedToo() async throws {
        try await withServer(makeTestApplication()) { server in
            let port = server.port
            for request in ["POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                            "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
                            "GET /hello HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n"] {
                let (status, rest) = try await onThread { () -> (Int, [UInt8]) in
                    let client = try TestHTTPClient(port: port)
                    for byte in Array((request + smuggled).utf8) {
                        do { try client.send([byte]) } catch { break }   // the server may have shut its side already
                    }
                    return (try client.readResponse().status, try client.readUntilClosed())
                }
                #expect(status == 400, "\(request.debugDescription)")
                #expect(rest.isEmpty, "\(request.debugDescription)")
            }
        }
    }

    @Test func goodRequestBeforeABadOneIsStillAnswered() async throws {
        try await withServer(makeTestApplication()) { server in
            let port = server.port
            let (first, refused, rest) = try await onThread { () -> (String, TestHTTPResponse, [UInt8]) in
                let client = try TestHTTPClient(port: port)
                // The bad request arrives while the good one is still in the handler: it waits its turn.
                try client.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                    + "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "0\r\n\r\n" + smuggled)
                let first = try client.readResponse().text
                return (first, try client.readResponse(), try client.readUntilClosed())
            }
            #expect(first == "slow done")
            #expect(refused.status == 400)
            #expect(refused.text.contains("Transfer-Encoding"))
            #expect(rest.isEmpty)
        }
    }

    @Test func otherMisuseGetsItsOwnStatusNotEvhttpsPage() async throws {
        try await withServer(makeTestApplication()) { server in
            let port = server.port
            let cases: [(String, Int)] = [
                ("BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
                ("GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505),
                ("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx", 417),
                ("GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\u{1}b\r\n\r\n", 400),
                ("\u{16}\u{3}\u{1}\u{2}\u{0}\u{1}\u{0}\u{1}\u{fc}\u{3}\u{3}", 400),   // a TLS hello
            ]
            for (request, status) in cases {
                let (response, rest) = try await onThread { () -> (TestHTTPResponse, [UInt8]) in
                    let client = try TestHTTPClient(port: port)
                    try client.send(request)
                    return (try client.readResponse(), try client.readUntilClosed())
                }
                #expect(response.status == status, "\(request.debugDescription)")
                #expect(response.text.hasPrefix(#"{"error":"#), "\(request.debugDescription)")
                #expect(!response.text.contains("<HTML>"))
                #expect(rest.isEmpty)
            }
        }
    }

    @Test func validChunkedAndPipelinedRequestsStillWork() async throws {
        try await withServer(makeTestApplication()) { server in
            let port = server.port
            let (texts, connections) = try await onThread { () -> ([String], Int) in
                let client = try TestHTTPClient(port: port)
                try client.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                    + "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                    // libevent reads a GET's body too: the next request starts after it.
                    + "GET /users/7 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                    + "GET /users/8 HTTP/1.1\r\nHost: x\r\n\r\n")
                var texts: [String] = []
                for _ in 0..<4 { texts.append(try client.readResponse().text) }
                texts.append(try client.request("GET", "/hello").text)
                return (texts, client.connectionsOpened)
            }
            #expect(texts == ["hello world", "abc", "user 7", "user 8", "hello world"])
            #expect(connections == 1)
        }
    }
}
