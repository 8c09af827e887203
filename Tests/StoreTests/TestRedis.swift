import Foundation
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
        guard bound else { throw PrivateRedisServer.Failure("cannot find a free port: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// A redis-server of a test's own (for counting commands, AUTH, or killing it), stopped by `stop()` or deinit.
final class PrivateRedisServer: @unchecked Sendable {
    // @unchecked Sendable: `process` is set once in init and only read afterwards; Process is thread-safe to terminate.
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    let port: Int
    private var process: Process?

    init(port: Int? = nil, arguments: [String] = []) throws {
        self.port = try port ?? TestRedis.unusedPort()
        try start(arguments: arguments)
    }

    func start(arguments: [String] = []) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", NSTemporaryDirectory()] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { throw Failure("redis-server did not start: \(error) (is redis-server installed?)") }
        self.process = process
        for _ in 0..<200 {
            if Self.answersPing(port: port) { return }
            usleep(25_000)
        }
        stop()
        throw Failure("redis-server on port \(port) did not answer PING within 5 s")
    }

    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    deinit { stop() }

    /// `INFO commandstats` as command -> calls.
    func commandCounts() throws -> [String: Int] {
        let output = try Self.cli(port: port, ["INFO", "commandstats"])
        var counts: [String: Int] = [:]
        for line in output.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst("cmdstat_".count).prefix { $0 != ":" }
            if let calls = line.split(separator: "calls=").last?.prefix(while: \.isNumber), let value = Int(calls) {
                counts[String(name)] = value
            }
        }
        return counts
    }

    static func answersPing(port: Int) -> Bool {
        (try? cli(port: port, ["PING"]))?.hasPrefix("PONG") == true
    }

    @discardableResult
    static func cli(port: Int, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
        process.arguments = ["-p", String(port)] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}

private enum SharedTestClient {
    static let thread = try! EventLoopThread(name: "test-redis")
    static let client = RedisClient(configuration: TestRedis.configuration, loop: thread.loop)
}
