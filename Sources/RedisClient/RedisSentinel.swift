import EvServer
import Logging
import Synchronization

/// Where the Redis Sentinels are and which primary they watch, for a store whose primary may move (failover).
public struct RedisSentinelConfiguration: Sendable {
    /// The sentinels, asked in this order (the last one that answered goes first next time).
    public var sentinels: [RedisAddress]
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`), e.g. `mymaster`.
    public var masterName: String
    /// Credentials, database, command timeout and metrics hook for the primary; `host` and `port` are ignored
    /// (the sentinels name the primary).
    public var primary: RedisConfiguration
    /// The password of sentinels started with `requirepass`; nil when they need none.
    public var sentinelPassword: String?
    /// TLS to the sentinels (sentinels with a `tls-port`); nil talks plain text to them. The primary's own TLS is
    /// `primary.tls`. The `evserver` command uses one setting for both.
    public var sentinelTLS: RedisTLSConfiguration?
    /// Deadline for each question to a sentinel and for each `ROLE` check of a primary.
    public var attemptTimeout: Duration = .milliseconds(500)
    /// How often the primary is checked again while all looks well, in case a failover announcement was missed.
    public var checkInterval: Duration = .seconds(5)
    /// How long requests fail fast while a sentinel promotes a replica, at most: the hold ends as soon as the
    /// replica says it is the primary; after this long without that (an aborted failover), the sentinels are
    /// asked again.
    public var promotionTimeout: Duration = .seconds(5)
    /// Whether to subscribe to failover announcements (tests turn it off to exercise the other ways a move is
    /// noticed).
    var followsAnnouncements = true

    /// - Parameters:
    ///   - sentinels: the sentinels' addresses (at least one).
    ///   - masterName: the monitored primary's name.
    ///   - primary: credentials, database and timeouts for the primary (host and port ignored).
    ///   - sentinelPassword: the sentinels' `requirepass`, if any.
    ///   - sentinelTLS: TLS settings for the sentinels, if they speak TLS.
    public init(sentinels: [RedisAddress], masterName: String, primary: RedisConfiguration = .init(),
                sentinelPassword: String? = nil, sentinelTLS: RedisTLSConfiguration? = nil) {
        self.sentinels = sentinels
        self.masterName = masterName
        self.primary = primary
        self.sentinelPassword = sentinelPassword
        self.sentinelTLS = sentinelTLS
    }
}

/// The clients of a store whose primary is found through Redis Sentinel: one ``RedisClient`` per ``EventLoop``
/// to the current primary, replaced when a failover moves it.
///
/// A monitor on a loop thread of its own (which also serves callers outside any loop) asks the sentinels for the
/// primary (`SENTINEL get-master-addr-by-name`, each sentinel in turn, each answer checked with `ROLE` on the
/// primary), subscribes to failover announcements on every sentinel, and asks again whenever a command on the
/// primary fails (connection lost, timeout, `-READONLY` from a demoted primary) and every
/// ``RedisSentinelConfiguration/checkInterval``. ``client()`` never waits for any of it: while the monitor
/// looks, it returns the last known primary's client, whose commands then fail fast; while a sentinel is
/// promoting a replica, it throws ``RedisClientError/notConnected`` at once (see ``SentinelMonitor``).
///
/// Thread safety: all methods may be called from any thread.
package final class SentinelClients: Sendable {
    package let configuration: RedisSentinelConfiguration
    private let state: SentinelState
    /// The monitor's loop, also the loop of callers outside any loop. nil if it could not start (then client()
    /// throws why).
    private let thread: EventLoopThread?
    private let monitor: SentinelMonitor?
    private let startFailure: String?

    /// Starts the monitor thread, which looks for the primary at once. An empty sentinel list (or a thread that
    /// cannot start) is reported by every ``client()`` call.
    package init(configuration: RedisSentinelConfiguration) {
        self.configuration = configuration
        let state = SentinelState(configuration: configuration)
        self.state = state
        guard !configuration.sentinels.isEmpty else {
            self.thread = nil
            self.monitor = nil
            self.startFailure = "no sentinel addresses configured"
            return
        }
        do {
            let thread = try EventLoopThread(name: "redis-sentinel")
            let monitor = SentinelMonitor(configuration: configuration, state: state, loop: thread.loop)
            state.setMonitor(monitor)
            self.thread = thread
            self.monitor = monitor
            self.startFailure = nil
            thread.loop.execute { monitor.start() }
        } catch {
            self.thread = nil
            self.monitor = nil
            self.startFailure = "cannot start the sentinel monitor thread: \(error)"
        }
    }

    deinit {
        close()
    }

    /// The current primary's client for the calling loop (``EventLoop/current``; outside any loop, the monitor's
    /// loop). Made on first use; replaced when the primary changes. Never waits.
    /// - Throws: ``RedisClientError/notConnected`` before any primary is known (the reason says what the sentinels
    ///   answered) and while a replica is being promoted, ``RedisClientError/connectionClosed`` after ``close()``.
    package func client() throws -> RedisClient {
        guard let thread else { throw RedisClientError.notConnected.with(startFailure) }
        let loop = EventLoop.current ?? thread.loop
        return try state.client(for: loop)
    }

    /// The primary in use, or nil before the sentinels named one.
    var primary: RedisAddress? {
        state.primary
    }

    /// Closes every client and stops the monitor. Idempotent.
    package func close() {
        for client in state.close() { client.close() }
        guard let thread, let monitor else { return }
        thread.loop.execute { monitor.stop() }
        thread.shutdownFromAnyThread()
    }
}

// MARK: - Shared state

/// What the request loops read and the monitor writes: the primary, its generation and the per-loop clients.
final class SentinelState: Sendable {
    private struct Value {
        var primary: RedisAddress?
        /// Bumped at each change of primary; a client's metrics hook carries the generation it was made for.
        var generation = 0
        var clients: [ObjectIdentifier: RedisClient] = [:]
        var closed = false
        /// Why the last search for the primary failed (nil once one is found), for `.notConnected` details.
        var problem: String?
        /// Set while a replica is being promoted: client() fails with this reason instead of handing out the old
        /// primary, whose acknowledged writes would be lost.
        var held: String?
    }

    let configuration: RedisSentinelConfiguration
    private let value = Mutex(Value())
    // Weak: the monitor keeps the state; a client's metrics hook reaches the monitor through here.
    private let monitor = Mutex<WeakMonitor>(WeakMonitor())

    private struct WeakMonitor: @unchecked Sendable {
        // @unchecked Sendable: only read and written under the Mutex above; SentinelMonitor itself is Sendable.
        weak var monitor: SentinelMonitor?
    }

    init(configuration: RedisSentinelConfiguration) {
        self.configuration = configuration
    }

    func setMonitor(_ monitor: SentinelMonitor) {
        self.monitor.withLock { $0.monitor = monitor }
    }

    var primary: RedisAddress? { value.withLock { $0.primary } }
    var generation: Int { value.withLock { $0.generation } }

    func client(for loop: EventLoop) throws(RedisClientError) -> RedisClient {
        let configuration = self.configuration
        return try value.withLock { (value: inout Value) throws(RedisClientError) -> RedisClient in
            if value.closed { throw RedisClientError.connectionClosed.with("the sentinel clients were closed") }
            if let held = value.held { throw RedisClientError.notConnected.with(held) }
            guard let primary = value.primary else {
                var detail = "no primary known yet for \"\(configuration.masterName)\""
                if let problem = value.problem { detail += " (\(problem))" }
                throw RedisClientError.notConnected.with(detail)
            }
            if let client = value.clients[ObjectIdentifier(loop)] { return client }
            let client = RedisClient(configuration: primaryConfiguration(primary, generation: value.generation),
                                     loop: loop)
            value.clients[ObjectIdentifier(loop)] = client
            return client
        }
    }

    /// The primary's configuration at `address`, its metrics hook also telling the monitor of failed commands.
    private func primaryConfiguration(_ address: RedisAddress, generation: Int) -> RedisConfiguration {
        var configuration = self.configuration.primary.pointing(to: address)
        configuration.role = "Sentinel primary \(self.configuration.masterName)"
        let userHook = configuration.onCommand
        // Weak: the clients (and so this hook) belong to the state.
        configuration.onCommand = { [weak self] name, duration, outcome in
            userHook?(name, duration, outcome)
            // Lost connection, timeout, or an error reply (-READONLY from a demoted primary among them): the
            // primary may have moved. The monitor checks, at a bounded rate.
            if outcome != .success, let self {
                self.monitor.withLock { $0.monitor }?.suspect(generation: generation)
            }
        }
        return configuration
    }

    /// Records the new primary. Returns the clients of the previous one (to close) and the previous address, or
    /// nil when `address` already is the primary.
    func switchPrimary(to address: RedisAddress) -> (previous: RedisAddress?, clients: [RedisClient])? {
        value.withLock { value in
            value.problem = nil
            value.held = nil
            guard value.primary != address, !value.closed else { return nil }
            let previous = value.primary
            let clients = Array(value.clients.values)
            value.primary = address
            value.generation += 1
            value.clients = [:]
            return (previous, clients)
        }
    }

    /// Holds the clients (client() fails with `reason`) while a replica is being promoted. Returns the current
    /// clients, to close.
    func hold(because reason: String) -> [RedisClient] {
        value.withLock { value in
            value.held = reason
            value.generation += 1
            defer { value.clients = [:] }
            return Array(value.clients.values)
        }
    }

    /// Ends a hold without a change of primary.
    func release() {
        value.withLock { $0.held = nil }
    }

    func setProblem(_ problem: String) {
        value.withLock { $0.problem = problem }
    }

    /// Marks the state closed; returns the clients to close.
    func close() -> [RedisClient] {
        value.withLock { value in
            value.closed = true
            defer { value.clients = [:] }
            return Array(value.clients.values)
        }
    }
}
