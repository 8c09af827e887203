import EvServer
import Foundation
import Testing
@testable import EvServerApp
@testable import RedisSessionStore

/// The demo's user routes (POST /signin, GET /devices, POST /signout-everywhere, POST /signout) through three
/// evserver instances sharing one Redis prefix.
@Suite struct DemoUserRoutesTests {
    @Test func twoDevicesSeeEachOtherAndOneLogsTheOtherOut() async throws {
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        let apps = try (1...3).map { try DemoServer(prefix: prefix, instance: "app\($0)") }
        do {
            try await twoDevices(apps)
        } catch {
            for app in apps { await app.stop() }
            throw error
        }
        for app in apps { await app.stop() }
    }

    private func twoDevices(_ apps: [DemoServer]) async throws {
        let user = freshUser()
        let json = ["Content-Type": "application/json", "User-Agent": "curl/8.5.0"] as KeyValuePairs
        let phone = try apps[0].client()
        let laptop = try apps[1].client()
        for device in [phone, laptop] {
            let signIn = try device.freshRequest("POST", "/signin", headers: json, body: #"{"user":"\#(user)"}"#)
            #expect(signIn.status == 200)
        }
        // Through a third instance: both devices, one current, handles and no ids.
        let listed = try JSONValue(parsing: try laptop.through(apps[2].server.port).request("GET", "/devices").body)
        #expect(listed["user"]?.stringValue == user)
        let devices = try #require(listed["devices"]?.arrayValue, "no devices: \(listed)")
        #expect(devices.count == 2)
        #expect(devices.filter { $0["current"] == .bool(true) }.count == 1)
        #expect(devices.allSatisfy { $0["id"] == nil && $0["handle"]?.stringValue?.count == 16 })
        #expect(devices.allSatisfy { $0["client"]?["agent"] == "curl" && $0["client"]?["ip"] == "127.0.0.1" })
        #expect(!listed.description.contains(try #require(phone.sessionID)))

        // The phone logs the others out: the laptop is a guest on its next request, on every instance.
        let ended = try JSONValue(parsing: try phone.freshRequest("POST", "/signout-everywhere").body)
        #expect(ended["ended"]?.intValue == 1)
        for app in apps {
            #expect(try laptop.through(app.server.port).request("GET", "/devices").status == 401)
            let session = try JSONValue(parsing: try laptop.through(app.server.port).request("GET", "/session").body)
            #expect(session["data"]?["evserverUser"] == nil)
        }
        let mine = try JSONValue(parsing: try phone.freshRequest("GET", "/devices").body)
        #expect(mine["devices"]?[0]?["current"] == .bool(true))
        // Sign out: a guest again, and the list is empty.
        #expect(try phone.freshRequest("POST", "/signout").status == 200)
        #expect(try phone.freshRequest("GET", "/devices").status == 401)
        #expect(try await (apps[0].demo.store as? RedisSessionStore)?.sessions(ofUser: user).isEmpty == true)
    }

    @Test func maxSessionsPerUserEndsTheOldestOnSignIn() async throws {
        try await withDemo(["--max-sessions-per-user", "2"]) { app in
            let user = freshUser()
            let devices = try (0..<3).map { _ in try app.client() }
            for device in devices {
                let signIn = try device.freshRequest("POST", "/signin", headers: ["Content-Type": "application/json"],
                                                body: #"{"user":"\#(user)"}"#)
                #expect(signIn.status == 200)
            }
            let statuses = try devices.map { try $0.freshRequest("GET", "/devices").status }
            #expect(statuses == [401, 200, 200], "the oldest must have been ended")
        }
        for bad in ["0", "-1", "x", "100001"] {
            #expect(throws: (any Error).self, "--max-sessions-per-user \(bad)") {
                try ServerOptions.parse(["--secret", "s", "--max-sessions-per-user", bad]).resolve(environment: [:])
            }
        }
        let fromEnvironment = try ServerOptions.parse(["--secret", "s"])
            .resolve(environment: ["SESSION_MAX_PER_USER": "3"])
        #expect(fromEnvironment.maxSessionsPerUser == 3)
        #expect(try ServerOptions.parse(["--secret", "s"]).resolve(environment: [:]).maxSessionsPerUser == nil)
    }

    /// A signed-in session past --absolute-timeout is destroyed by its next request, and leaves the index with it.
    @Test func anAbsoluteTimeoutEndsASignedInSessionAndItsIndexEntry() async throws {
        try await withDemo(["--absolute-timeout", "1"]) { app in
            let user = freshUser()
            let device = try app.client()
            let signIn = try device.freshRequest("POST", "/signin", headers: ["Content-Type": "application/json"],
                                                 body: #"{"user":"\#(user)"}"#)
            #expect(signIn.status == 200)
            let store = try #require(app.demo.store as? RedisSessionStore)
            #expect(try await store.indexedIds(ofUser: user).count == 1)
            try await Task.sleep(for: .milliseconds(1100))
            #expect(try device.freshRequest("GET", "/devices").status == 401)
            #expect(try await store.indexedIds(ofUser: user).isEmpty)
        }
    }

    @Test func badSignInBodiesAre400AndGuestsGet401() async throws {
        try await withDemo { app in
            let client = try app.client()
            let json = ["Content-Type": "application/json"] as KeyValuePairs
            for body in ["not json", "[]", #"{"user":5}"#, #"{"user":""}"#, #"{"user":"a\u0000b"}"#,
                         #"{"user":"\#(String(repeating: "x", count: 300))"}"#] {
                let response = try client.freshRequest("POST", "/signin", headers: json, body: body)
                #expect(response.status == 400, "\(body.prefix(20)): \(response.status) \(response.text)")
            }
            #expect(try client.freshRequest("GET", "/devices").status == 401)
            #expect(try client.freshRequest("POST", "/signout-everywhere").status == 401)
            let page = try client.freshRequest("GET", "/demo")
            #expect(page.text.contains(#"id="devices""#) && page.text.contains("log out the others"))
        }
    }
}
