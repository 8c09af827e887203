import Foundation
import Synchronization
import Testing
import EvServer
import RedisSessionStore

// Redis over TLS, for real: private redis-servers with a TLS port only (`--tls-port P --port 0`), presenting
// certificates of TestCertificates (a good one, one of an unknown CA, an expired one, one for another name), and
// clients configured as an operator would (`rediss://` plus a CA file). Each failure must come quickly, without a
// crash or a hang, naming its reason; a server that comes back with a good certificate is reached again by the same
// client. The harness checks its own servers with `redis-cli --tls`, never through the code under test.

@Suite(.serialized) struct RedisTLSTests {
    // MARK: - The harness itself

    @Test func testCertificatesVerifyAsIntendedAndTLSServersAnswerRedisCLI() async throws {
        let certificates = try TestCertificates.shared()
        for pair in [certificates.server, certificates.client, certificates.wrongName] {
            let verdict = try certificates.verify(pair.certificate, caFile: certificates.caFile)
            #expect(verdict.ok, "\(verdict.output)")
        }
        let expired = try certificates.verify(certificates.expired.certificate, caFile: certificates.caFile)
        #expect(!expired.ok && expired.output.contains("certificate has expired"), "\(expired.output)")
        let unknown = try certificates.verify(certificates.unknownCA.certificate, caFile: certificates.caFile)
        #expect(!unknown.ok, "\(unknown.output)")
        let other = try certificates.verify(certificates.unknownCA.certificate, caFile: certificates.otherCAFile)
        #expect(other.ok, "\(other.output)")

        let good = try await tlsRedis(certificates.server)
        defer { good.stop() }
        #expect(try RedisCLI.run(port: good.port, certificates: certificates, ["PING"]) == "PONG\n")
        // Nothing answers plain text there.
        #expect(!redisAnswers(port: good.port))

        let untrusted = try await tlsRedis(certificates.unknownCA)
        defer { untrusted.stop() }
        #expect(throws: HarnessFailure.self) { try RedisCLI.run(port: untrusted.port, certificates: certificates, ["PING"]) }
        #expect(try RedisCLI.run(port: untrusted.port, certificates: certificates, insecure: true, ["PING"]) == "PONG\n")

        let mutual = try await tlsRedis(certificates.server, authClients: true)
        defer { mutual.stop() }
        #expect(try RedisCLI.run(port: mutual.port, certificates: certificates, ["PING"]) == "PONG\n")
        let cli = try #require(ChildProcess.find("redis-cli"))
        let anonymous = try ChildProcess.run(cli, ["-p", "\(mutual.port)", "--tls", "--cacert", certificates.caFile,
                                                   "PING"], timeout: .seconds(10))
        #expect(!anonymous.output.hasPrefix("PONG"), "a client without a certificate was served")
    }

    // MARK: - Sessions over TLS

