import Foundation
import Testing
import EvServer
import RedisSessionStore

// `evserver sessions ...` run as a process against the test redis-server, each test under a prefix of its own:
// `count` agrees with a SCAN of 10,000 sessions, and `list --json`, `show`, `destroy` and `clear --yes` do what
// they say to the sessions under their prefix, and nothing to the others.

extension ScaleSuites {
    @Suite struct SessionsCommandTests {
        @Test func countAgreesWithAScanOfTenThousandSessions() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            let prefix = Self.uniquePrefix()
            let total = 10_000
            let started = ContinuousClock.now
            try await Self.createSessions(total, prefix: prefix, client: redis.client)
            let created = ContinuousClock.now - started
            do {
                let scanned = try await Self.scanCount(prefix: prefix, client: redis.client)
                #expect(scanned == total)

                let count = try await Self.sessions(["count"], prefix: prefix)
                #expect(count.status == .exited(0), "\(count.error)")
                #expect(count.output == "\(total)\n")
                let json = try await Self.sessions(["count", "--json"], prefix: prefix)
                #expect(try JSONValue(parsing: json.output)["count"]?.intValue == total)
                // A small SCAN COUNT walks the keyspace in many more steps and must still count each key once.
                let stepwise = try await Self.sessions(["count", "--scan-count", "7"], prefix: prefix)
                #expect(stepwise.output == "\(total)\n")
                let said = count.output.trimmingCharacters(in: .whitespacesAndNewlines)
                print("SessionsCommandTests: \(total) sessions created (pipelined SET) in \(created); SCAN counts "
                    + "\(scanned), `evserver sessions count` says \(said)")
            } catch {
                _ = try? await Self.sessions(["clear", "--yes"], prefix: prefix)
                throw error
            }
            let clear = try await Self.sessions(["clear", "--yes"], prefix: prefix)
            #expect(clear.output == "cleared \(total) sessions\n")
            #expect(try await Self.scanCount(prefix: prefix, client: redis.client) == 0)
        }

