import EvServer
import Foundation
import Synchronization
import Testing
@testable import RedisSessionStore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Tests against a real redis-server: the shared one at REDIS_HOST/REDIS_PORT (default 127.0.0.1:6379) for plain
// round trips, and private ones started by the test itself for anything that disturbs the server (CLIENT KILL,
// CLIENT PAUSE, stopping it, passwords), so that suites can run in parallel.

// In ScaleSuites (one suite at a time with the process-heavy ones): its deadlines measure the client, and a
// 10,000-user or 6-node-cluster suite saturating both cores at the same moment made them measure the machine.
extension ScaleSuites {
    @Suite struct RedisClientTests {

        // MARK: - Round trips

        @Test func setThenGetReturnsTheValue() async throws {
            try await withClient { client in
                let key = testKey()
                try await client.set(key, to: Array("hello".utf8))
                #expect(try await client.get(key) == Array("hello".utf8))
                #expect(try await client.delete([key]) == 1)
            }
        }

        @Test func getOfAMissingKeyIsNil() async throws {
            try await withClient { client in
                let value = try await client.get(testKey())
                #expect(value == nil)
            }
        }

        @Test func binaryValuesWithNULAndFFSurviveTheRoundTrip() async throws {
            try await withClient { client in
                let key = testKey()
                let value: [UInt8] = [0, 0xFF, 0, 1, 2, 0xFF, 0x0D, 0x0A, 0x24, 0x2A, 0] + Array(0...255)
                try await client.set(key, to: value, expiresIn: 60)
                #expect(try await client.get(key) == value)
                let empty = testKey()
                try await client.set(empty, to: [], expiresIn: 60)
                #expect(try await client.get(empty) == [])
                try await client.delete([key, empty])
            }
        }

        @Test func oneMegabyteValueSurvivesTheRoundTrip() async throws {
            try await withClient { client in
                let key = testKey()
                var generator = SystemRandomNumberGenerator()
                let value = (0..<1_048_576).map { _ in UInt8.random(in: 0...255, using: &generator) }
                try await client.set(key, to: value, expiresIn: 60)
                let read = try await client.get(key)
                #expect(read?.count == value.count)
                #expect(read == value)
                try await client.delete([key])
            }
        }

        @Test func setWithExpiryAndExpireSetTheTTL() async throws {
            try await withClient { client in
                let key = testKey()
                try await client.set(key, to: Array("v".utf8), expiresIn: 100)
                let ttl = try await client.send("TTL", key)
                #expect((91...100).contains(ttl.integer ?? -1), "TTL \(ttl)")
                #expect(try await client.expire(key, after: 500))
                #expect((491...500).contains(try await client.send("TTL", key).integer ?? -1))
                #expect(try await client.expire(testKey(), after: 10) == false)
                try await client.delete([key])
            }
        }

        @Test func getexReturnsTheValueAndRefreshesTheTTL() async throws {
            try await withClient { client in
                let key = testKey()
                try await client.set(key, to: Array("session".utf8), expiresIn: 100)
                #expect(try await client.get(key, refreshingExpiry: 900) == Array("session".utf8))
                let ttl = try await client.send("TTL", key).integer ?? -1
                #expect((891...900).contains(ttl), "TTL \(ttl)")
                let missing = testKey()
                #expect(try await client.get(missing, refreshingExpiry: 900) == nil)
                #expect(try await client.send("EXISTS", missing) == .integer(0))
                try await client.delete([key])
            }
        }

        @Test func deleteCountsTheKeysRemoved() async throws {
            try await withClient { client in
                let (a, b, c) = (testKey(), testKey(), testKey())
                try await client.set(a, to: [1])
                try await client.set(b, to: [2])
                #expect(try await client.delete([a, b, c]) == 2)
                #expect(try await client.delete([a]) == 0)
                #expect(try await client.delete([]) == 0)
            }
        }