    @Test func seedFlowStoresTheSessionInTheTLSRedis() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.server)
        defer { redis.stop() }
        let configuration = try rediss(port: redis.port, caFile: certificates.caFile)
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        let store = RedisSessionStore(configuration: configuration, prefix: prefix)

        try await withServer(try sessionApp(store: store)) { server in
            let client = try TestHTTPClient(port: server.port)
            let visit = try client.request("GET", "/")
            #expect(visit.status == 200, "\(visit.text)")
            let cookie = try #require(client.cookieJar["connect.sid"], "no session cookie: \(visit.text)")
            let id = try #require(DemoServer.sessionID(fromCookie: cookie))
            #expect(try client.request("GET", "/login").text == "Welcome Aditya@123")

            // In the TLS server, seen through a TLS client of the code under test and through redis-cli.
            let direct = RedisClient(configuration: configuration, loop: TLSTestLoop.thread.loop)
            defer { direct.close() }
            let stored = try await direct.get(prefix + id).map { String(decoding: $0, as: UTF8.self) }
            #expect(stored?.contains(#""userName":"Aditya@123""#) == true, "\(stored ?? "nil")")
            let seen = try RedisCLI.run(port: redis.port, certificates: certificates, ["GET", prefix + id])
            #expect(seen.contains("Aditya@123"), "\(seen)")
        }
    }

    @Test func regenerateDestroyAndWriteThenReadWorkOverTLS() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.server)
        defer { redis.stop() }
        let configuration = try rediss(port: redis.port, caFile: certificates.caFile)
        let prefix = "test:\(UUID().uuidString.prefix(8)):sess:"
        let store = RedisSessionStore(configuration: configuration, prefix: prefix)
        func stored(_ id: String) throws -> String {
            try RedisCLI.run(port: redis.port, certificates: certificates, ["GET", prefix + id])
        }

        try await withServer(try sessionApp(store: store)) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/").status == 200)
            let first = try #require(client.cookieJar["connect.sid"].flatMap(DemoServer.sessionID(fromCookie:)))

            // Regenerate: a new id, the old key gone, the new one stored.
            let regenerated = try client.request("GET", "/regenerate")
            #expect(regenerated.status == 200, "\(regenerated.text)")
            let second = try #require(client.cookieJar["connect.sid"].flatMap(DemoServer.sessionID(fromCookie:)))
            #expect(second != first)
            #expect(try stored(first).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            #expect(try stored(second).contains("regenerated"))
            #expect(try client.request("GET", "/login").text == "Welcome regenerated")

            // Destroy: the key is gone, the next visit is a guest.
            let destroyed = try client.request("GET", "/logout")
            #expect(destroyed.status == 200, "\(destroyed.text)")
            #expect(try stored(second).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            #expect(try client.request("GET", "/login").text == "Welcome guest")
        }

        // The store directly: write, read back, touch, destroy.
        let id = SessionID.generate()
        var data = SessionData()
        data.values = ["color": "blue", "n": 42]
        try await store.set(id, data)
        let read = try #require(try await store.get(id), "a session written over TLS did not read back")
        #expect(read.values["color"] == "blue")
        #expect(read.values["n"] == 42)
        try await store.touch(id, read)
        #expect(try await store.timeToLive(id).map { $0 > 0 } == true)
        #expect(try await store.length() == 1)
        try await store.destroy(id)
        #expect(try await store.get(id) == nil)
    }

    // MARK: - Mutual TLS

    @Test func mutualTLSServesAClientWithACertificateAndRefusesOneWithoutQuickly() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.server, authClients: true)
        defer { redis.stop() }

        var withCertificate = try rediss(port: redis.port, caFile: certificates.caFile)
        withCertificate.tls?.certificateFile = certificates.client.certificate
        withCertificate.tls?.keyFile = certificates.client.key
        let client = RedisClient(configuration: withCertificate, loop: TLSTestLoop.thread.loop)
        defer { client.close() }
        let key = "test:tls:mutual:\(UUID())"
        try await client.set(key, to: Array("with a certificate".utf8), expiresIn: 60)
        #expect(try await client.get(key) == Array("with a certificate".utf8))

        let anonymous = RedisClient(configuration: try rediss(port: redis.port, caFile: certificates.caFile),
                                    loop: TLSTestLoop.thread.loop)
        defer { anonymous.close() }
        let failure = try await expectFailure(of: anonymous, within: .seconds(1) + .milliseconds(1500))
        print("RedisTLSTests: without a client certificate: \(failure.error) after \(failure.took)")
        #expect(failure.error.description.contains("certificate"), "\(failure.error)")
    }

    // MARK: - Failures

    enum Mismatch: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case unknownCA, wrongHostName, wrongServerName, expired, plainTextServer, tlsServerOnPlainConfiguration

        var testDescription: String { rawValue }

        /// What the error's description must say.
        var reason: String {
            switch self {
            case .unknownCA: "certificate verify failed"
            case .wrongHostName, .wrongServerName: "hostname mismatch"
            case .expired: "certificate has expired"
            case .plainTextServer: "did not answer with TLS"
            case .tlsServerOnPlainConfiguration: "rediss://"
            }
        }
    }

    @Test(arguments: Mismatch.allCases)
    func mismatchFailsWithinTheTimeoutNamingTheReason(_ mismatch: Mismatch) async throws {
        let certificates = try TestCertificates.shared()
        let server: PrivateRedis
        switch mismatch {
        case .unknownCA: server = try await tlsRedis(certificates.unknownCA)
        case .wrongHostName, .wrongServerName: server = try await tlsRedis(certificates.wrongName)
        case .expired: server = try await tlsRedis(certificates.expired)
        case .plainTextServer: server = try await onThread { try PrivateRedis() }
        case .tlsServerOnPlainConfiguration: server = try await tlsRedis(certificates.server)
        }
        defer { server.stop() }
        var configuration = try rediss(port: server.port, caFile: certificates.caFile)
        switch mismatch {
        case .wrongHostName: configuration.host = "localhost"
        case .wrongServerName: configuration.tls?.serverName = "localhost"
        case .tlsServerOnPlainConfiguration: configuration.tls = nil
        default: break
        }
        let client = RedisClient(configuration: configuration, loop: TLSTestLoop.thread.loop)
        defer { client.close() }
        let failure = try await expectFailure(of: client, within: configuration.commandTimeout + .seconds(1))
        print("RedisTLSTests: \(mismatch.rawValue): \(failure.error) after \(failure.took)")
        #expect(failure.error.description.contains(mismatch.reason),
                "\(mismatch.rawValue): \"\(failure.error)\" does not say \"\(mismatch.reason)\"")
        // Still failing the same way on the next attempt (no crash, no stuck connection).
        let again = try await expectFailure(of: client, within: configuration.commandTimeout + .seconds(2))
        #expect(again.error.description.contains(mismatch.reason), "second attempt: \(again.error)")
    }

    @Test func verificationOffAcceptsTheServerOfAnUnknownCA() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.unknownCA)
        defer { redis.stop() }
        var configuration = RedisConfiguration(port: redis.port)
        configuration.tls = RedisTLSConfiguration(caFile: certificates.caFile, verifiesPeer: false)
        let client = RedisClient(configuration: configuration, loop: TLSTestLoop.thread.loop)
        defer { client.close() }
        let key = "test:tls:unverified:\(UUID())"
        try await client.set(key, to: [1, 2, 3], expiresIn: 60)
        #expect(try await client.get(key) == [1, 2, 3])
    }

    // MARK: - Recovery

    @Test func serverWithAnUnknownCertificateReplacedByAGoodOneIsReachedByTheSameClient() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.unknownCA)
        defer { redis.stop() }
        let client = RedisClient(configuration: try rediss(port: redis.port, caFile: certificates.caFile),
                                 loop: TLSTestLoop.thread.loop)
        defer { client.close() }
        let failure = try await expectFailure(of: client, within: .seconds(2))
        #expect(failure.error.description.contains("certificate verify failed"), "\(failure.error)")

        let restarted = ContinuousClock.now
        try await onThread { try redis.start(tls: .serving(certificates.server, certificates: certificates)) }
        let recovered = try await waitForPing(client, timeout: .seconds(5))
        print("RedisTLSTests: reached the server with its good certificate \(recovered - restarted) after the "
              + "restart began")
        #expect(recovered - restarted < .seconds(5))
    }

    @Test func caFileRewrittenWithTheRightCAIsReadAgainOnReconnect() async throws {
        let certificates = try TestCertificates.shared()
        let redis = try await tlsRedis(certificates.server)
        defer { redis.stop() }
        let caFile = try certificates.copy(ofCA: certificates.otherCAFile)
        defer { try? FileManager.default.removeItem(atPath: caFile) }
        let client = RedisClient(configuration: try rediss(port: redis.port, caFile: caFile),
                                 loop: TLSTestLoop.thread.loop)
        defer { client.close() }
        let failure = try await expectFailure(of: client, within: .seconds(2))
        #expect(failure.error.description.contains("certificate verify failed"), "\(failure.error)")

        let rewritten = ContinuousClock.now
        let rightCA = try Data(contentsOf: URL(fileURLWithPath: certificates.caFile))
        try rightCA.write(to: URL(fileURLWithPath: caFile), options: .atomic)
        let recovered = try await waitForPing(client, timeout: .seconds(5))
        print("RedisTLSTests: the rewritten CA file was used \(recovered - rewritten) after the rewrite")
        #expect(recovered - rewritten < .seconds(5))
    }
}

