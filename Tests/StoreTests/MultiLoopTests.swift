import Foundation
import Synchronization
import Testing
@testable import EvServer
import RedisSessionStore
@testable import EvServerApp

#if canImport(Glibc)
import Glibc
#endif

// `--threads 2`: two event loops, each with its own SO_REUSEPORT listener on the same port. The kernel spreads new
// connections over them, so requests really run on both loops at once, and everything they share (the memory
// store, the metrics, the pipeline) must be race-free. Run this suite under the thread sanitizer too:
//     swift test --sanitize=thread --scratch-path .build-tsan --filter MultiLoopTests

extension ScaleSuites {
    @Suite struct MultiLoopTests {
        @Test func twoThreadsServeOnePortFromTwoLoops() async throws {
            let demo = try DemoApp(configuration: try Self.configuration(["--threads", "2", "--store", "memory"]))
            let app = demo.makeApplication()
            let seen = LoopRecorder()
            // Test-only middleware: which loop ran the request (the executor the handler task runs on).
            app.use { request, response, next in
                try await next()
                if let loop = EventLoop.current { seen.record(loop) }
                response.headers.replace("X-Loop", EventLoop.current?.name ?? "none")
                response.headers.replace("X-Request-Loop", request.loop?.name ?? "none")
            }
            try await withServer(app, threads: demo.configuration.threads) { server in
                #expect(server.loops.count == 2)
                #expect(Set(server.loops.map(\.name)).count == 2, "the loops should have distinct names")

                // 64 connections (each a new source port, so a new SO_REUSEPORT hash): with two loops, the chance that all
                // land on one is 2^-63.
                let port = server.port
                let answers = try await onThread {
                    try (0..<64).map { _ -> (status: Int, loop: String, requestLoop: String) in
                        let response = try TestHTTPClient(port: port).request("GET", "/hello")
                        return (response.status, response.headers["X-Loop"] ?? "none",
                                response.headers["X-Request-Loop"] ?? "none")
                    }
                }
                var names: [String: Int] = [:]
                for answer in answers {
                    #expect(answer.status == 200)
                    #expect(answer.loop == answer.requestLoop)
                    names[answer.loop, default: 0] += 1
                }
                print("MultiLoopTests: 64 connections to port \(server.port) served by \(names.sorted { $0.key < $1.key })")
                #expect(Set(names.keys) == Set(server.loops.map(\.name)), "\(names)")
                #expect(seen.loops == Set(server.loops.map(ObjectIdentifier.init)))
            }
        }

        /// One session read and written from both loops at once loses no update, with either store. (It caught
        /// `MemorySessionStore.touch` writing back a stale copy over a concurrent save, since fixed.) TSan watches the
        /// same run when the suite is built with `--sanitize=thread`.
        @Test(arguments: ["memory", "redis"])
        func oneSessionFromBothLoopsLosesNoUpdate(store kind: String) async throws {
            let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
            var arguments = ["--threads", "2", "--store", kind]
            var redis: TestRedis.Connection?
            if kind == "redis" {
                redis = try await TestRedis.connect()
                arguments += ["--redis-url", TestRedis.url, "--prefix", prefix]
            }
            defer { redis?.close() }
            let demo = try DemoApp(configuration: try Self.configuration(arguments))
            let app = demo.makeApplication()
            let seen = LoopRecorder()
            app.use { _, _, next in
                try await next()
                if let loop = EventLoop.current { seen.record(loop) }
            }
            try await withServer(app, threads: demo.configuration.threads) { server in
                let port = server.port
                let sessions = 8
                let rounds = 40
                let board = SessionBoard(sessions)

                // Per session, two threads with a connection each (spread over both loops): a writer counting with /views
                // and writing keys with POST /session, and a reader of GET /session (a touch) running at the same time, so
                // one session is read and written from both loops at once.
                let reports = try await inParallelThreads(sessions * 2) { thread -> [String] in
                    thread % 2 == 0
                        ? Self.write(session: thread / 2, rounds: rounds, port: port, board: board)
                        : Self.read(session: thread / 2, port: port, board: board)
                }
                let problems = reports.flatMap { $0 }
                let lost = problems.filter { $0.contains(Self.lostUpdate) }
                let other = problems.filter { !$0.contains(Self.lostUpdate) }
                let remaining: Int
                if let redis {
                    var cursor = "0", keys = 0
                    repeat {
                        let page = try await redis.client.scan(cursor: cursor, match: prefix + "*", count: 500)
                        keys += page.keys.count
                        cursor = page.cursor
                    } while cursor != "0"
                    remaining = keys
                } else {
                    remaining = try await (demo.store as? MemorySessionStore)?.length() ?? -1
                }
                print("MultiLoopTests[\(kind)]: \(sessions) sessions x \(rounds) rounds (+\(board.reads) concurrent "
                    + "reads) on 2 loops, \(seen.counts.values.sorted()) requests per loop, \(lost.count) lost updates, "
                    + "\(other.count) "
                    + "other problems, \(remaining) sessions left")
                #expect(other.isEmpty, "\(other.prefix(10))")
                #expect(lost.isEmpty, "\(lost.prefix(10))")
                #expect(remaining == sessions / 2)
                #expect(seen.loops.count == 2, "all requests ran on one loop")
            }
        }

        static let lostUpdate = "lost update"

