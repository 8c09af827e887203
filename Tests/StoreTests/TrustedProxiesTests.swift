import EvServer
import Testing

@Suite struct TrustedProxiesTests {
    @Test func listsMatchAddressesAndRanges() throws {
        let proxies = try TrustedProxies(parsing: "10.0.0.0/8, 127.0.0.1, ::1, fd00::/8")
        #expect(proxies.trusts("10.1.2.3"))
        #expect(proxies.trusts("127.0.0.1"))
        #expect(!proxies.trusts("127.0.0.2"))
        #expect(!proxies.trusts("11.0.0.1"))
        #expect(proxies.trusts("::1"))
        #expect(proxies.trusts("fd12:3456::7"))
        #expect(!proxies.trusts("fe80::1"))
        #expect(!proxies.trusts("garbage"))
        #expect(!proxies.trusts(""))
    }

    @Test func booleansAndEmpty() throws {
        #expect(try TrustedProxies(parsing: "true") == .all)
        #expect(try TrustedProxies(parsing: "false") == .none)
        #expect(TrustedProxies.all.trusts("203.0.113.9"))
        #expect(!TrustedProxies.none.trusts("127.0.0.1"))
    }

    @Test(arguments: ["10.0.0.0/33", "300.1.1.1", "1.2.3", "::1/129", "1::2::3", "proxy.example", "10.0.0.0/x"])
    func badEntriesAreRejected(_ entry: String) {
        #expect(throws: TrustedProxiesError.self) { try TrustedProxies(parsing: entry) }
    }

    @Test func forwardedForIsOnlyBelievedFromATrustedPeer() throws {
        let proxies = try TrustedProxies(parsing: "127.0.0.1")
        let viaProxy = Request(method: .get, uri: "/", headers: ["X-Forwarded-For": "198.51.100.7, 127.0.0.1"],
                               remoteAddress: "127.0.0.1")
        #expect(viaProxy.clientAddress(trusting: proxies) == "198.51.100.7")
        let direct = Request(method: .get, uri: "/", headers: ["X-Forwarded-For": "198.51.100.7"],
                             remoteAddress: "203.0.113.5")
        #expect(direct.clientAddress(trusting: proxies) == "203.0.113.5")
    }
}
