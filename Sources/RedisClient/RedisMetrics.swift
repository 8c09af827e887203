import CoreMetrics

// The metrics the Redis client emits through swift-metrics (RedisConfiguration.metricsFactory, by default whatever
// MetricsSystem was bootstrapped with): each command's latency and failures, and reconnections. Each connection
// keeps the handles of the commands it has sent (a dictionary only its loop's thread touches), so the backend's
// registry is asked once per command name and connection, never per command.

/// The names of the Redis client's metrics (swift-metrics labels; Prometheus metric names as they are).
public enum RedisMetricNames {
    /// Timer `evserver_redis_command_duration_seconds{command}`: from a command's submission to its reply or
    /// failure. `command` is the upper-case name (`GETEX`, `EVALSHA`), never a key or an argument.
    public static let commandDuration = "evserver_redis_command_duration_seconds"
    /// Counter `evserver_redis_errors_total{command,kind}`: failed commands; `kind` is `redis_error` (an `-ERR`
    /// reply), `timeout` or `connection` (not sent, or the connection was lost before the reply).
    public static let errors = "evserver_redis_errors_total"
    /// Counter `evserver_redis_reconnects_total`: connections re-established after being lost.
    public static let reconnects = "evserver_redis_reconnects_total"
    /// Counter `evserver_redis_tls_handshakes_total{outcome}`: TLS handshakes with Redis, `ok` or `failed`
    /// (certificate refused, the server hung up during the handshake).
    public static let tlsHandshakes = "evserver_redis_tls_handshakes_total"
}

/// The metric handles of one ``RedisConnection``. Used on its loop's thread only.
final class RedisConnectionMetrics {
    private final class CommandHandles {
        let timer: CoreMetrics.Timer
        var errors: [(kind: String, counter: Counter)] = []
        init(timer: CoreMetrics.Timer) { self.timer = timer }
    }

    private let factory: any MetricsFactory
    @exclusivity(unchecked) private var commands: [String: CommandHandles] = [:]
    let reconnects: Counter
    /// Made at the first handshake: a plain-text connection never shows TLS series.
    @exclusivity(unchecked) private var tlsHandshakes: (ok: Counter, failed: Counter)?

    init(factory: any MetricsFactory) {
        self.factory = factory
        reconnects = Counter(label: RedisMetricNames.reconnects, dimensions: [], factory: factory)
    }

    func recordTLSHandshakes(succeeded: Int, failed: Int) {
        let counters = tlsHandshakes ?? (
            ok: Counter(label: RedisMetricNames.tlsHandshakes, dimensions: [("outcome", "ok")], factory: factory),
            failed: Counter(label: RedisMetricNames.tlsHandshakes, dimensions: [("outcome", "failed")], factory: factory))
        tlsHandshakes = counters
        if succeeded > 0 { counters.ok.increment(by: succeeded) }
        if failed > 0 { counters.failed.increment(by: failed) }
    }

    func record(_ name: String, nanoseconds: Int64, outcome: RedisCommandOutcome) {
        let handles: CommandHandles
        if let known = commands[name] {
            handles = known
        } else {
            handles = CommandHandles(timer: CoreMetrics.Timer(label: RedisMetricNames.commandDuration,
                                                              dimensions: [("command", name)], factory: factory))
            commands[name] = handles
        }
        handles.timer.recordNanoseconds(nanoseconds)
        let kind: String
        switch outcome {
        case .success: return
        case .redisError: kind = "redis_error"
        case .timeout: kind = "timeout"
        case .connectionError: kind = "connection"
        }
        for entry in handles.errors where entry.kind == kind { return entry.counter.increment() }
        let counter = Counter(label: RedisMetricNames.errors, dimensions: [("command", name), ("kind", kind)],
                              factory: factory)
        handles.errors.append((kind, counter))
        counter.increment()
    }
}
