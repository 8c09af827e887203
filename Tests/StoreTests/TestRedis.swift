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

    /// A TCP port on which nothing listens (bound, read back, closed).
    static func unusedPort() throws -> Int {
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
/// Started with posix_spawn rather than Foundation's Process: a child inherits the signal mask of the thread that
/// spawns it, and the concurrency pool's threads block most signals, so a redis-server spawned from a test task
/// would ignore SIGTERM; here the child gets an empty mask and default dispositions.
final class PrivateRedis: Sendable {
    let port: Int
    private let arguments: [String]
    private let pid = Mutex<pid_t?>(nil)

    init(arguments: [String] = []) throws {
        self.arguments = arguments
        self.port = try TestRedis.unusedPort()
        try start()
    }

    deinit { stop() }

    /// Starts (or restarts) the server on `port` and waits until it answers.
    func start() throws {
        guard let executable = findExecutable("redis-server") else {
            throw PrivateRedis.Failure("redis-server is not installed (apt-get install redis-server)")
        }
        let argv = [executable, "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--daemonize", "no", "--dir", "/tmp", "--loglevel", "warning"] + arguments
        let child = try spawn(executable, argv)
        pid.withLock { $0 = child }
        let deadline = ContinuousClock.now + .seconds(5)
        while !redisAnswers(port: port) {
            var status: Int32 = 0
            guard waitpid(child, &status, WNOHANG) == 0, ContinuousClock.now < deadline else {
                stop()
                throw PrivateRedis.Failure("the private redis-server on port \(port) did not start")
            }
            usleep(10_000)
        }
    }

    /// Kills the server (SIGKILL: an abrupt death, as a crash or an OOM kill would be) and reaps it. Idempotent.
    func stop() {
        guard let child = pid.withLock({ pid in defer { pid = nil }; return pid }) else { return }
        kill(child, SIGKILL)
        var status: Int32 = 0
        while waitpid(child, &status, 0) == -1, errno == EINTR {}
    }
}

func spawn(_ path: String, _ arguments: [String]) throws -> pid_t {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGPIPE, SIGTERM, SIGINT] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var child: pid_t = 0
    let status = posix_spawn(&child, path, &actions, &attributes, argv, environ)
    guard status == 0 else { throw PrivateRedis.Failure("posix_spawn \(path) failed: \(status)") }
    return child
}

func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
        let candidate = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// Whether something on 127.0.0.1:`port` answers a PING with a RESP reply (`+PONG` or an error such as NOAUTH).
func redisAnswers(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = loopbackAddress(port: port)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { return false }
    let ping = Array("PING\r\n".utf8)
    guard write(fd, ping, ping.count) == ping.count else { return false }
    var buffer = [UInt8](repeating: 0, count: 64)
    let count = read(fd, &buffer, buffer.count)
    return count > 0 && (buffer[0] == UInt8(ascii: "+") || buffer[0] == UInt8(ascii: "-"))
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
