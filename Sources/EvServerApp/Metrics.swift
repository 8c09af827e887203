import CoreMetrics
import EvServer
import Prometheus
import Synchronization

// The metrics of `evserver`: a swift-prometheus registry behind a swift-metrics factory. The HTTP server records
// its requests into it (Application's metricsFactory, with handles cached per loop: HTTPServer+Observability.swift),
// the Redis commands come in through RedisConfiguration.onCommand, and /metrics renders the registry in the
// Prometheus text format, followed by the session counters (SessionMetrics, read when rendered).

/// Process-wide metrics for `/metrics`: one registry per demo application (tests run several side by side).
final class Metrics: Sendable {
    /// The histogram bounds, in seconds, of both latency histograms (the same as before swift-metrics).
    static let latencyBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    static let redisDurationLabel = "evserver_redis_command_duration_seconds"
    static let redisErrorsLabel = "evserver_redis_errors_total"

    let registry: PrometheusCollectorRegistry
    /// The swift-metrics factory over ``registry``: give it to the libraries (or bootstrap `MetricsSystem` with it).
    let factory: PrometheusMetricsFactory

    /// The Redis handles of one loop. Each loop records into a shard of its own (picked by the loop's identity), so
    /// the lock around a shard's dictionary is never waited for; the handles themselves are swift-prometheus's.
    private final class Shard: Sendable {
        let handles = Mutex<[String: RedisHandles]>([:])
    }

    private struct RedisHandles: @unchecked Sendable {
        // @unchecked Sendable: swift-metrics' Timer and Counter are thread-safe classes that predate Sendable.
        let timer: CoreMetrics.Timer
        var errors: [(kind: String, counter: CoreMetrics.Counter)] = []
    }

    private let shards: [Shard] = (0..<64).map { _ in Shard() }

    init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let buckets = Self.latencyBuckets.map { Duration.nanoseconds(Int64(($0 * 1e9).rounded())) }
        factory.durationHistogramBuckets = [
            HTTPServerMetricNames.duration: buckets,
            Self.redisDurationLabel: buckets,
        ]
        self.factory = factory
    }

    /// The shard of the calling thread's loop (outside any loop, the first).
    private var shard: Shard {
        guard let loop = EventLoop.current else { return shards[0] }
        // An object's address is fixed while it lives; its low bits are alignment, so drop them.
        return shards[Int((UInt(bitPattern: ObjectIdentifier(loop)) >> 4) % UInt(shards.count))]
    }

    /// Records one Redis command (from ``RedisConfiguration/onCommand``, on the loop thread).
    func recordRedis(command: String, duration: Duration, error: String?) {
        let factory = factory
        let nanoseconds = Self.nanoseconds(duration)
        shard.handles.withLock { handles in
            if handles[command] == nil {
                handles[command] = RedisHandles(timer: CoreMetrics.Timer(
                    label: Self.redisDurationLabel, dimensions: [("command", command)], factory: factory))
            }
            handles[command]!.timer.recordNanoseconds(nanoseconds)
            guard let error else { return }
            if let entry = handles[command]!.errors.first(where: { $0.kind == error }) {
                return entry.counter.increment()
            }
            let counter = CoreMetrics.Counter(label: Self.redisErrorsLabel, dimensions: [("command", command), ("kind", error)],
                                  factory: factory)
            handles[command]!.errors.append((error, counter))
            counter.increment()
        }
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds &* 1_000_000_000 &+ attoseconds / 1_000_000_000
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