        /// The writer of session `index`: counts to `rounds` with GET /views (each must add exactly one), writes a key
        /// every 4th round, checks the final data, then, once its reader has stopped, logs out every other session.
        /// - Returns: the problems seen.
        static func write(session index: Int, rounds: Int, port: Int, board: SessionBoard) -> [String] {
            var problems: [String] = []
            defer { board.finish(index) }
            do {
                let writer = try TestHTTPClient(port: port)
                var previous = 0
                for round in 1...rounds {
                    let views = try writer.request("GET", "/views")
                    let count = try JSONValue(parsing: views.body)["views"]?.intValue ?? -1
                    if count != previous + 1 {
                        problems.append(
                            "session \(index): \(lostUpdate): round \(round) counted \(count) after \(previous)")
                    }
                    previous = count
                    if round == 1, let cookie = writer.cookieJar["connect.sid"] { board.publish(cookie, for: index) }
                    if round % 4 == 0 {
                        let write = try writer.request("POST", "/session", headers: ["Content-Type": "application/json"],
                                                       body: #"{"k\#(round)":"\#(index)-\#(round)"}"#)
                        if write.status != 200 { problems.append("session \(index): POST /session \(write.status)") }
                    }
                }
                let final = try JSONValue(parsing: try writer.request("GET", "/session").body)["data"]
                if final?["views"]?.intValue != rounds {
                    problems.append("session \(index): \(lostUpdate): final views \(final?["views"] ?? .null)")
                }
                for round in stride(from: 4, through: rounds, by: 4)
                where final?["k\(round)"]?.stringValue != "\(index)-\(round)" {
                    problems.append("session \(index): \(lostUpdate): k\(round) missing")
                }
                // The reader would see the logout as a loss: stop it first.
                board.finish(index)
                board.waitForReader(index)
                if index % 2 == 0 {
                    let logout = try writer.request("POST", "/logout")
                    if logout.status != 200 { problems.append("session \(index): logout \(logout.status)") }
                }
            } catch {
                problems.append("session \(index) writer: \(error)")
            }
            return problems
        }

        /// The reader of session `index`: GET /session (a touch) on a connection of its own until the writer is done;
        /// the count it sees never goes back.
        /// - Returns: the problems seen.
        static func read(session index: Int, port: Int, board: SessionBoard) -> [String] {
            var problems: [String] = []
            defer { board.readerStopped(index) }
            do {
                guard let cookie = board.waitForCookie(index) else { return ["session \(index): no cookie"] }
                let reader = try TestHTTPClient(port: port)
                reader.cookieJar["connect.sid"] = cookie
                var last = 0
                var reads = 0
                while !board.isDone(index) {
                    let shown = try reader.request("GET", "/session")
                    let views = try JSONValue(parsing: shown.body)["data"]?["views"]?.intValue ?? 0
                    if shown.status != 200 { problems.append("session \(index): GET /session \(shown.status)") }
                    if views < last {
                        problems.append("session \(index): \(lostUpdate): views went from \(last) to \(views)")
                    }
                    last = max(last, views)
                    reads += 1
                }
                board.recordReads(reads)
            } catch {
                problems.append("session \(index) reader: \(error)")
            }
            return problems
        }

        static func configuration(_ arguments: [String]) throws -> AppConfiguration {
            try ServerOptions.parse(["--port", "0", "--secret", EvServerProcess.secret, "--instance", "multi"] + arguments)
                .resolve(environment: [:])
        }
    }
}

/// What the writer and reader threads of ``MultiLoopTests`` share: each session's cookie and whether its writer
/// is done.
final class SessionBoard: Sendable {
    private struct State {
        var cookies: [Int: String] = [:]
        var done: Set<Int> = []
        var readersStopped: Set<Int> = []
        var reads = 0
    }
    private let state = Mutex(State())

    init(_ count: Int) {}

    func publish(_ cookie: String, for index: Int) { state.withLock { $0.cookies[index] = cookie } }
    func finish(_ index: Int) { state.withLock { _ = $0.done.insert(index) } }
    func isDone(_ index: Int) -> Bool { state.withLock { $0.done.contains(index) } }
    func readerStopped(_ index: Int) { state.withLock { _ = $0.readersStopped.insert(index) } }

    /// Waits (up to 10 s) until the reader of session `index` has stopped.
    func waitForReader(_ index: Int) {
        for _ in 0..<10_000 where !state.withLock({ $0.readersStopped.contains(index) }) { usleep(1_000) }
    }

    func recordReads(_ count: Int) { state.withLock { $0.reads += count } }
    var reads: Int { state.withLock { $0.reads } }

    /// The session's cookie once its writer has one; nil if the writer finished without.
    func waitForCookie(_ index: Int) -> String? {
        while true {
            let (cookie, done) = state.withLock { ($0.cookies[index], $0.done.contains(index)) }
            if let cookie { return cookie }
            if done { return nil }
            usleep(1_000)
        }
    }
}

/// Counts requests per event loop, from any loop.
final class LoopRecorder: Sendable {
    private let state = Mutex<[ObjectIdentifier: Int]>([:])

    func record(_ loop: EventLoop) { state.withLock { $0[ObjectIdentifier(loop), default: 0] += 1 } }

    var counts: [ObjectIdentifier: Int] { state.withLock { $0 } }
    var loops: Set<ObjectIdentifier> { Set(counts.keys) }
}
