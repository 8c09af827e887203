import Foundation
import Synchronization
import EvServer
import RedisSessionStore

#if canImport(Glibc)
import Glibc
#endif

/// The shared test redis-server that `make test` starts: REDIS_HOST / REDIS_PORT (default 127.0.0.1:6379).
extension TestRedis {
    static var host: String { configuration.host }
    static var port: Int { configuration.port }
    static var url: String { "redis://\(host):\(port)/0" }

    /// A client on a loop of its own, shared by the tests that only need to look at keys.
    static var client: RedisClient { SharedTestClient.client }

    /// A TCP port on which nothing listens, below the kernel's ephemeral range (32768-60999 on Linux): a port the
    /// kernel picks for port 0 is an ephemeral one, and any test's outgoing connection can take it as its local port
    /// before the server that was meant to listen there binds it (a redis-server then fails to start). Random
    /// ports in 20000-32767, each checked by binding it, with the kernel's pick as the last resort.
    ///
    /// A port is handed out once per test process: tests run in parallel, and between this check and the server's
    /// own bind another test could otherwise be given the same port ("Address already in use").
    static func unusedPort() throws -> Int {
        for _ in 0..<64 {
            let candidate = Int.random(in: 20000...32767)
            guard bindable(candidate) else { continue }
            if handedOut.withLock({ $0.insert(candidate).inserted }) { return candidate }
        }
        return try kernelPickedPort()
    }

    private static let handedOut = Mutex<Set<Int>>([])

    /// Calls `start` and, while it fails because its port was taken meanwhile ("Address already in use" in the
    /// server's output), hands `usePort` a new unused port and calls it again: three more tries.
    static func retryingOnTakenPort(_ start: () throws -> Void, usePort: (Int) -> Void) throws {
        for attempt in 0... {
            do {
                return try start()
            } catch let failure as PrivateRedis.Failure
                        where attempt < 3 && failure.description.contains("Address already in use") {
                usePort(try unusedPort())
            }
        }
    }

    private static func bindable(_ port: Int) -> Bool {
        withLoopbackSocket(port: port) { bind($0, $1, $2) } == 0
    }