        @Test func scanFindsEveryKeyUnderAPrefix() async throws {
            try await withClient { client in
                let prefix = testKey() + ":"
                let keys = Set((0..<40).map { "\(prefix)\($0)" })
                for key in keys { try await client.set(key, to: [1], expiresIn: 60) }
                var found = Set<String>()
                var cursor = "0"
                var rounds = 0
                repeat {
                    let page = try await client.scan(cursor: cursor, match: "\(prefix)*", count: 7)
                    found.formUnion(page.keys)
                    cursor = page.cursor
                    rounds += 1
                } while cursor != "0" && rounds < 10_000
                #expect(found == keys)
                #expect(try await client.delete(Array(keys)) == keys.count)
            }
        }

        @Test func pingAnswers() async throws {
            try await withClient { client in
                try await client.ping()
                #expect(try await client.send("PING") == .simpleString("PONG"))
                #expect(try await client.send("ECHO", "a\u{0}b") == .bulkString([0x61, 0, 0x62]))
            }
        }

        @Test func arraysAndNestedValuesAreCopied() async throws {
            try await withClient { client in
                let key = testKey()
                _ = try await client.send("RPUSH", key, "a", "", "c")
                let reply = try await client.send("LRANGE", key, "0", "-1")
                #expect(reply == .array([.bulkString(Array("a".utf8)), .bulkString([]), .bulkString(Array("c".utf8))]))
                let nested = try await client.eval(script: "return {1, {'x', {2}}, false, redis.error_reply('E1 bad')}",
                                                   keys: [])
                #expect(nested == .array([.integer(1), .array([.bulkString([0x78]), .array([.integer(2)])]), .null,
                                          .error("E1 bad")]))
                try await client.delete([key])
            }
        }

        // MARK: - Errors

        @Test func errorReplyThrowsRedisError() async throws {
            try await withClient { client in
                let key = testKey()
                try await client.set(key, to: Array("abc".utf8), expiresIn: 60)
                do {
                    _ = try await client.send("INCR", key)
                    Issue.record("INCR of a non-number succeeded")
                } catch let error as RedisError {
                    #expect(error.code == "ERR")
                    #expect(error.message.contains("not an integer"))
                    #expect(error.description.contains("not an integer"))
                }
                _ = try await client.send("DEL", key)
                _ = try await client.send("RPUSH", key, "x")
                await #expect(throws: RedisError.self) { try await client.get(key) }
                do {
                    _ = try await client.get(key)
                } catch let error as RedisError {
                    #expect(error.code == "WRONGTYPE")
                }
                try await client.delete([key])
            }
        }

        @Test func commandsThatChangeTheReplyModeAreRefused() async throws {
            try await withClient { client in
                for command in [["SUBSCRIBE", "c"], ["psubscribe", "c*"], ["MONITOR"], ["CLIENT", "REPLY", "OFF"],
                                ["SELECT", "1"], ["HELLO", "3"]] {
                    await #expect(throws: RedisClientError.unsupportedCommand) {
                        try await client.send(command.map { Array($0.utf8) })
                    }
                }
                try await client.ping()   // the connection is unharmed
            }
        }

        // MARK: - Scripts

        @Test func evalFallsBackToEvalThenUsesTheCachedScript() async throws {
            try await withClient { client in
                let key = testKey()
                // A script Redis has never seen (the comment makes it unique), so the first EVALSHA gets NOSCRIPT.
                let source = "-- \(key)\nreturn {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"
                let script = RedisScript(source)
                #expect(try await client.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(0)]))
                let first = try await client.eval(script: source, keys: [key], arguments: ["a", "41"])
                #expect(first == .array([.bulkString(Array(key.utf8)), .bulkString([0x61]), .integer(42)]))
                #expect(try await client.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(1)]))
                let second = try await client.eval(script, keys: [key], arguments: [[0, 0xFF], Array("1".utf8)])
                #expect(second == .array([.bulkString(Array(key.utf8)), .bulkString([0, 0xFF]), .integer(2)]))
            }
        }

        @Test func scriptSHA1MatchesRedis() async throws {
            try await withClient { client in
                let source = "return 'sha check \(testKey())'"
                let loaded = try await client.send("SCRIPT", "LOAD", source)
                #expect(loaded.string == RedisScript(source).sha1)
            }
        }

        @Test func failingScriptThrowsRedisError() async throws {
            try await withClient { client in
                let key = testKey()
                try await client.set(key, to: Array("x".utf8), expiresIn: 60)
                await #expect(throws: RedisError.self) {
                    try await client.eval(script: "return redis.call('INCR', KEYS[1])", keys: [key])
                }
                try await client.delete([key])
            }
        }

        // MARK: - Threads and pipelining

        @Test func thousandCommandsFromLoopTasksArePipelinedInOrder() async throws {
            try await withClient { client in
                let key = testKey()
                let loop = client.loop
                let sent = Counter()
                let results = try await withThrowingTaskGroup(of: (index: Int, value: Int, onLoop: Bool).self) { group in
                    for _ in 0..<1000 {
                        group.addTask(executorPreference: loop) {
                            // No suspension between taking the index and sending: both happen in one loop job, so the
                            // index is the position of this INCR in the pipeline.
                            let index = sent.next()
                            let value = try await client.send("INCR", key).integer ?? -1
                            return (index, value, loop.inLoop)
                        }
                    }
                    var results: [(index: Int, value: Int, onLoop: Bool)] = []
                    for try await result in group { results.append(result) }
                    return results
                }
                #expect(results.count == 1000)
                #expect(results.allSatisfy { $0.value == $0.index + 1 }, "replies out of order")
                #expect(results.allSatisfy { $0.onLoop })
                #expect(try await client.get(key) == Array("1000".utf8))
                try await client.delete([key])
            }
        }

        @Test func callsFromTasksOffTheLoopWork() async throws {
            try await withClient { client in
                #expect(!client.loop.inLoop)
                let key = testKey()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<50 {
                        group.addTask {
                            try await client.set("\(key):\(index)", to: Array("\(index)".utf8), expiresIn: 60)
                            #expect(try await client.get("\(key):\(index)") == Array("\(index)".utf8))
                        }
                    }
                    try await group.waitForAll()
                }
                #expect(try await client.delete((0..<50).map { "\(key):\($0)" }) == 50)
            }
        }

        @Test func commandsIssuedRightAfterInitWaitForTheConnection() async throws {
            try await withLoop { loop in
                let client = RedisClient(configuration: sharedConfiguration(), loop: loop)
                defer { client.close() }
                // No waiting for isConnected: these queue behind the handshake.
                async let first: Void = client.ping()
                async let second = client.get(testKey())
                try await first
                #expect(try await second == nil)
                #expect(client.isConnected)
            }
        }

        // MARK: - Databases and authentication

        @Test func selectIsolatesDatabases() async throws {
            var inDatabase3 = sharedConfiguration()
            inDatabase3.database = 3
            try await withClient(inDatabase3) { client3 in
                try await withClient { client0 in
                    let key = testKey()
                    try await client3.set(key, to: Array("three".utf8), expiresIn: 60)
                    #expect(try await client0.get(key) == nil)
                    #expect(try await client3.get(key) == Array("three".utf8))
                    try await client3.delete([key])
                }
            }
        }

        @Test func passwordAuthenticates() async throws {
            let server = try PrivateRedis(arguments: ["--requirepass", "s3cret"])
            defer { server.stop() }
            let right = RedisConfiguration(port: server.port, password: "s3cret")
            try await withClient(right) { client in
                try await client.set("k", to: [1])
                #expect(try await client.get("k") == [1])
            }
        }

        @Test func wrongPasswordFailsWithAClearError() async throws {
            let server = try PrivateRedis(arguments: ["--requirepass", "s3cret"])
            defer { server.stop() }
            let wrong = RedisConfiguration(port: server.port, password: "nope")
            try await withClient(wrong, waitForConnection: false) { client in
                // Queued behind the failing AUTH: fails with the reason.
                do {
                    try await client.ping()
                    Issue.record("PING with a wrong password succeeded")
                } catch let error as RedisClientError {
                    #expect(error == .connectFailed || error == .notConnected)
                    #expect(error.description.contains("authentication failed"), "\(error)")
                    #expect(error.description.contains("WRONGPASS"), "\(error)")
                    #expect(!error.description.contains("nope"))
                }
                // Later commands fail fast while it retries, still saying why.
                do {
                    try await client.ping()
                    Issue.record("PING with a wrong password succeeded")
                } catch let error as RedisClientError {
                    #expect(error.description.contains("authentication failed"), "\(error)")
                }
                #expect(!client.isConnected)
            }
            let none = RedisConfiguration(port: server.port)
            try await withClient(none, waitForConnection: false) { client in
                do {
                    try await client.ping()
                    Issue.record("PING without a password succeeded")
                } catch let error as RedisClientError {
                    #expect(error.description.contains("requires a password"), "\(error)")
                }
            }
        }

        @Test func aclUserAuthenticatesFromTheURL() async throws {
            let server = try PrivateRedis(arguments: ["--user", "alice", "on", ">p@ss:w/rd", "~*", "&*", "+@all"])
            defer { server.stop() }
            let configuration = try RedisConfiguration(url: "redis://alice:p%40ss%3Aw%2Frd@127.0.0.1:\(server.port)")
            try await withClient(configuration) { client in
                let user = try await client.send("ACL", "WHOAMI")
                #expect(user.string == "alice")
            }
            let wrong = try RedisConfiguration(url: "redis://alice:wrong@127.0.0.1:\(server.port)")
            try await withClient(wrong, waitForConnection: false) { client in
                do {
                    try await client.ping()
                    Issue.record("PING with a wrong ACL password succeeded")
                } catch let error as RedisClientError {
                    #expect(error.description.contains("authentication failed"), "\(error)")
                }
            }
        }

        // MARK: - Losing the connection

        @Test func clientKillFailsThePendingCommandThenTheClientReconnects() async throws {
            let server = try PrivateRedis()
            defer { server.stop() }
            let configuration = RedisConfiguration(port: server.port, commandTimeout: .seconds(10))
            try await withClient(configuration) { client in
                try await withClient(configuration) { admin in
                    let pending = Task { try await client.send("BLPOP", "never-pushed", "5") }
                    try await Task.sleep(for: .milliseconds(100))
                    let killed = try await admin.send("CLIENT", "KILL", "TYPE", "normal")
                    #expect((killed.integer ?? 0) >= 1)
                    let started = ContinuousClock.now
                    do {
                        let reply = try await pending.value
                        Issue.record("BLPOP on a killed connection returned \(reply)")
                    } catch let error as RedisClientError {
                        #expect(error == .connectionClosed, "\(error)")
                    }
                    #expect(ContinuousClock.now - started < .seconds(1))
                    try await eventually(within: .seconds(3)) { try await client.ping() }
                    #expect(client.isConnected)
                    try await client.set("after-kill", to: [7])
                    #expect(try await client.get("after-kill") == [7])
                }
            }
        }

        @Test func stoppedServerFailsFastThenTheClientReconnectsWhenItReturns() async throws {
            let server = try PrivateRedis()
            defer { server.stop() }
            try await withClient(RedisConfiguration(port: server.port)) { client in
                try await client.ping()
                server.stop()
                try await eventually(within: .seconds(3)) {
                    guard !client.isConnected else { throw TestFailure("still connected") }
                }
                var sawNotConnected = false
                for _ in 0..<20 {
                    let started = ContinuousClock.now
                    do {
                        try await client.ping()
                        Issue.record("PING to a stopped server succeeded")
                    } catch let error as RedisClientError {
                        let elapsed = ContinuousClock.now - started
                        #expect(elapsed < .milliseconds(3000), "failing took \(elapsed)")
                        #expect(error == .notConnected || error == .connectFailed, "\(error)")
                        if error == .notConnected { sawNotConnected = true }
                    }
                }
                #expect(sawNotConnected)
                try server.start()
                try await eventually(within: .seconds(3)) { try await client.ping() }
                #expect(client.isConnected)
            }
        }

        @Test func nothingListeningIsAConnectError() async throws {
            let port = try TestRedis.unusedPort()
            try await withClient(RedisConfiguration(port: port), waitForConnection: false) { client in
                do {
                    try await client.ping()
                    Issue.record("PING to a closed port succeeded")
                } catch let error as RedisClientError {
                    #expect(error == .connectFailed || error == .notConnected, "\(error)")
                    #expect(error.description.contains("refused"), "\(error)")
                }
                #expect(!client.isConnected)
            }
        }

        @Test func serverThatNeverAnswersFailsTheConnectAtTheDeadline() async throws {
            // A listener that never accepts: the kernel completes the TCP handshake, then nothing ever answers (as with
            // a hung server or a half-open connection).
            let blackHole = try BlackHole()
            defer { blackHole.close() }
            let configuration = RedisConfiguration(port: blackHole.port, commandTimeout: .milliseconds(200))
            try await withClient(configuration, waitForConnection: false) { client in
                let started = ContinuousClock.now
                do {
                    try await client.ping()
                    Issue.record("PING to a server that never answers succeeded")
                } catch let error as RedisClientError {
                    #expect(error == .connectFailed, "\(error)")
                    #expect(error.description.contains("no answer within 200 ms"), "\(error)")
                }
                let elapsed = ContinuousClock.now - started
                #expect(elapsed >= .milliseconds(150) && elapsed < .milliseconds(15000), "failed after \(elapsed)")
                #expect(!client.isConnected)
            }
        }

        @Test func commandsBeyondTheConnectingQueueLimitFailAtOnce() async throws {
            let blackHole = try BlackHole()
            defer { blackHole.close() }
            // A long deadline: the connect must still be pending when the fourth command arrives, on a loaded machine too.
            var configuration = RedisConfiguration(port: blackHole.port, commandTimeout: .seconds(20))
            configuration.connectingQueueLimit = 3
            try await withClient(configuration, waitForConnection: false) { client in
                let queued = (0..<3).map { _ in Task { try await client.ping() } }
                try await Task.sleep(for: .milliseconds(300))
                let started = ContinuousClock.now
                do {
                    try await client.ping()
                    Issue.record("a command beyond the queue limit was accepted")
                } catch let error as RedisClientError {
                    #expect(error == .notConnected, "\(error)")
                    #expect(error.description.contains("still connecting"), "\(error)")
                }
                #expect(ContinuousClock.now - started < .milliseconds(3000))
                client.close()
                for task in queued {
                    await #expect(throws: RedisClientError.connectionClosed) { try await task.value }
                }
            }
        }

        // MARK: - Timeouts

        @Test func slowCommandTimesOutButTheConnectionIsKeptWhileRepliesFlow() async throws {
            var configuration = sharedConfiguration()
            configuration.commandTimeout = .milliseconds(300)
            try await withClient(configuration) { client in
                let id = try await client.send("CLIENT", "ID")
                let (first, second) = (testKey(), testKey())
                let loop = client.loop
                // Sent back to back: the first reply (after 100 ms) arrives while the second command waits, so when
                // the second misses its deadline the connection has shown progress and is kept.
                let quick = Task(executorPreference: loop) { try await client.send("BLPOP", first, "0.1") }
                let slow = Task(executorPreference: loop) { try await client.send("BLPOP", second, "1") }
                #expect(try await quick.value == .null)
                let started = ContinuousClock.now
                await #expect(throws: RedisClientError.timeout) { try await slow.value }
                #expect(ContinuousClock.now - started < .milliseconds(3000))
                #expect(client.isConnected)
                // The late reply (BLPOP's nil, about 1.1 s after sending) is dropped; later replies still match.
                try await Task.sleep(for: .milliseconds(1000))
                let key = testKey()
                try await client.set(key, to: Array("after".utf8), expiresIn: 60)
                #expect(try await client.get(key) == Array("after".utf8))
                #expect(try await client.send("CLIENT", "ID") == id, "the connection was replaced")
                try await client.delete([key])
            }
        }

        @Test func pausedServerTimesTheCommandOutAtTheDeadline() async throws {
            let server = try PrivateRedis()
            defer { server.stop() }
            let configuration = RedisConfiguration(port: server.port, commandTimeout: .milliseconds(300))
            try await withClient(configuration) { client in
                try await withClient(RedisConfiguration(port: server.port)) { admin in
                    _ = try await admin.send("CLIENT", "PAUSE", "2000")
                    let started = ContinuousClock.now
                    do {
                        _ = try await client.get("paused")
                        Issue.record("GET during CLIENT PAUSE answered")
                    } catch let error as RedisClientError {
                        #expect(error == .timeout, "\(error)")
                    }
                    let elapsed = ContinuousClock.now - started
                    #expect(elapsed >= .milliseconds(250) && elapsed <= .milliseconds(2000), "timed out after \(elapsed)")
                    // Once the pause is over the client serves again (it dropped the silent connection and reconnected).
                    try await eventually(within: .seconds(5)) { try await client.ping() }
                }
            }
        }

        @Test func aCallersDeadlineEndsTheWaitBeforeTheCommandTimeout() async throws {
            let server = try PrivateRedis()
            defer { server.stop() }
            // Wide margins (a 5 s command timeout, a 4 s pause, a 300 ms budget): on a loaded 2-core machine, with the
            // whole suite starting at once, a task may wait a second or more to be resumed, and the property is only
            // that the budget, not the command timeout, ends the wait.
            let configuration = RedisConfiguration(port: server.port, commandTimeout: .seconds(5))
            try await withClient(configuration) { client in
                try await withClient(RedisConfiguration(port: server.port)) { admin in
                    _ = try await admin.send("CLIENT", "PAUSE", "4000")
                    let started = ContinuousClock.now
                    do {
                        _ = try await RedisTimeBudget.$current.withValue(RedisTimeBudget(limit: .milliseconds(300))) {
                            try await client.get("paused")
                        }
                        Issue.record("GET during CLIENT PAUSE answered")
                    } catch let error as RedisClientError {
                        #expect(error == .timeout, "\(error)")
                    }
                    let elapsed = ContinuousClock.now - started
                    // The caller's 300 ms, not the client's 5 s.
                    #expect(elapsed >= .milliseconds(250) && elapsed <= .milliseconds(2500), "timed out after \(elapsed)")
                    // The command stayed in the queue; its late reply is dropped and the connection keeps serving.
                    try await eventually(within: .seconds(10)) { try await client.ping() }
                    let key = testKey()
                    try await client.set(key, to: Array("after".utf8), expiresIn: 60)
                    #expect(try await client.get(key) == Array("after".utf8))
                }
            }
        }

        @Test func onlyTheWaitForRepliesCountsAgainstTheBudget() async throws {
            try await withClient { client in
                // Generous: on a loaded machine (the whole suite on two cores) a round trip's reply can wait seconds for
                // a thread to resume on; what must not count is the 4 s between the two.
                let budget = RedisTimeBudget(limit: .seconds(5))
                try await RedisTimeBudget.$current.withValue(budget) {
                    try await client.ping()
                    // Time spent elsewhere (a handler, decoding) is not Redis time.
                    try await Task.sleep(for: .seconds(4))
                    try await client.ping()
                }
                #expect(budget.spent > .zero && budget.spent < .milliseconds(3500), "spent \(budget.spent)")
            }
        }

        @Test func aSpentBudgetFailsWithoutSending() async throws {
            try await withClient { client in
                let key = testKey()
                do {
                    try await RedisTimeBudget.$current.withValue(RedisTimeBudget(limit: .zero)) {
                        try await client.set(key, to: Array("late".utf8), expiresIn: 60)
                    }
                    Issue.record("a command was sent after its caller's deadline")
                } catch let error as RedisClientError {
                    #expect(error == .timeout, "\(error)")
                }
                #expect(try await client.get(key) == nil, "the command must not have reached Redis")
            }
        }

        @Test func closeCompletesPendingCommands() async throws {
            let configuration = { () -> RedisConfiguration in
                var configuration = sharedConfiguration()
                configuration.commandTimeout = .seconds(10)
                return configuration
            }()
            try await withClient(configuration) { client in
                let key = testKey()
                let pending = (0..<5).map { _ in Task { try await client.send("BLPOP", key, "5") } }
                try await Task.sleep(for: .milliseconds(100))
                let started = ContinuousClock.now
                client.close()
                client.close()   // idempotent
                for task in pending {
                    do {
                        let reply = try await task.value
                        Issue.record("BLPOP survived close(): \(reply)")
                    } catch let error as RedisClientError {
                        #expect(error == .connectionClosed, "\(error)")
                    }
                }
                // At once, not when BLPOP's 5 s are up: 3 s of slack for a loaded machine (1.19 s seen in CI).
                #expect(ContinuousClock.now - started < .seconds(3))
                await #expect(throws: RedisClientError.connectionClosed) { try await client.ping() }
                #expect(!client.isConnected)
            }
        }

        // MARK: - Observability

        @Test func everyCommandIsReportedWithItsOutcome() async throws {
            let seen = Recorder()
            var configuration = sharedConfiguration()
            configuration.onCommand = { name, duration, outcome in
                precondition(duration >= .zero)
                seen.entries.withLock { $0.append((name, outcome)) }
            }
            try await withClient(configuration) { client in
                let key = testKey()
                _ = try await client.get(key)
                try await client.set(key, to: Array("x".utf8), expiresIn: 60)
                _ = try? await client.send("incr", key)
                try await client.delete([key])
            }
            let reports = seen.entries.withLock { $0 }.filter { $0.0 != "PING" }
            #expect(reports.map(\.0) == ["GET", "SET", "INCR", "DEL"])
            #expect(reports.map(\.1) == [.success, .success, .redisError, .success])
        }
    }
}

