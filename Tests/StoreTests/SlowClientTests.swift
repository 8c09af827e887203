import Foundation
import Synchronization
import Testing
@testable import EvServer

// Clients that take their time: idle keep-alive connections, heads that trickle in (slowloris), and the server's
// promise to keep answering everybody else meanwhile.

@Suite("Slow clients")
struct SlowClientTests {
    // The blocking client work of each test runs on a thread of its own (`onThread`): waiting on a socket for a
    // timeout must not hold one of the few cooperative threads the other suites need meanwhile.

    @Test func idleKeepAliveConnectionIsClosedAfterTheIdleTimeout() async throws {
        let app = makeTestApplication(configuration: .init(idleTimeout: .milliseconds(300)))
        try await withServer(app) { server in
            let port = server.port
            let (status, closed, waited) = try await onThread { () -> (Int, Bool, Duration) in
                let client = try TestHTTPClient(port: port)
                let status = try client.request("GET", "/hello").status
                let start = ContinuousClock.now
                let closed = client.waitForClose(timeout: .seconds(5))
                return (status, closed, ContinuousClock.now - start)
            }
            #expect(status == 200)
            #expect(closed)
            #expect(waited >= .milliseconds(250) && waited < .seconds(5), "closed after \(waited)")
            #expect(await eventually { await server.connectionCount() == 0 })
        }
    }

    @Test func keepAliveConnectionSurvivesWhileUsed() async throws {
        // Idle gaps shorter than the idle timeout but longer than the header timeout: neither applies.
        let app = makeTestApplication(configuration: .init(idleTimeout: .seconds(5), headerTimeout: .milliseconds(200)))
        try await withServer(app) { server in
            let port = server.port
            let (statuses, connections) = try await onThread { () -> ([Int], Int) in
                let client = try TestHTTPClient(port: port)
                var statuses: [Int] = []
                for _ in 0..<3 {
                    statuses.append(try client.request("GET", "/hello").status)
                    usleep(500_000)
                }
                return (statuses, client.connectionsOpened)
            }
            #expect(statuses == [200, 200, 200])
            #expect(connections == 1)
        }
    }

    @Test func headThatTricklesInIsAnswered408() async throws {
        let app = makeTestApplication(configuration: .init(headerTimeout: .milliseconds(600)))
        try await withServer(app) { server in
            let port = server.port
            let (response, waited, rest) = try await onThread { () -> (TestHTTPResponse, Duration, [UInt8]) in
                let client = try TestHTTPClient(port: port)
                let start = ContinuousClock.now
                try client.send("GET /hello HTTP/1.1\r\n")
                for byte in Array("Host:".utf8) {   // each byte would reset a plain read timeout
                    try client.send([byte])
                    usleep(20_000)
                }
                let response = try client.readResponse()
                let waited = ContinuousClock.now - start
                return (response, waited, try client.readUntilClosed())
            }
            #expect(response.status == 408)
            #expect(response.text.hasPrefix(#"{"error":"#))
            #expect(waited >= .milliseconds(550) && waited < .seconds(5), "answered after \(waited)")
            #expect(rest.isEmpty)
        }
    }

    @Test func connectionThatSendsNothingIsClosedSilently() async throws {
        let app = makeTestApplication(configuration: .init(headerTimeout: .milliseconds(300)))
        try await withServer(app) { server in
            let port = server.port
            let (closed, rest) = try await onThread { () -> (Bool, [UInt8]) in
                let client = try TestHTTPClient(port: port)
                return (client.waitForClose(timeout: .seconds(5)), try client.readUntilClosed())
            }
            #expect(closed)
            #expect(rest.isEmpty)
        }
    }

    @Test func headerTimeoutWaitsWhileTheServerIsBusy() async throws {
        // A pipelined head that starts while the handler works is timed from the moment the server answers.
        let app = makeTestApplication(configuration: .init(headerTimeout: .seconds(1)))
        app.get("/busy") { request, response in
            await sleep(on: request.loop!, .milliseconds(1500))
            response.send("done")
        }
        try await withServer(app) { server in
            let port = server.port
            let texts = try await onThread { () -> [String] in
                let client = try TestHTTPClient(port: port)
                try client.send("GET /busy HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\n")
                let first = try client.readResponse().text
                usleep(100_000)
                try client.send("Host: x\r\n\r\n")
                return [first, try client.readResponse().text]
            }
            #expect(texts == ["done", "hello world"])
        }
    }

    @Test func slowlorisDoesNotDelayOtherClients() async throws {
        let app = makeTestApplication()
        app.get("/healthz") { _, response in response.send("ok") }
        try await withServer(app) { server in
            let port = server.port
            let stop = Atomic<Bool>(false)
            // 300 connections each sending one header byte every 500 ms, from one thread.
            let attackers = Task {
                try await onThread { () -> Int in
                    var clients: [TestHTTPClient] = []
                    for _ in 0..<300 {
                        let client = try TestHTTPClient(port: port)
                        try client.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        clients.append(client)
                    }
                    while !stop.load(ordering: .relaxed) {
                        for client in clients { try? client.send("a") }
                        usleep(500_000)
                    }
                    return clients.count
                }
            }
            #expect(await eventually(timeout: .seconds(10)) { await server.connectionCount() >= 300 })
            let latencies = try await onThread { () -> [Duration] in
                let client = try TestHTTPClient(port: port)
                var latencies: [Duration] = []
                for _ in 0..<200 {
                    let start = ContinuousClock.now
                    let response = try client.request("GET", "/healthz")
                    latencies.append(ContinuousClock.now - start)
                    guard response.text == "ok" else { throw TestHTTPClientError.malformed(response.text) }
                    usleep(5_000)
                }
                return latencies
            }
            stop.store(true, ordering: .relaxed)
            #expect(try await attackers.value == 300)
            let p99 = latencies.sorted()[latencies.count * 99 / 100 - 1]
            #expect(p99 < .milliseconds(100), "p99 \(p99) with 300 slow connections open")
        }
    }
}