    private static func kernelPickedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw PrivateRedis.Failure("cannot find a free port: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

private enum SharedTestClient {
    static let thread = try! EventLoopThread(name: "test-redis")
    static let client = RedisClient(configuration: TestRedis.configuration, loop: thread.loop)
}

// MARK: - A private redis-server

/// A redis-server of the test's own on a free port, killed at the end (`stop()`; also on deinit).
///
/// A ``ChildProcess`` (posix_spawn, not Foundation's Process: see there), so SIGTERM and SIGKILL reach it.
final class PrivateRedis: Sendable {
    /// TLS on `port` instead of plain text (`--tls-port port --port 0` plus `arguments`, the certificate files),
    /// and how to tell that the server answers there (the default probe speaks plain text).
    struct TLS: Sendable {
        var arguments: [String]
        var probe: @Sendable (_ port: Int) -> Bool
    }

    /// Chosen once; a new one only when the first start found it taken (see ``init(arguments:tls:)``).
    var port: Int { portStorage.withLock { $0 } }
    private let portStorage: Mutex<Int>
    private let arguments: [String]
    /// Changed by ``start(tls:)``.
    private let tls: Mutex<TLS?>
    private let child = Mutex<ChildProcess?>(nil)
    /// The server's working directory, its own: a dump.rdb written there (by a replica's full sync, say) must never
    /// be loaded by another test's server, as one left in a shared /tmp would be.
    let directory: String

    init(arguments: [String] = [], tls: TLS? = nil) throws {
        self.arguments = arguments
        self.tls = Mutex(tls)
        portStorage = Mutex(try TestRedis.unusedPort())
        directory = NSTemporaryDirectory() + "evserver-redis-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // A port free when checked can be bound by another process before the server binds it (a CI machine whose
        // ephemeral range reaches down into 20000-32767, a process picking ports at random): another port then.
        try TestRedis.retryingOnTakenPort(start, usePort: { port in portStorage.withLock { $0 = port } })
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts (or restarts) the server on `port` and waits until it answers.
    func start() throws {
        guard let executable = ChildProcess.find("redis-server") else {
            throw PrivateRedis.Failure("redis-server is not installed (apt-get install redis-server)")
        }
        let tls = self.tls.withLock { $0 }
        let listening = tls.map { ["--port", "0", "--tls-port", "\(port)"] + $0.arguments } ?? ["--port", "\(port)"]
        let process = try ChildProcess(executable, listening + ["--bind", "127.0.0.1", "--save", "",
                                                                "--appendonly", "no", "--daemonize", "no", "--dir",
                                                                directory, "--loglevel", "warning"] + arguments)
        child.withLock { $0 = process }
        let answers = tls?.probe ?? { redisAnswers(port: $0) }
        let deadline = ContinuousClock.now + .seconds(5)
        while !answers(port) {
            guard process.exitStatus == nil, ContinuousClock.now < deadline else {
                stop()
                throw PrivateRedis.Failure("the private redis-server on port \(port) did not start: "
                                           + process.output.suffix(500) + process.errorOutput.suffix(500))
            }
            usleep(10_000)
        }
    }

    /// Kills the server if it runs and starts it again with other TLS settings (another certificate, or plain
    /// text with nil), on the same port.
    func start(tls: TLS?) throws {
        // Killed and reaped first: the new process must find the port free.
        stop()
        self.tls.withLock { $0 = tls }
        try start()
    }

    /// Kills the server (SIGKILL: an abrupt death, as a crash or an OOM kill would be) and reaps it. Idempotent.
    func stop() {
        child.withLock { child in
            child?.terminate()
            child = nil
        }
    }
}

/// The distinct keys matching `pattern` on the server `client` talks to, walked with SCAN (which may return a key
/// twice, and never returns a logically expired one).
func countKeys(_ client: RedisClient, matching pattern: String) async throws -> Int {
    var cursor = "0"
    var keys = Set<String>()
    repeat {
        let page = try await client.scan(cursor: cursor, match: pattern, count: 1000)
        keys.formUnion(page.keys)
        cursor = page.cursor
    } while cursor != "0"
    return keys.count
}

/// Whether something on 127.0.0.1:`port` answers a PING with a RESP reply (`+PONG` or an error such as NOAUTH).
func redisAnswers(port: Int) -> Bool {
    guard let reply = inlineCommandReply(port: port, "PING", capacity: 64), let first = reply.first else { return false }
    return first == UInt8(ascii: "+") || first == UInt8(ascii: "-")
}

/// The first bytes (up to `capacity`) of the reply to an inline command sent to 127.0.0.1:`port` on a new
/// connection, with no client library and a 200 ms read timeout; nil when nothing answers. For probing servers
/// that may be down, paused or refusing.
func inlineCommandReply(port: Int, _ command: String, capacity: Int) -> [UInt8]? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = loopbackAddress(port: port)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { return nil }
    let line = Array((command + "\r\n").utf8)
    guard write(fd, line, line.count) == line.count else { return nil }
    var buffer = [UInt8](repeating: 0, count: capacity)
    let count = read(fd, &buffer, buffer.count)
    return count > 0 ? Array(buffer[..<count]) : nil
}

/// Calls `operation` (bind, connect) with a new TCP socket and 127.0.0.1:`port`, closes the socket, and returns what
/// `operation` returned (-1 when no socket could be made).
func withLoopbackSocket(port: Int, _ operation: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    defer { close(fd) }
    var address = loopbackAddress(port: port)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            operation(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
}

func loopbackAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = in_addr_t(0x7F00_0001).bigEndian
    return address
}

extension PrivateRedis {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// A client for this server on the shared test loop; close it when done.
    func client() -> RedisClient { Self.client(port: port) }

    static func client(port: Int) -> RedisClient {
        RedisClient(configuration: RedisConfiguration(host: "127.0.0.1", port: port), loop: SharedTestClient.thread.loop)
    }

    /// `INFO commandstats` as command -> calls (e.g. `["set": 2, "expire": 1]`).
    func commandCounts() async throws -> [String: Int] {
        let client = client()
        defer { client.close() }
        let info = try await client.send("INFO", "commandstats").string ?? ""
        var counts: [String: Int] = [:]
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst("cmdstat_".count).prefix { $0 != ":" }
            // cmdstat_get:calls=1,usec=2,...,rejected_calls=0,failed_calls=0: the first field is the one.
            let fields = line.drop { $0 != ":" }.dropFirst().split(separator: ",")
            if let calls = fields.first?.split(separator: "=").last, let value = Int(calls) {
                counts[String(name)] = value
            }
        }
        return counts
    }
}
