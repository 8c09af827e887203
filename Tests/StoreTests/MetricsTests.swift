@testable import EvServerApp
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
}
