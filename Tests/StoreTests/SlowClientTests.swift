import Foundation
import Synchronization
import Testing
@testable import EvServer

// Clients that take their time: idle keep-alive connections, heads that trickle in (slowloris), and the server's
// promise to keep answering everybody else meanwhile.

@Suite("Slow clients")
struct SlowClientTests {
    @Test func idleKeepAliveConnectionIsClosedAfterTheIdleTimeout() async throws {
        let app = makeTestApplication(configuration: .init(idleTimeout: .milliseconds(300)))
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(try client.request("GET", "/hello").status == 200)
            let start = ContinuousClock.now
            #expect(client.waitForClose(timeout: .seconds(3)))
            let waited = ContinuousClock.now - start
            #expect(waited >= .milliseconds(250) && waited < .seconds(2), "closed after \(waited)")
            #expect(await eventually { await server.connectionCount() == 0 })
        }
    }

    @Test func keepAliveConnectionSurvivesWhileUsed() async throws {
        // Idle gaps shorter than the idle timeout but longer than the header timeout: neither applies.
        let app = makeTestApplication(configuration: .init(idleTimeout: .seconds(2), headerTimeout: .milliseconds(200)))
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            for _ in 0..<3 {
                #expect(try client.request("GET", "/hello").status == 200)
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(client.connectionsOpened == 1)
        }
    }

    @Test func headThatTricklesInIsAnswered408() async throws {
        let app = makeTestApplication(configuration: .init(headerTimeout: .milliseconds(400)))
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            let start = ContinuousClock.now
            try client.send("GET /hello HTTP/1.1\r\n")
            for byte in Array("Host: x\r\nX-Slow: ".utf8) {
                try client.send([byte])
                try await Task.sleep(for: .milliseconds(20))
            }
            let response = try client.readResponse()
            let waited = ContinuousClock.now - start
            #expect(response.status == 408)
            #expect(response.text.hasPrefix(#"{"error":"#))
            #expect(waited >= .milliseconds(350) && waited < .seconds(2), "answered after \(waited)")
            #expect(try client.readUntilClosed().isEmpty)
        }
    }

    @Test func connectionThatSendsNothingIsClosedSilently() async throws {
        let app = makeTestApplication(configuration: .init(headerTimeout: .milliseconds(300)))
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            #expect(client.waitForClose(timeout: .seconds(3)))
            #expect(try client.readUntilClosed().isEmpty)
        }
    }

    @Test func headerTimeoutWaitsWhileTheServerIsBusy() async throws {
        // A pipelined head that starts while the handler works is timed from the moment the server answers.
        let app = makeTestApplication(configuration: .init(headerTimeout: .milliseconds(300)))
        app.get("/busy") { request, response in
            await sleep(on: request.loop!, .milliseconds(700))
            response.send("done")
        }
        try await withServer(app) { server in
            let client = try TestHTTPClient(port: server.port)
            try client.send("GET /busy HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\n")
            #expect(try client.readResponse().text == "done")
            try await Task.sleep(for: .milliseconds(100))
            try client.send("Host: x\r\n\r\n")
            #expect(try client.readResponse().text == "hello world")
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
