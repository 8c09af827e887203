#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
@testable import EvServer

// A small blocking HTTP/1.1 client over a raw socket, for tests that drive a real server: keep-alive reuse, raw
// bytes, Content-Length and chunked bodies, and a cookie jar.
//
//     let client = try TestHTTPClient(port: server.port)
//     let response = try client.request("POST", "/echo", headers: ["X-A": "1"], body: "hello")
//     #expect(response.status == 200 && response.text == "hello")

/// What the server answered.
struct TestHTTPResponse: Sendable {
    /// e.g. `HTTP/1.1`.
    var version: String
    var status: Int
    var reason: String
    var headers: HTTPHeaders
    var body: [UInt8]

    /// The body as UTF-8 text.
    var text: String { String(decoding: body, as: UTF8.self) }
    /// The raw `Set-Cookie` header values, in order.
    var setCookies: [String] { headers.values("Set-Cookie") }
    /// name -> value of each `Set-Cookie` (value as sent, not decoded).
    var cookies: [String: String] {
        var result: [String: String] = [:]
        for header in setCookies {
            let pair = header.split(separator: ";", maxSplits: 1)[0]
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            result[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        return result
    }
    /// Whether the server said it will close the connection.
    var closesConnection: Bool { headers["Connection"]?.lowercased() == "close" }
}

enum TestHTTPClientError: Error, CustomStringConvertible {
    case connectFailed(Int32)
    case sendFailed(Int32)
    case timedOut
    case closedByPeer
    case malformed(String)

    var description: String {
        switch self {
        case .connectFailed(let code): "connect failed: \(String(cString: strerror(code)))"
        case .sendFailed(let code): "send failed: \(String(cString: strerror(code)))"
        case .timedOut: "timed out waiting for the server"
        case .closedByPeer: "the server closed the connection"
        case .malformed(let what): "malformed response: \(what)"
        }
    }
}

/// A blocking HTTP/1.1 client on one TCP connection at a time.
final class TestHTTPClient {
    let host: String
    let port: Int
    let timeout: Duration
    /// Cookies sent with every request (as one `Cookie` header) and updated from `Set-Cookie`.
    var cookieJar: [String: String] = [:]
    /// Whether ``request(_:_:headers:body:version:)`` uses and updates ``cookieJar``.
    var usesCookieJar = true
    /// How many TCP connections this client has opened (1 after several keep-alive requests).
    private(set) var connectionsOpened = 0

    private var fd: Int32 = -1
    private var buffer: [UInt8] = []

    /// Connects to `host:port`.
    init(host: String = "127.0.0.1", port: Int, timeout: Duration = .seconds(5)) throws {
        self.host = host
        self.port = port
        self.timeout = timeout
        try connect()
    }

    deinit { close() }

    var isConnected: Bool { fd >= 0 }

    /// Opens a new connection (closing the current one, if any).
    func connect() throws {
        close()
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let info = list else {
            throw TestHTTPClientError.connectFailed(EINVAL)
        }
        defer { freeaddrinfo(list) }
        let socket = Glibc.socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socket >= 0 else { throw TestHTTPClientError.connectFailed(errno) }
        var tv = timeval(tv_sec: Int(timeout.components.seconds),
                         tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        guard Glibc.connect(socket, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let code = errno
            Glibc.close(socket)
            throw TestHTTPClientError.connectFailed(code)
        }
        fd = socket
        buffer.removeAll()
        connectionsOpened += 1
    }

    /// Closes the connection (a normal FIN).
    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        buffer.removeAll()
    }

    /// Closes the connection with a TCP reset (SO_LINGER 0), as a crashed client would.
    func abort() {
        guard fd >= 0 else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    // MARK: Requests

    /// Sends a request and reads its response, reusing the connection (or reconnecting if the server closed it).
    ///
    /// Adds `Host`, `Content-Length` (when there is a body or the method usually has one) and `Cookie` (from the
    /// jar) unless given in `headers`.
    @discardableResult
    func request(_ method: String, _ path: String, headers: KeyValuePairs<String, String> = [:],
                 body: [UInt8] = [], version: String = "HTTP/1.1") throws -> TestHTTPResponse {
        if fd < 0 { try connect() }
        var head = "\(method) \(path) \(version)\r\n"
        let given = Set(headers.map { $0.key.lowercased() })
        if !given.contains("host") { head += "Host: \(host):\(port)\r\n" }
        if !given.contains("content-length") && !given.contains("transfer-encoding")
            && (!body.isEmpty || ["POST", "PUT", "PATCH"].contains(method)) {
            head += "Content-Length: \(body.count)\r\n"
        }
        if usesCookieJar && !given.contains("cookie") && !cookieJar.isEmpty {
            head += "Cookie: " + cookieJar.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                .joined(separator: "; ") + "\r\n"
        }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        try send(Array(head.utf8) + body)
        let response = try readResponse(method: method)
        if usesCookieJar { absorbCookies(response) }
        if response.closesConnection || (version == "HTTP/1.0" && response.headers["Connection"]?.lowercased() != "keep-alive") {
            close()
        }
        return response
    }

    /// `request` with a text body.
    @discardableResult
    func request(_ method: String, _ path: String, headers: KeyValuePairs<String, String> = [:],
                 body: String, version: String = "HTTP/1.1") throws -> TestHTTPResponse {
        try request(method, path, headers: headers, body: Array(body.utf8), version: version)
    }

    /// Sends raw bytes on the connection.
    func send(_ bytes: [UInt8]) throws {
        if fd < 0 { try connect() }
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw TestHTTPClientError.sendFailed(errno) }
            offset += sent
        }
    }

    /// Sends raw text on the connection.
    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads one response. `method` tells whether a body follows (not for HEAD).
    func readResponse(method: String = "GET") throws -> TestHTTPResponse {
        let headEnd = try readUntilHeaderEnd()
        let headText = String(decoding: buffer[..<headEnd], as: UTF8.self)
        buffer.removeFirst(headEnd + 4)
        var lines = headText.split(separator: "\r\n", omittingEmptySubsequences: false)
        guard !lines.isEmpty else { throw TestHTTPClientError.malformed("empty head") }
        let statusLine = lines.removeFirst().split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
            throw TestHTTPClientError.malformed("status line \(statusLine)")
        }
        var headers = HTTPHeaders()
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { throw TestHTTPClientError.malformed("header \(line)") }
            headers.add(String(line[..<colon]), String(line[line.index(after: colon)...].drop { $0 == " " }))
        }
        var response = TestHTTPResponse(version: String(statusLine[0]), status: status,
                                        reason: statusLine.count > 2 ? String(statusLine[2]) : "",
                                        headers: headers, body: [])
        let bodyless = method == "HEAD" || status == 204 || status == 304 || (100..<200).contains(status)
        if bodyless { return response }
        if headers["Transfer-Encoding"]?.lowercased() == "chunked" {
            response.body = try readChunked()
        } else if let length = headers["Content-Length"].flatMap({ Int($0) }) {
            response.body = try readExactly(length)
        } else {
            response.body = try readToEnd()   // HTTP/1.0 style: the body ends with the connection
        }
        return response
    }

    /// Waits up to `timeout` for the server to close the connection; true if it did.
    func waitForClose(timeout: Duration = .seconds(2)) -> Bool {
        guard fd >= 0 else { return true }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ms = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&pfd, 1, ms) > 0 else { return false }
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK)) <= 0
    }

    /// Reads until the server closes the connection and returns the bytes not consumed by an earlier
    /// ``readResponse(method:)`` (none, when the server sent nothing more). Throws `timedOut` if the connection stays
    /// open longer than the client's timeout.
    func readUntilClosed() throws -> [UInt8] {
        guard fd >= 0 else { return buffer }
        while true {
            do { try fill() } catch TestHTTPClientError.closedByPeer { break }
        }
        defer { close() }
        return buffer
    }

    // MARK: Reading

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 16384)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count > 0 {
            buffer += chunk[..<count]
        } else if count == 0 {
            throw TestHTTPClientError.closedByPeer
        } else if errno == EAGAIN || errno == EWOULDBLOCK {
            throw TestHTTPClientError.timedOut
        } else if errno == ECONNRESET {
            throw TestHTTPClientError.closedByPeer
        } else {
            throw TestHTTPClientError.malformed("recv: \(String(cString: strerror(errno)))")
        }
    }

    private func readUntilHeaderEnd() throws -> Int {
        guard fd >= 0 else { throw TestHTTPClientError.closedByPeer }
        var searchFrom = 0
        while true {
            if buffer.count >= 4 {
                for i in searchFrom...(buffer.count - 4)
                where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
                    return i
                }
                searchFrom = buffer.count - 3
            }
            try fill()
        }
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        while buffer.count < count { try fill() }
        defer { buffer.removeFirst(count) }
        return Array(buffer[..<count])
    }

    private func readLine() throws -> String {
        while true {
            if let i = buffer.indices.dropLast().first(where: { buffer[$0] == 13 && buffer[$0 + 1] == 10 }) {
                defer { buffer.removeFirst(i + 2) }
                return String(decoding: buffer[..<i], as: UTF8.self)
            }
            try fill()
        }
    }

    private func readChunked() throws -> [UInt8] {
        var body: [UInt8] = []
        while true {
            let sizeLine = try readLine()
            guard let size = Int(sizeLine.split(separator: ";")[0].trimmingSpaces, radix: 16) else {
                throw TestHTTPClientError.malformed("chunk size \(sizeLine)")
            }
            if size == 0 {
                while try !readLine().isEmpty {}   // trailers
                return body
            }
            body += try readExactly(size)
            guard try readLine().isEmpty else { throw TestHTTPClientError.malformed("chunk end") }
        }
    }

    private func readToEnd() throws -> [UInt8] {
        while true {
            do { try fill() } catch TestHTTPClientError.closedByPeer { break }
        }
        defer { close() }
        return buffer
    }

    private func absorbCookies(_ response: TestHTTPResponse) {
        for header in response.setCookies {
            let attributes = header.split(separator: ";").map { $0.trimmingSpaces }
            let pair = attributes[0].split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(pair[0])
            let expired = attributes.dropFirst().contains {
                $0.lowercased() == "max-age=0" || $0.hasPrefix("Expires=Thu, 01 Jan 1970")
            }
            if expired { cookieJar[name] = nil } else { cookieJar[name] = pair.count > 1 ? String(pair[1]) : "" }
        }
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// Sends each raw request on a connection of its own to 127.0.0.1:`port` and reads its one response, on a thread of
/// its own (see `onThread`): for requests the server refuses, which close their connection.
func responsesOnFreshConnections(to port: Int, _ requests: [String]) async throws -> [TestHTTPResponse] {
    try await onThread {
        try requests.map { request in
            let client = try TestHTTPClient(port: port)
            try client.send(request)
            return try client.readResponse()
        }
    }
}