// MARK: - Helpers

/// The loop of the TLS tests' own clients.
enum TLSTestLoop {
    static let thread = try! EventLoopThread(name: "tls-test")
}

/// A redis-server speaking only TLS on its port, presenting `pair` (started on a thread of its own: its readiness
/// probe spawns redis-cli and sleeps).
func tlsRedis(_ pair: TestCertificates.Pair, authClients: Bool = false,
              arguments: [String] = []) async throws -> PrivateRedis {
    let certificates = try TestCertificates.shared()
    return try await onThread {
        try PrivateRedis(arguments: arguments,
                         tls: .serving(pair, authClients: authClients, certificates: certificates))
    }
}

/// `rediss://127.0.0.1:port` (as an operator writes it) with `caFile` trusted instead of the system's CAs.
func rediss(port: Int, caFile: String, commandTimeout: Duration = .seconds(1)) throws -> RedisConfiguration {
    var configuration = try RedisConfiguration(url: "rediss://127.0.0.1:\(port)")
    #expect(configuration.tls == RedisTLSConfiguration(), "rediss:// must turn TLS on with the defaults")
    configuration.tls?.caFile = caFile
    configuration.commandTimeout = commandTimeout
    return configuration
}

/// The seed flow's routes (`/` sets userName, `/login` greets) plus `/regenerate` and `/logout`, on `store`.
private func sessionApp(store: any SessionStore) throws -> Application {
    let app = Application()
    app.use(try SessionMiddleware(store: store, secrets: ["keyboard cat"]))
    app.get("/") { request, response in
        request.session["userName"] = "Aditya@123"
        response.send("Thanks for visiting")
    }
    app.get("/login") { request, response in
        response.send("Welcome \(request.session["userName"]?.stringValue ?? "guest")")
    }
    app.get("/regenerate") { request, response in
        try await request.session.regenerate()
        request.session["userName"] = "regenerated"
        response.send("regenerated")
    }
    app.get("/logout") { request, response in
        try await request.session.destroy()
        response.send("bye")
    }
    return app
}