// Timing bounds: the deadline itself is exact (one timer per connection), but `make test` runs every suite in
// parallel on a 2-core machine, where a task can wait a second for a thread. Lower bounds are tight (a deadline must
// not fire early); upper bounds only prove "no hang". The precise "deadline + 100 ms" figure is measured under load
// by the chaos script, not here.

// MARK: - Helpers

private struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A key no other test uses.
private func testKey() -> String {
    "test:\(UUID().uuidString)"
}

/// The shared test server: REDIS_HOST / REDIS_PORT, default 127.0.0.1:6379.
private func sharedConfiguration() -> RedisConfiguration {
    let environment = ProcessInfo.processInfo.environment
    let host = environment["REDIS_HOST"] ?? "127.0.0.1"
    let port = environment["REDIS_PORT"].flatMap(Int.init) ?? 6379
    return RedisConfiguration(host: host, port: port)
}

private final class Recorder: Sendable {
    let entries = Mutex<[(String, RedisCommandOutcome)]>([])
}

private final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).oldValue }
}

private func withLoop<Result>(_ body: (EventLoop) async throws -> Result) async throws -> Result {
    let thread = try EventLoopThread(name: "redis-test")
    defer { thread.shutdown() }
    return try await body(thread.loop)
}

/// Runs `body` with a client on its own loop thread; closes both afterwards. Unless told otherwise, first waits
/// (up to 3 s) for the client to be ready and fails clearly when no Redis answers.
private func withClient<Result>(
    _ configuration: RedisConfiguration = sharedConfiguration(),
    waitForConnection: Bool = true,
    _ body: (RedisClient) async throws -> Result
) async throws -> Result {
    try await withLoop { loop in
        let client = RedisClient(configuration: configuration, loop: loop)
        defer { client.close() }
        if waitForConnection {
            let deadline = ContinuousClock.now + .seconds(3)
            while !client.isConnected {
                guard ContinuousClock.now < deadline else {
                    throw TestFailure("""
                        no Redis answered at \(configuration.redactedURL) within 3 s: start one \
                        (redis-server --port 6379 --save '' --appendonly no --daemonize yes) or set \
                        REDIS_HOST/REDIS_PORT
                        """)
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        return try await body(client)
    }
}

/// Retries `body` every 20 ms until it succeeds, failing with its last error after `timeout`.
private func eventually(within timeout: Duration, _ body: () async throws -> Void) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        do {
            try await body()
            return
        } catch {
            guard ContinuousClock.now < deadline else { throw error }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// A TCP listener on 127.0.0.1 that never accepts a connection.
private final class BlackHole: Sendable {
    let port: Int
    private let fd: Int32

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var address = loopbackAddress(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard bound == 0, named == 0, listen(fd, 16) == 0 else {
            closeSocket(fd)
            throw TestFailure("bind/listen failed")
        }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() {
        closeSocket(fd)
    }
}

private func closeSocket(_ fd: Int32) {
    _ = close(fd)
}