        @Test func listJSONShowsEveryIdWithItsTTL() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let ids = try await Self.createSessions(3, prefix: prefix, client: redis.client, ttl: 600)
                let list = try await Self.sessions(["list", "--json"], prefix: prefix)
                #expect(list.status == .exited(0), "\(list.error)")
                let entries = try #require(try JSONValue(parsing: list.output).arrayValue)
                #expect(Set(entries.compactMap { $0["id"]?.stringValue }) == Set(ids))
                for entry in entries {
                    #expect((590...600).contains(entry["ttl"]?.intValue ?? -1), "\(entry)")
                }
                let limited = try await Self.sessions(["list", "--json", "--limit", "2"], prefix: prefix)
                #expect(try JSONValue(parsing: limited.output).arrayValue?.count == 2)
                let text = try await Self.sessions(["list"], prefix: prefix).output.split(separator: "\n")
                #expect(text.first == "ID\tTTL")
                #expect(text.count == 4)
            }
        }

        @Test func showPrintsTheStoredJSONAndTTL() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let id = try #require(try await Self.createSessions(1, prefix: prefix, client: redis.client, ttl: 600).first)
                let shown = try await Self.sessions(["show", "--json", "--", id], prefix: prefix)
                #expect(shown.status == .exited(0), "\(shown.error)")
                let json = try JSONValue(parsing: shown.output)
                #expect(json["id"]?.stringValue == id)
                #expect((590...600).contains(json["ttl"]?.intValue ?? -1))
                #expect(json["session"]?["userName"] == "Aditya@123")
                #expect(json["session"]?["cookie"]?["path"] == "/")

                let text = try await Self.sessions(["show", "--", id], prefix: prefix)
                #expect(text.output.contains("key:     \(prefix)\(id)"))
                #expect(text.output.contains(#""userName":"Aditya@123""#))

                let missing = try await Self.sessions(["show", "no-such-session"], prefix: prefix)
                #expect(missing.status != .exited(0))
                #expect(missing.error.contains("no session no-such-session"))
            }
        }

        /// `show` and `destroy` take the cookie's value as a browser shows it, signed; with a secret the signature
        /// must match.
        @Test func showAndDestroyTakeTheCookieValue() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let id = try #require(try await Self.createSessions(1, prefix: prefix, client: redis.client, ttl: 600).first)
                let cookie = try CookieSigner(secrets: ["right secret"]).cookieValue(for: id)   // s%3A<id>.<sig>
                #expect(cookie.hasPrefix("s%3A"))
                let shown = try await Self.sessions(["show", "--json", "--", cookie], prefix: prefix)
                #expect(shown.status == .exited(0), "\(shown.error)")
                #expect(try JSONValue(parsing: shown.output)["id"]?.stringValue == id)
                let wrong = try await Self.sessions(["show", "--secret", "wrong secret", "--", cookie], prefix: prefix)
                #expect(wrong.status != .exited(0))
                #expect(wrong.error.contains("signature does not match"))
                let destroyed = try await Self.sessions(["destroy", "--secret", "right secret", "--", cookie],
                                                        prefix: prefix)
                #expect(destroyed.output == "destroyed \(id)\n", "\(destroyed.error)")
                #expect(try await redis.client.get(prefix + id) == nil)
            }
        }

        @Test func destroyDeletesOneSession() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let ids = try await Self.createSessions(2, prefix: prefix, client: redis.client)
                let destroyed = try await Self.sessions(["destroy", "--", ids[0]], prefix: prefix)
                #expect(destroyed.status == .exited(0))
                #expect(destroyed.output == "destroyed \(ids[0])\n")
                #expect(try await redis.client.get(prefix + ids[0]) == nil)
                #expect(try await redis.client.get(prefix + ids[1]) != nil)
                let again = try await Self.sessions(["destroy", "--", ids[0]], prefix: prefix)
                #expect(again.status == .exited(1), "destroying a session that is gone is a failure, as show's is")
                #expect(again.output.isEmpty)
                #expect(again.error == "Error: no session \(ids[0])\n")
                let json = try await Self.sessions(["destroy", "--json", "--", ids[1]], prefix: prefix)
                #expect(try JSONValue(parsing: json.output)["destroyed"]?.intValue == 1)
            }
        }

        /// Ids are base64url: one in 64 starts with '-' (CI once drew `-tNKV...`, which read as options). After `--`
        /// such an id is an id, even `-h...` (help) and `--...` (a long option); without it, nothing is lost.
        @Test func idsThatStartWithADashAreReachedAfterDoubleDash() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let ids = ["-h" + SessionID.generate().dropFirst(2), "--" + SessionID.generate().dropFirst(2)]
                try await Self.createSessions(2, prefix: prefix, client: redis.client, ttl: 600, ids: ids)
                for id in ids {
                    _ = try await Self.sessions(["destroy", id], prefix: prefix)
                    #expect(try await redis.client.get(prefix + id) != nil, "\(id) was destroyed as something else")

                    let shown = try await Self.sessions(["show", "--json", "--", id], prefix: prefix)
                    #expect(shown.status == .exited(0), "\(shown.error)")
                    #expect(try JSONValue(parsing: shown.output)["id"]?.stringValue == id)
                    let destroyed = try await Self.sessions(["destroy", "--", id], prefix: prefix)
                    #expect(destroyed.output == "destroyed \(id)\n", "\(destroyed.error)")
                    #expect(try await redis.client.get(prefix + id) == nil)
                }
            }
        }

        @Test func clearNeedsYesAndClearsOnlyItsPrefix() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { other in
                let bystanders = try await Self.createSessions(3, prefix: other, client: redis.client)
                try await Self.withPrefix(redis.client) { prefix in
                    try await Self.createSessions(25, prefix: prefix, client: redis.client)
                    let refused = try await Self.sessions(["clear"], prefix: prefix)
                    #expect(refused.status == .exited(2))
                    #expect(refused.error.contains("--yes"))
                    #expect(try await Self.scanCount(prefix: prefix, client: redis.client) == 25)

                    let cleared = try await Self.sessions(["clear", "--yes"], prefix: prefix)
                    #expect(cleared.status == .exited(0))
                    #expect(cleared.output == "cleared 25 sessions\n")
                    #expect(try await Self.scanCount(prefix: prefix, client: redis.client) == 0)
                }
                for id in bystanders { #expect(try await redis.client.get(other + id) != nil) }
            }
        }

        @Test func unreachableRedisFailsWithAClearError() async throws {
            let port = try TestRedis.unusedPort()
            let executable = try EvServerExecutable.path()
            let result = try await onThread {
                try ChildProcess.run(executable, ["sessions", "count", "--redis-url", "redis://127.0.0.1:\(port)/0"],
                                     environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(30))
            }
            #expect(result.status == .exited(1))
            // (could not connect, or a deadline missed on a loaded machine: either way one line naming Redis)
            #expect(result.error.hasPrefix("Error: redis: "), "\(result.error)")
            #expect(result.error.split(separator: "\n").count == 1, "the client's log lines came too: \(result.error)")
            #expect(!result.error.contains("back-off"), "\(result.error)")
            #expect(result.output.isEmpty)
        }

        /// `list` prints its header once Redis has answered: a failed listing prints nothing on stdout.
        @Test func aFailedListPrintsNothingOnStdout() async throws {
            let port = try TestRedis.unusedPort()
            let executable = try EvServerExecutable.path()
            let result = try await onThread {
                try ChildProcess.run(executable, ["sessions", "list", "--redis-url", "redis://127.0.0.1:\(port)/0"],
                                     environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(30))
            }
            #expect(result.status == .exited(1), "\(result.error)")
            #expect(result.output.isEmpty, "stdout: \(result.output)")
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let empty = try await Self.sessions(["list"], prefix: prefix)
                #expect(empty.status == .exited(0), "\(empty.error)")
                #expect(empty.output == "ID\tTTL\n", "a listing that worked has its header, even with no session")
            }
        }

        /// One exit status convention for every subcommand: 0 done, 1 failure (no such session), 2 usage (unknown
        /// flag, bad value, missing argument), with the flag and the value named.
        @Test func exitStatusesFollowOneConvention() async throws {
            let redis = try await TestRedis.connect()
            defer { redis.close() }
            try await Self.withPrefix(redis.client) { prefix in
                let cases: [(arguments: [String], status: Int32, error: String)] = [
                    (["count"], 0, ""),
                    (["show", "--", "no-such-id"], 1, "Error: no session no-such-id"),
                    (["destroy", "--", "no-such-id"], 1, "Error: no session no-such-id"),
                    (["show"], 2, "Missing expected argument"),
                    (["list", "--limit", "0"], 2, "--limit: '0' is not a positive integer"),
                    (["list", "--limit", "abc"], 2, "'abc' is invalid for '--limit"),
                    (["count", "--scan-count", "-5"], 2, "--scan-count: '-5' is not a positive integer"),
                    (["count", "--redis-timeout", "-5"], 2, "--redis-timeout: '-5' is not an integer in 1...600000"),
                    (["count", "--threads", "2"], 2, "Unknown option '--threads'"),
                    (["count", "--secret", "s"], 2, "Unknown option '--secret'"),
                    (["count", "--store", "memory"], 2, "--store memory: evserver sessions inspects sessions in Redis"),
                    (["count", "--no-such-flag"], 2, "Unknown option '--no-such-flag'"),
                ]
                for (arguments, status, error) in cases {
                    let result = try await Self.sessions(arguments, prefix: prefix)
                    #expect(result.status == .exited(status), "\(arguments): \(result.error)")
                    #expect(error.isEmpty || result.error.contains(error), "\(arguments): \(result.error)")
                    if status != 0 { #expect(result.output.isEmpty, "\(arguments) printed \(result.output)") }
                }
            }
            // SESSION_STORE=memory in the environment is refused too, instead of inspecting the default Redis.
            let executable = try EvServerExecutable.path()
            let environment = ChildProcess.environmentWithoutEvServerSettings.merging(["SESSION_STORE": "memory"]) { $1 }
            let memory = try await onThread {
                try ChildProcess.run(executable, ["sessions", "count", "--redis-url", TestRedis.url],
                                     environment: environment, timeout: .seconds(30))
            }
            #expect(memory.status == .exited(2), "\(memory.error)")
            #expect(memory.error.contains("SESSION_STORE memory"), "\(memory.error)")
        }

        /// `sessions <subcommand> --help` lists what the subcommand uses: the Redis flags and the prefix (and the
        /// secret for show and destroy), none of the server's.
        @Test func helpListsOnlyTheOptionsASubcommandUses() async throws {
            let executable = try EvServerExecutable.path()
            let server = ["--threads", "--store", "--cookie-name", "--max-age", "--host", "--port ", "--rolling",
                          "--instance", "--max-body", "--redis-wait-replicas"]
            for subcommand in ["list", "show", "count", "destroy", "clear"] {
                let help = try await onThread {
                    try ChildProcess.run(executable, ["sessions", subcommand, "--help"],
                                         environment: ChildProcess.environmentWithoutEvServerSettings,
                                         timeout: .seconds(30))
                }
                #expect(help.status == .exited(0))
                for flag in ["--redis-url", "--redis-cluster", "--redis-sentinel", "--redis-tls-ca", "--prefix"] {
                    #expect(help.output.contains(flag), "\(subcommand) --help lacks \(flag)")
                }
                for flag in server { #expect(!help.output.contains(flag), "\(subcommand) --help lists \(flag)") }
                let takesOneSession = subcommand == "show" || subcommand == "destroy"
                #expect(help.output.contains("--secret") == takesOneSession, "\(subcommand) --help and --secret")
                #expect(help.output.contains("--scan-count") == !takesOneSession, "\(subcommand) --help and --scan-count")
            }
            // The server's help still lists the server's flags, and a server flag before `sessions` says where it goes.
            let serverHelp = try await onThread {
                try ChildProcess.run(executable, ["--help"], environment: ChildProcess.environmentWithoutEvServerSettings,
                                     timeout: .seconds(30))
            }
            for flag in server + ["--redis-url", "--secret"] {
                #expect(serverHelp.output.contains(flag), "evserver --help lacks \(flag)")
            }
            let misplaced = try await onThread {
                try ChildProcess.run(executable, ["--redis-url", TestRedis.url, "sessions", "count"],
                                     environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(30))
            }
            #expect(misplaced.status == .exited(2))
            #expect(misplaced.error.contains("go after it: evserver sessions <subcommand> [flags]"), "\(misplaced.error)")
        }

        /// An empty prefix would make the SCAN pattern `*`: `clear` would delete every key in the database. The
        /// command checks the prefix as the server does, before it touches Redis.
        @Test func clearRefusesAPrefixThatWouldMatchOtherKeys() async throws {
            let bystander = "test:\(UUID().uuidString.prefix(8)):not-a-session"
            try await TestRedis.client.set(bystander, to: Array("keep".utf8), expiresIn: 60)
            for prefix in ["", "sess*", "a b"] {
                let result = try await Self.sessions(["clear", "--yes"], prefix: prefix)
                #expect(result.status != .exited(0), "prefix '\(prefix)' was accepted")
                #expect(result.error.contains("is not a usable key prefix"), "\(result.error)")
            }
            #expect(try await TestRedis.client.get(bystander) == Array("keep".utf8), "a key outside the prefix was deleted")
            _ = try await TestRedis.client.delete([bystander])
        }

        // MARK: - Helpers

        static func uniquePrefix() -> String { "test:\(UUID().uuidString.prefix(8)):sess:" }

        /// Runs `evserver sessions <subcommand> --redis-url <test redis> --prefix <prefix> <rest of arguments>` and waits for it on a thread
        /// of its own (not on one of the concurrency pool's few threads).
        static func sessions(_ arguments: [String], prefix: String) async throws
            -> (status: ExitStatus, output: String, error: String)
        {
            let executable = try EvServerExecutable.path()
            return try await onThread {
                // The settings right after the subcommand: `arguments` may end with `-- <id>`.
                let settings = ["--redis-url", TestRedis.url, "--prefix", prefix]
                return try ChildProcess.run(executable,
                                     ["sessions"] + arguments.prefix(1) + settings + arguments.dropFirst(),
                                     environment: ChildProcess.environmentWithoutEvServerSettings, timeout: .seconds(60))
            }
        }

        /// Runs `body` with a fresh prefix and deletes every key under it afterwards, also when `body` throws.
        static func withPrefix(_ client: RedisClient, _ body: (String) async throws -> Void) async throws {
            let prefix = uniquePrefix()
            do {
                try await body(prefix)
            } catch {
                try? await deleteAll(prefix: prefix, client: client)
                throw error
            }
            try await deleteAll(prefix: prefix, client: client)
        }

        /// Deletes every key under `prefix` (SCAN + DEL).
        static func deleteAll(prefix: String, client: RedisClient) async throws {
            var cursor = "0"
            repeat {
                let page = try await client.scan(cursor: cursor, match: prefix + "*", count: 1000)
                if !page.keys.isEmpty { _ = try await client.delete(page.keys) }
                cursor = page.cursor
            } while cursor != "0"
        }

        /// Stores `count` express-session values under `prefix`, pipelined: up to 1,000 SETs in flight on one
        /// connection. Returns the ids (`given`, else new ones).
        @discardableResult
        static func createSessions(_ count: Int, prefix: String, client: RedisClient, ttl: Int = 3600,
                                   ids given: [String]? = nil) async throws -> [String]
        {
            let ids = given ?? (0..<count).map { _ in SessionID.generate() }
            let value = Array((#"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/","#
                + #""sameSite":"lax"},"userName":"Aditya@123"}"#).utf8)
            for batch in stride(from: 0, to: count, by: 1000) {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for id in ids[batch..<min(batch + 1000, count)] {
                        group.addTask { try await client.set(prefix + id, to: value, expiresIn: ttl) }
                    }
                    try await group.waitForAll()
                }
            }
            return ids
        }

        /// Keys under `prefix`, counted with SCAN.
        static func scanCount(prefix: String, client: RedisClient) async throws -> Int {
            try await countKeys(client, matching: prefix + "*")
        }
    }
}