/// Sends PING on `client` and expects it to fail within `bound`; returns the error and how long it took.
func expectFailure(of client: RedisClient, within bound: Duration,
                   sourceLocation: SourceLocation = #_sourceLocation) async throws
    -> (error: any Error & CustomStringConvertible, took: Duration) {
    let started = ContinuousClock.now
    do {
        try await client.ping()
    } catch let error as RedisClientError {
        let took = ContinuousClock.now - started
        #expect(took < bound, "the failure took \(took): \(error)", sourceLocation: sourceLocation)
        return (error, took)
    } catch let error as RedisError {
        let took = ContinuousClock.now - started
        #expect(took < bound, "the failure took \(took): \(error)", sourceLocation: sourceLocation)
        return (error, took)
    }
    throw HarnessFailure("PING succeeded where it must fail (after \(ContinuousClock.now - started))")
}

/// Pings until a PING succeeds; returns when. Throws with the last error after `timeout`.
func waitForPing(_ client: RedisClient, timeout: Duration) async throws -> ContinuousClock.Instant {
    let deadline = ContinuousClock.now + timeout
    var last: (any Error)?
    while ContinuousClock.now < deadline {
        do {
            try await client.ping()
            return .now
        } catch {
            last = error
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw HarnessFailure("no successful PING within \(timeout); last error: \(last.map { "\($0)" } ?? "none")")
}
