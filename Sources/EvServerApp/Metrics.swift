import CoreMetrics
import EvServer
import Prometheus
import RedisClient

// The metrics of `evserver`: a swift-prometheus registry behind a swift-metrics factory. The libraries record into
// it, each keeping its handles per loop or per connection: the HTTP server its requests (Application's
// metricsFactory, HTTPServer+Observability.swift), the Redis client its commands and reconnections
// (RedisConfiguration.metricsFactory, RedisMetrics.swift). /metrics renders the registry in the Prometheus text
// format, followed by the session counters (SessionMetrics, read when rendered).

/// The metrics behind `/metrics`: one registry per demo application (tests run several side by side).
final class Metrics: Sendable {
    /// The histogram bounds, in seconds, of both latency histograms (the same as before swift-metrics).
    static let latencyBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    let registry: PrometheusCollectorRegistry
    /// The swift-metrics factory over ``registry``: give it to the libraries (or bootstrap `MetricsSystem` with it).
    let factory: PrometheusMetricsFactory

    init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let buckets = Self.latencyBuckets.map { Duration.nanoseconds(Int64(($0 * 1e9).rounded())) }
        factory.durationHistogramBuckets = [
            HTTPServerMetricNames.duration: buckets,
            RedisMetricNames.commandDuration: buckets,
        ]
        self.factory = factory
    }

    /// The Prometheus text exposition (version 0.0.4). `extra` are counters owned elsewhere (sessions).
    func render(extra: [(name: String, help: String, value: Int)]) -> String {
        var out = registry.emitToString()
        for counter in extra {
            out += "# HELP \(counter.name) \(counter.help)\n# TYPE \(counter.name) counter\n\(counter.name) \(counter.value)\n"
        }
        return out
    }
}
