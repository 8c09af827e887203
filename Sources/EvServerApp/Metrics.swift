import EvServer
import Synchronization

// A small Prometheus text-format registry: counters and histograms with labels. Each event loop records into a
// shard of its own (picked by the loop's identity), so loops never wait for each other's lock and more loops scale;
// /metrics sums the shards when it renders.

/// Process-wide metrics for `/metrics`.
final class Metrics: Sendable {
    static let latencyBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    private struct Histogram {
        /// Observations per bucket, each counted once, in the first bucket whose bound holds it (Prometheus's
        /// cumulative counts are summed when rendered: one increment per observation instead of up to twelve).
        var buckets: [UInt64]
        var sum = 0.0
        var count: UInt64 = 0

        init(bounds: Int) { buckets = Array(repeating: 0, count: bounds) }

        mutating func observe(_ value: Double, bounds: [Double]) {
            if let index = bounds.firstIndex(where: { value <= $0 }) { buckets[index] += 1 }
            sum += value
            count += 1
        }

        mutating func add(_ other: Histogram) {
            for index in buckets.indices { buckets[index] += other.buckets[index] }
            sum += other.sum
            count += other.count
        }

        /// The count of observations at or below each bound, in order.
        var cumulativeBuckets: [UInt64] {
            var total: UInt64 = 0
            return buckets.map { total += $0; return total }
        }
    }

    /// One route's requests: its latency, and how many answered with each method and status (a few pairs, so a
    /// list: the route is hashed once per request, not once more with its method and status).
    private struct RouteStats {
        var latency = Histogram(bounds: Metrics.latencyBuckets.count)
        var counts: [(method: String, status: Int, count: UInt64)] = []

        mutating func record(method: String, status: Int, seconds: Double) {
            latency.observe(seconds, bounds: Metrics.latencyBuckets)
            if let index = counts.firstIndex(where: { $0.status == status && $0.method == method }) {
                counts[index].count += 1
            } else {
                counts.append((method, status, 1))
            }
        }
    }

    private struct State {
        var routes: [String: RouteStats] = [:]
        var redisLatency: [String: Histogram] = [:]
        var redisErrors: [RedisErrorKey: UInt64] = [:]

        /// Adds `other`'s counts to these (for rendering the sum of the shards).
        mutating func merge(_ other: State) {
            for (route, stats) in other.routes {
                var mine = routes[route] ?? RouteStats()
                mine.latency.add(stats.latency)
                for entry in stats.counts {
                    if let index = mine.counts.firstIndex(where: { $0.status == entry.status && $0.method == entry.method }) {
                        mine.counts[index].count += entry.count
                    } else {
                        mine.counts.append(entry)
                    }
                }
                routes[route] = mine
            }
            for (command, histogram) in other.redisLatency {
                redisLatency[command, default: Histogram(bounds: Metrics.latencyBuckets.count)].add(histogram)
            }
            for (key, count) in other.redisErrors { redisErrors[key, default: 0] += count }
        }
    }

    struct RedisErrorKey: Hashable {
        let command: String
        let kind: String
    }

    /// One loop's counts. A class per shard: each lock on its own allocation, not beside its neighbours'.
    private final class Shard: Sendable {
        let state = Mutex(State())
    }

    /// More shards than loops, so that two loops rarely share one (when they do, they only share its lock).
    private let shards: [Shard] = (0..<64).map { _ in Shard() }

    /// The shard of `loop` (of the calling thread's loop when nil; outside any loop, the first).
    private func shard(_ loop: EventLoop?) -> Shard {
        guard let loop = loop ?? EventLoop.current else { return shards[0] }
        // An object's address is fixed while it lives; its low bits are alignment, so drop them.
        return shards[Int((UInt(bitPattern: ObjectIdentifier(loop)) >> 4) % UInt(shards.count))]
    }

    func recordRequest(route: String, method: String, status: Int, duration: Duration, loop: EventLoop? = nil) {
        let seconds = Self.seconds(duration)
        shard(loop).state.withLock { state in
            state.routes[route, default: RouteStats()].record(method: method, status: status, seconds: seconds)
        }
    }

    func recordRedis(command: String, duration: Duration, error: String?) {
        let seconds = Self.seconds(duration)
        shard(nil).state.withLock { state in
            state.redisLatency[command, default: Histogram(bounds: Self.latencyBuckets.count)]
                .observe(seconds, bounds: Self.latencyBuckets)
            if let error { state.redisErrors[RedisErrorKey(command: command, kind: error), default: 0] += 1 }
        }
    }

    private static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components   // once: each read of `components` does 128-bit math
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// The Prometheus text exposition (version 0.0.4). `extra` are counters owned elsewhere (sessions).
    func render(extra: [(name: String, help: String, value: Int)]) -> String {
        var out = ""
        var state = State()
        for shard in shards { state.merge(shard.state.withLock { $0 }) }
        do {
            out += "# HELP evserver_http_requests_total HTTP requests by route, method and status.\n"
            out += "# TYPE evserver_http_requests_total counter\n"
            let routes = state.routes.sorted { $0.key < $1.key }
            for (route, stats) in routes {
                for entry in stats.counts.sorted(by: { ($0.status, $0.method) < ($1.status, $1.method) }) {
                    out += "evserver_http_requests_total{route=\"\(escape(route))\",method=\"\(entry.method)\","
                        + "status=\"\(entry.status)\"} \(entry.count)\n"
                }
            }
            renderHistograms(&out, name: "evserver_http_request_duration_seconds", help: "HTTP request latency by route.",
                             label: "route", routes.map { ($0.key, $0.value.latency) })
            renderHistograms(&out, name: "evserver_redis_command_duration_seconds",
                             help: "Redis command latency by command.", label: "command",
                             state.redisLatency.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
            out += "# HELP evserver_redis_errors_total Redis command failures by command and kind.\n"
            out += "# TYPE evserver_redis_errors_total counter\n"
            for (key, count) in state.redisErrors.sorted(by: { ($0.key.command, $0.key.kind) < ($1.key.command, $1.key.kind) }) {
                out += "evserver_redis_errors_total{command=\"\(escape(key.command))\",kind=\"\(key.kind)\"} \(count)\n"
            }
        }
        for counter in extra {
            out += "# HELP \(counter.name) \(counter.help)\n# TYPE \(counter.name) counter\n\(counter.name) \(counter.value)\n"
        }
        return out
    }

    private func renderHistograms(_ out: inout String, name: String, help: String, label: String,
                                  _ histograms: [(key: String, histogram: Histogram)]) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (key, histogram) in histograms {
            let value = escape(key)
            for (bound, count) in zip(Self.latencyBuckets, histogram.cumulativeBuckets) {
                out += "\(name)_bucket{\(label)=\"\(value)\",le=\"\(bound)\"} \(count)\n"
            }
            out += "\(name)_bucket{\(label)=\"\(value)\",le=\"+Inf\"} \(histogram.count)\n"
            out += "\(name)_sum{\(label)=\"\(value)\"} \(histogram.sum)\n"
            out += "\(name)_count{\(label)=\"\(value)\"} \(histogram.count)\n"
        }
    }

    private func escape(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
