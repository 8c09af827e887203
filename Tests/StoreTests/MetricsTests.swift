@testable import EvServerApp
@testable import EvServer
import Testing

/// The Prometheus text `Metrics` renders: histogram buckets are cumulative, as the exposition format requires.
@Suite struct MetricsTests {
    @Test func latencyBucketsCountEveryObservationAtOrBelowTheirBound() {
        let metrics = Metrics()
        for milliseconds in [0.3, 3, 3, 300, 5_000] {   // 5 s is above the last bound: only in +Inf
            metrics.recordRequest(route: "/r", method: "GET", status: 200, duration: .microseconds(milliseconds * 1000))
        }
        let text = metrics.render(extra: [])
        func bucket(_ bound: String) -> String? {
            let prefix = #"evserver_http_request_duration_seconds_bucket{route="/r",le="\#(bound)"} "#
            return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
        }
        #expect(bucket("0.0005") == "1")
        #expect(bucket("0.001") == "1")
        #expect(bucket("0.005") == "3")
        #expect(bucket("0.25") == "3")
        #expect(bucket("0.5") == "4")
        #expect(bucket("2.5") == "4")
        #expect(bucket("+Inf") == "5")
        #expect(text.contains(#"evserver_http_request_duration_seconds_count{route="/r"} 5"#))
    }

    /// Each loop counts into its own shard; /metrics shows the sum, with every route, status and Redis command.
    @Test func countsFromSeveralLoopsAreSummed() async throws {
        let metrics = Metrics()
        let threads = try (0..<4).map { try EventLoopThread(name: "metrics-\($0)") }
        for (index, thread) in threads.enumerated() {
            await thread.loop.perform {
                for _ in 0..<(index + 1) {
                    metrics.recordRequest(route: "/r", method: "GET", status: 200, duration: .milliseconds(1))
                    metrics.recordRedis(command: "getex", duration: .milliseconds(1), error: index == 0 ? "timeout" : nil)
                }
                metrics.recordRequest(route: "/r", method: "POST", status: 500 + index, duration: .milliseconds(1))
            }
        }
        let text = metrics.render(extra: [])
        #expect(text.contains(#"evserver_http_requests_total{route="/r",method="GET",status="200"} 10"#))
        for index in 0..<4 {
            #expect(text.contains(#"evserver_http_requests_total{route="/r",method="POST",status="\#(500 + index)"} 1"#))
        }
        #expect(text.contains(#"evserver_http_request_duration_seconds_count{route="/r"} 14"#))
        #expect(text.contains(#"evserver_redis_command_duration_seconds_count{command="getex"} 10"#))
        #expect(text.contains(#"evserver_redis_errors_total{command="getex",kind="timeout"} 1"#))
        for thread in threads { thread.shutdown() }
    }
}
