import EvServer
import Foundation
import Testing
@testable import RedisSessionStore

// What MemorySessionStore does beyond the shared contract (SessionStoreContractTests runs that against it too).
@Suite struct MemorySessionStoreTests {
    @Test func readingAnExpiredEntryDropsIt() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        try await store.set("a", sampleSession(expiringIn: 10, now: clock.now()))
        clock.advance(10)
        #expect(try await store.get("a") == nil)   // expires <= now counts as expired, as express's MemoryStore
        #expect(store.storedCount == 0)
    }

    @Test func expiredEntriesAreSweptByLaterWrites() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        for index in 0..<10 { try await store.set("old\(index)", sampleSession(expiringIn: 1, now: clock.now())) }
        clock.advance(30)
        try await store.set("new1", sampleSession(expiringIn: 3600, now: clock.now()))
        #expect(store.storedCount == 11)   // sweeps run at most once a minute
        clock.advance(31)
        try await store.set("new2", sampleSession(expiringIn: 3600, now: clock.now()))
        #expect(store.storedCount == 2)
    }

    @Test func defaultTTLAppliesToBrowserSessionCookies() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(defaultTTL: 10, now: clock.closure)
        try await store.set("a", sampleSession(expiringIn: nil, now: clock.now()))
        clock.advance(9)
        #expect(try await store.get("a") != nil)
        try await store.touch("a", sampleSession(expiringIn: nil, now: clock.now()))
        clock.advance(9)
        #expect(try await store.get("a") != nil)   // the touch restarted the 10 s
        clock.advance(2)
        #expect(try await store.get("a") == nil)
    }

    @Test func touchOfAnExpiredSessionDoesNotReviveIt() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        try await store.set("a", sampleSession(expiringIn: 5, now: clock.now()))
        clock.advance(6)
        try await store.touch("a", sampleSession(expiringIn: 3600, now: clock.now()))
        #expect(try await store.get("a") == nil)
    }

    @Test func touchReplacesTheStoredCookieOnly() async throws {
        let clock = TestClock()
        let store = MemorySessionStore(now: clock.closure)
        let original = sampleSession(expiringIn: 60, now: clock.now())
        try await store.set("a", original)
        clock.advance(30)
        var touched = SessionData(values: ["other": "values are ignored"])
        touched.cookie.setMaxAge(60_000, now: clock.now())
        try await store.touch("a", touched)
        let loaded = try #require(try await store.get("a"))
        #expect(loaded.values == original.values)
        #expect(loaded.cookie == touched.cookie)
    }

    @Test func concurrentWritersAllLand() async throws {
        let store = MemorySessionStore()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<1000 {
                group.addTask { try await store.set("id\(index)", sampleSession(expiringIn: 60, now: Date())) }
            }
            try await group.waitForAll()
        }
        #expect(try await store.length() == 1000)
        #expect(try await store.all().count == 1000)
        try await store.clear()
        #expect(try await store.length() == 0)
    }
}
