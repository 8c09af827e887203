import Foundation
import Testing
import EvServer
@testable import RedisSessionStore

// `evserver sessions list --user` and `destroy --user [--except]`, run as processes against the sessions of
// three devices signed in through the library, under a prefix of their own.

extension ScaleSuites {
    @Suite struct SessionsUserCommandTests {
        @Test func listAndDestroyAUsersSessions() async throws {
            let prefix = SessionsCommandTests.uniquePrefix()
            let instance = try UsersTestServer(store: try RedisSessionStore(url: TestRedis.url, prefix: prefix))
            do {
                try await run(instance, prefix: prefix)
            } catch {
                await instance.stop()
                throw error
            }
            await instance.stop()
            try await SessionsCommandTests.deleteAll(prefix: prefix, client: TestRedis.client)
        }

        private func run(_ instance: UsersTestServer, prefix: String) async throws {
            func sessions(_ arguments: [String]) async throws -> (status: ExitStatus, output: String, error: String) {
                try await SessionsCommandTests.sessions(arguments, prefix: prefix)
            }
            let user = freshUser()
            var devices: [TestHTTPClient] = []
            for _ in 0..<3 {
                let device = try instance.client()
                #expect(try device.freshRequest("POST", "/signin/\(user)").status == 200)
                devices.append(device)
            }
            let ids = devices.compactMap(\.sessionID)

            let listed = try await sessions(["list", "--user", user, "--json"])
            #expect(listed.status == .exited(0), "\(listed.error)")
            let entries = try #require(try JSONValue(parsing: listed.output).arrayValue)
            #expect(Set(entries.compactMap { $0["id"]?.stringValue }) == Set(ids))
            #expect(entries.allSatisfy { $0["user"]?.stringValue == user && $0["signedInAt"]?.intValue != nil })
            let text = try await sessions(["list", "--user", user]).output.split(separator: "\n")
            #expect(text.first == "ID\tSIGNED_IN\tLAST_ACTIVE\tEXPIRES\tCLIENT" && text.count == 4, "\(text)")
            let nobody = try await sessions(["list", "--user", freshUser("nobody")])
            #expect(nobody.status == .exited(0) && nobody.output == "ID\tSIGNED_IN\tLAST_ACTIVE\tEXPIRES\tCLIENT\n")

            // Keep device 0 (given as its cookie value, signature checked): the other two are guests.
            let cookie = try #require(devices[0].cookieJar["connect.sid"])
            let others = try await sessions(["destroy", "--user", user, "--except", cookie, "--secret", "test secret"])
            #expect(others.status == .exited(0), "\(others.error)")
            #expect(others.output == "destroyed 2 sessions of \(user.debugDescription)\n")
            #expect(try devices.map { try $0.user() } == [user, nil, nil])
            let forged = try await sessions(["destroy", "--user", user, "--except", cookie, "--secret", "other"])
            #expect(forged.status == .exited(1), "a cookie signed with another secret must be refused")
            #expect(try devices[0].user() == user)

            let all = try await sessions(["destroy", "--user", user, "--json"])
            #expect(all.status == .exited(0))
            #expect(try JSONValue(parsing: all.output)["destroyed"]?.intValue == 1)
            #expect(try devices[0].user() == nil)
            #expect(try await instance.store.sessions(ofUser: user).isEmpty)
            let again = try await sessions(["destroy", "--user", user])
            #expect(again.status == .exited(1) && again.error.contains("no sessions of user"), "\(again.error)")

            // Usage errors: exit status 2.
            for arguments in [["destroy", "--user", user, "--", ids[0]], ["destroy", "--except", ids[0]],
                              ["destroy"], ["list", "--user", ""], ["destroy", "--user", "a\u{1}b"]] {
                let refused = try await sessions(arguments)
                #expect(refused.status == .exited(2), "\(arguments): \(refused.status) \(refused.error)")
                #expect(refused.output.isEmpty)
            }
        }
    }
}
