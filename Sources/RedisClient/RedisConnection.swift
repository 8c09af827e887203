import CoreMetrics
import EvServer
import Logging
import Synchronization

// The connection state machine of a RedisClient: connect, handshake, ready, back-off, closed; deadlines; replies.

// The state below is `@exclusivity(unchecked)` where the request path touches it: loop-thread only (every entry
// point checks), one access at a time, so the dynamic checks could only ever pass.

/// The client's one logical connection: a state machine over successive transports.
///
/// Phases: idle -> connecting (TCP + handshake) -> ready; on loss or a failed attempt -> backing off -> connecting
/// again; close() -> closed from anywhere. Only one transport exists at a time.
final class RedisConnection: RedisTransportDelegate, @unchecked Sendable {
    // @unchecked Sendable: everything but `isReady` is touched only on `loop`'s thread (each entry point calls
    // loop.preconditionInLoop(); RedisClient hops with loop.execute); `isReady` is an Atomic.

    private enum Phase: Equatable {
        case idle, connecting, ready, backingOff, closed
    }

    /// Reconnect back-off: the ceiling starts at 50 ms and doubles up to 1 s; each delay is drawn uniformly from
    /// [ceiling/2, ceiling] ("equal jitter") so that many servers do not reconnect in lockstep.
    static let backoffStart: Duration = .milliseconds(50)
    static let backoffCap: Duration = .seconds(1)

    let loop: EventLoop
    let configuration: RedisConfiguration
    let isReady = Atomic<Bool>(false)
    private var logger: Logger

    @exclusivity(unchecked) private var phase = Phase.idle
    @exclusivity(unchecked) private var link: Link?
    private var deadlineTimer: ScheduledTimer?
    private var retryTimer: ScheduledTimer?
    /// Failed attempts since the last ready connection (drives the back-off).
    @exclusivity(unchecked) private var attempts = 0
    /// Why the last attempt failed or the connection was lost; shown with `.notConnected`.
    private var lastError: String?
    /// When the current outage began (nil while ready, and before the first connection).
    private var outageStart: ContinuousClock.Instant?
    private var everReady = false
    /// Decides how loudly connects and failures are logged, shared with the other connections of the same store.
    private let connectionLog: RedisConnectionLog
    /// Command latencies, failures and reconnections (RedisMetrics.swift).
    private let metrics: RedisConnectionMetrics

    init(configuration: RedisConfiguration, loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.logger[metadataKey: "redis"] = "\(configuration.redactedURL)"
        self.connectionLog = configuration.connectionLog ?? RedisConnectionLog()
        self.metrics = RedisConnectionMetrics(factory: configuration.metricsFactory ?? MetricsSystem.factory)
    }

    // MARK: Entry points (loop thread)

    func start() {
        loop.preconditionInLoop()
        guard phase == .idle else { return }
        logger.debug("connecting to Redis")
        connect()
    }

    /// - Parameter budget: the caller's own deadline (from ``RedisTimeBudget/current``), when it has one.
    func submit(name: String, arguments: [[UInt8]], budget: ContinuousClock.Instant?,
                continuation: CheckedContinuation<RedisValue, any Error>) {
        submit(name: name, command: RedisCommand(arguments), budget: budget, now: .now, continuation: continuation)
    }

    /// ``submit(name:arguments:budget:continuation:)`` of a command already encoded, at `now` (the command's start).
    func submit(name: String, command encoded: RedisCommand, budget: ContinuousClock.Instant?,
                now: ContinuousClock.Instant, continuation: CheckedContinuation<RedisValue, any Error>) {
        loop.preconditionInLoop()
        if phase == .idle { start() }
        if let budget, budget <= now {
            reject(continuation, name: name, error: RedisClientError.timeout.with("the request's Redis time is spent"),
                   outcome: .timeout)
            return
        }
        switch phase {
        case .idle, .backingOff:
            let detail = lastError.map { "reconnecting; last error: \($0)" } ?? "reconnecting"
            reject(continuation, name: name, error: RedisClientError.notConnected.with(detail))
        case .closed:
            reject(continuation, name: name, error: RedisClientError.connectionClosed.with("the client was closed"))
        case .connecting, .ready:
            guard let link else {
                reject(continuation, name: name, error: RedisClientError.notConnected)
                return
            }
            if phase == .connecting, link.count - link.handshakeRemaining >= configuration.connectingQueueLimit {
                let detail = "still connecting, \(configuration.connectingQueueLimit) commands already waiting"
                reject(continuation, name: name, error: RedisClientError.notConnected.with(detail))
                return
            }
            let command = PendingCommand(caller: continuation, name: name, start: now,
                                         deadline: now + configuration.commandTimeout, repliesBefore: link.replies)
            do {
                try link.connection.send(encoded, command: command)
            } catch {
                // The connection is going away (the transport refuses new commands once it closes).
                command.role = .done
                let reason = link.failure ?? link.connection.failureReason ?? error.description
                let failure = phase == .connecting ? RedisClientError.connectFailed(reason)
                                                   : RedisClientError.connectionClosed.with(reason)
                reject(continuation, name: name, error: failure)
                return
            }
            link.append(command)
            armDeadlineTimer()
            if let budget { armBudgetTimer(for: command, at: budget) }
        }
    }

    func close() {
        loop.preconditionInLoop()
        guard phase != .closed else { return }
        phase = .closed
        isReady.store(false, ordering: .releasing)
        retryTimer?.cancel()
        retryTimer = nil
        deadlineTimer?.cancel()
        deadlineTimer = nil
        if let link {
            if link.failure == nil { link.failure = "the client was closed" }
            link.connection.free()   // every pending command gets its NULL reply now: connectionClosed
        }
        logger.info("closed the Redis client")
    }

    // MARK: Connecting

    private func connect() {
        retryTimer = nil
        let now = ContinuousClock.now
        let connection = RedisTransport(
            endpoint: RedisEndpoint(host: configuration.host, port: configuration.port, tls: configuration.tls),
            loop: loop, delegate: self)
        let link = Link(connection: connection)
        self.link = link
        phase = .connecting
        // The handshake goes first so that commands queued while connecting run after AUTH and SELECT. Its
        // deadline is also the connect deadline: no answer within commandTimeout means the attempt failed.
        let deadline = now + configuration.commandTimeout
        for (step, arguments) in handshake() {
            let command = PendingCommand(role: .handshake(step), name: commandName(arguments[0]), start: now,
                                         deadline: deadline)
            do {
                try connection.send(arguments, command: command)
            } catch {
                drop(link, because: "could not queue \(command.name): \(error.description)")
                return
            }
            link.append(command)
            link.handshakeRemaining += 1
        }
        armDeadlineTimer()
    }

    private func handshake() -> [(HandshakeStep, [[UInt8]])] {
        var steps: [(HandshakeStep, [[UInt8]])] = []
        if let password = configuration.password {
            var arguments = [Keyword.auth]
            if let username = configuration.username { arguments.append(Array(username.utf8)) }
            arguments.append(Array(password.utf8))
            steps.append((.auth, arguments))
        }
        if configuration.database != 0 {
            steps.append((.select, [Keyword.select, decimal(configuration.database)]))
        }
        // Always last: INFO server, so that "ready" means Redis answered (not just that the kernel accepted the
        // TCP connection and, with TLS, the handshake), so that an attempt that never gets an answer fails by the
        // deadline, and so that the log can say which Redis this is.
        steps.append((.info, [Keyword.info, Keyword.server]))
        return steps
    }

    private func handshakeStepReplied(_ step: HandshakeStep, _ reply: RedisValue?, on link: Link) {
        guard let reply else { return }   // the connection is going away; transportDidClose reports why
        if case .error(let message) = reply {
            // INFO may be renamed away or refused by a managed Redis's ACL: Redis answered, which is what counts.
            if step != .info || message.hasPrefix("NOAUTH") {
                drop(link, because: handshakeFailure(step, message))
                return
            }
        } else if step == .info {
            link.serverVersion = Self.field("redis_version", in: reply)
        }
        link.handshakeRemaining -= 1
        if link.handshakeRemaining == 0, phase == .connecting {
            becomeReady()
        }
    }

    private func handshakeFailure(_ step: HandshakeStep, _ message: String) -> String {
        switch step {
        case .auth:
            return "authentication failed (\(message))"
        case .select:
            return "SELECT \(configuration.database) failed (\(message))"
        case .info where message.hasPrefix("NOAUTH"):
            return "Redis requires a password; put it in the Redis URL, redis://:password@host (\(message))"
        case .info:
            return "INFO failed (\(message))"
        }
    }

    private func becomeReady() {
        phase = .ready
        isReady.store(true, ordering: .releasing)
        let what = link.map(describe) ?? ""
        let level = connectionLog.levelForConnected()
        if everReady, let outageStart {
            metrics.reconnects.increment()
            let down = ContinuousClock.now - outageStart
            logger.log(level: level, "reconnected to Redis \(what)", metadata: [
                "attempts": "\(attempts + 1)", "down_ms": "\(milliseconds(down))",
            ])
        } else if attempts > 0 {
            logger.log(level: level, "connected to Redis \(what)", metadata: ["attempts": "\(attempts + 1)"])
        } else {
            logger.log(level: level, "connected to Redis \(what)")
        }
        everReady = true
        attempts = 0
        outageStart = nil
        lastError = nil
    }

    /// `at 10.0.0.5:6379 (single server, TLS, Redis 7.0.15)`: where a ready link goes, for the log.
    private func describe(_ link: Link) -> String {
        let address = link.connection.connectedAddress.map { "\($0)" } ?? configuration.redactedURL
        let tls = configuration.tls == nil ? "plain text"
            : configuration.tls!.verifiesPeer ? "TLS" : "TLS without verification"
        return "at \(address) (\(configuration.role), \(tls), Redis \(link.serverVersion ?? "version unknown"))"
    }

    /// The value of `name:` in an INFO reply, e.g. `7.0.15` for `redis_version`.
    static func field(_ name: String, in reply: RedisValue) -> String? {
        guard let text = reply.string else { return nil }
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix(name + ":") {
            let value = line.dropFirst(name.count + 1).filter { !$0.isWhitespace }
            return value.isEmpty ? nil : String(value.prefix(64))
        }
        return nil
    }

    /// A connection attempt failed before the connection was ready: wait, then try again.
    private func attemptFailed(_ reason: String) {
        lastError = reason
        if outageStart == nil { outageStart = .now }
        switch connectionLog.levelForFailure(reason) {
        case .warning:
            logger.warning("""
                Redis (\(configuration.role)) is not reachable: \(reason); commands fail fast while the client \
                retries with back-off
                """)
        case .info:
            logger.info("Redis (\(configuration.role)) is still not reachable, now: \(reason)")
        default:
            logger.debug("Redis connection attempt failed again: \(reason)")
        }
        attempts += 1
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        phase = .backingOff
        let ceiling = min(Self.backoffCap, Self.backoffStart * (1 << min(attempts, 10)))
        let delay = ceiling * Double.random(in: 0.5...1.0)
        retryTimer = loop.schedule(after: delay) { [self] in
            retryTimer = nil
            if phase == .backingOff { connect() }
        }
    }

    /// Drops `link`'s connection: every command on it fails at once, then transportDidClose moves on.
    private func drop(_ link: Link, because reason: String) {
        if link.failure == nil { link.failure = reason }
        link.connection.free()
    }

    // MARK: Deadlines

    private func armDeadlineTimer() {
        guard deadlineTimer == nil, let link, let head = link.liveHead else { return }
        let delay = max(.zero, head.deadline - .now)
        deadlineTimer = loop.schedule(after: delay) { [self] in
            deadlineTimer = nil
            expireCommands()
        }
    }

    // A caller's budget that ends well before the command's own deadline gets a timer of its own (rare: only a
    // request whose earlier Redis calls were slow). The command stays in the queue, as a timed-out one does, so
    // replies keep matching their commands; only its caller is answered early. Within `budgetSlack` of the
    // deadline the shared deadline timer is close enough (the promise is "deadline + 100 ms").
    private static let budgetSlack: Duration = .milliseconds(50)

    private func armBudgetTimer(for command: PendingCommand, at budget: ContinuousClock.Instant) {
        guard budget + RedisConnection.budgetSlack < command.deadline else { return }
        command.budgetTimer = loop.schedule(after: budget - .now) { [self] in
            guard let continuation = command.takeCaller() else { return }
            record(command.name, since: command.start, outcome: .timeout)
            let spent = milliseconds(ContinuousClock.now - command.start)
            continuation.resume(throwing: RedisClientError.timeout.with(
                "\(command.name) got no reply within the request's remaining Redis time (\(spent) ms)"))
        }
    }

    // A command that missed its deadline fails with `.timeout` at once; its reply, if it ever comes, is dropped
    // (it stays in the transport's queue until then, so replies keep matching their commands).
    //
    // Whether to drop the connection as well: a timeout means Redis is either slow (a long script, a big
    // command, CLIENT PAUSE, a fork) or unreachable (a half-open TCP connection after a failover or a network
    // partition, where nothing will ever come back and the kernel may take many minutes to notice). Dropping on
    // every timeout would turn a slow moment into a reconnect storm and fail the commands queued behind for no
    // gain; never dropping would leave the client stuck on a dead socket. So the connection is dropped only when
    // it made no progress: no reply at all arrived since the timed-out command was sent, i.e. the connection was
    // silent for a whole timeout while a command was waiting. Replies still flowing, even late ones, keep it.
    private func expireCommands() {
        guard let link else { return }
        let now = ContinuousClock.now
        var silentSince: ContinuousClock.Instant?
        while let head = link.liveHead, head.deadline <= now {
            if case .handshake = head.role {
                let timeout = milliseconds(configuration.commandTimeout)
                if link.connection.isResolving {
                    // Worded like a failed lookup, so that the log reads the same whichever comes first.
                    drop(link, because: "cannot resolve \(configuration.host) within \(timeout) ms (the lookup goes on; "
                         + "the next attempt uses its answer)")
                    return
                }
                let waiting = link.connection.pendingStage ?? "waiting for the reply to \(head.name)"
                drop(link, because: "no answer within \(timeout) ms (\(waiting))")
                return
            }
            link.expired += 1
            guard let continuation = head.takeCaller() else { continue }   // answered early (its budget ended)
            if link.replies == head.repliesBefore, silentSince == nil { silentSince = head.start }
            record(head.name, since: head.start, outcome: .timeout)
            let detail = "\(head.name) got no reply within \(milliseconds(configuration.commandTimeout)) ms"
            continuation.resume(throwing: RedisClientError.timeout.with(detail))
        }
        if let silentSince {
            // Logged once, as the loss, by transportDidClose.
            drop(link, because: "Redis sent nothing for \(milliseconds(now - silentSince)) ms while a command waited")
            return
        }
        armDeadlineTimer()
    }

    // MARK: RedisTransportDelegate

    func transportDidConnect(_ connection: RedisTransport) {
        guard let link, link.connection === connection else { return }
        if configuration.tls != nil {
            metrics.recordTLSHandshakes(succeeded: 1, failed: connection.takeFailedTLSHandshakes())
        }
        logger.trace("TCP connected; waiting for the handshake")
    }

    func transport(_ connection: RedisTransport, didReceive reply: RedisValue?, for command: PendingCommand) {
        guard let link, link.connection === connection else {
            // A connection we already let go of; cannot happen (a connection is gone before the next one starts),
            // but a caller must never hang.
            complete(command, reply: reply, link: nil, reason: connection.failureReason)
            return
        }
        if reply != nil { link.replies &+= 1 }
        link.remove(command)
        if case .handshake(let step) = command.role {
            command.role = .done
            handshakeStepReplied(step, reply, on: link)
            return
        }
        complete(command, reply: reply, link: link, reason: link.failure ?? connection.failureReason)
    }

    func transportDidClose(_ connection: RedisTransport, reason: String?) {
        guard let link, link.connection === connection else { return }
        self.link = nil
        deadlineTimer?.cancel()
        deadlineTimer = nil
        // The transport gave every command its nil reply before this; whatever is left would be a bug there, and a
        // caller must not hang on it.
        for command in link.removeAll() {
            complete(command, reply: nil, link: nil, reason: reason)
        }
        let why = link.failure ?? reason ?? "connection closed"
        switch phase {
        case .connecting:
            let failedHandshakes = connection.takeFailedTLSHandshakes()
            if failedHandshakes > 0 { metrics.recordTLSHandshakes(succeeded: 0, failed: failedHandshakes) }
            attemptFailed(why)
        case .ready:
            isReady.store(false, ordering: .releasing)
            lastError = why
            outageStart = .now
            logger.log(level: connectionLog.levelForFailure(why), "lost the connection to Redis: \(why); reconnecting")
            scheduleReconnect()
        case .idle, .backingOff, .closed:
            break
        }
    }

    // MARK: Completing commands

    // `reason` is only needed for a nil reply: not worked out for every reply.
    private func complete(_ command: PendingCommand, reply: RedisValue?, link: Link?,
                          reason: @autoclosure () -> String?) {
        guard let continuation = command.takeCaller() else { return }   // timed out earlier, or a handshake
        switch reply {
        case nil:
            // Queued behind a handshake that never finished: the attempt failed. Otherwise the connection was
            // lost (or closed) with the command in flight: it may or may not have run.
            let error: RedisClientError
            if phase == .closed {
                error = RedisClientError.connectionClosed.with("the client was closed")
            } else if let link, link.handshakeRemaining > 0 {
                error = RedisClientError.connectFailed(reason() ?? "connection closed")
            } else {
                error = RedisClientError.connectionClosed.with(reason())
            }
            record(command.name, since: command.start, outcome: .connectionError)
            continuation.resume(throwing: error)
        case .error(let message)?:
            record(command.name, since: command.start, outcome: .redisError)
            continuation.resume(throwing: RedisError(message: message))
        case let value?:
            record(command.name, since: command.start, outcome: .success)
            continuation.resume(returning: value)
        }
    }

    private func reject(_ continuation: CheckedContinuation<RedisValue, any Error>, name: String,
                        error: RedisClientError, outcome: RedisCommandOutcome = .connectionError) {
        configuration.onCommand?(name, .zero, outcome)
        metrics.record(name, nanoseconds: 0, outcome: outcome)
        continuation.resume(throwing: error)
    }

    private func record(_ name: String, since start: ContinuousClock.Instant, outcome: RedisCommandOutcome) {
        let duration = ContinuousClock.now - start
        let (seconds, attoseconds) = duration.components   // once: each read does 128-bit math
        metrics.record(name, nanoseconds: seconds &* 1_000_000_000 &+ attoseconds / 1_000_000_000, outcome: outcome)
        configuration.onCommand?(name, duration, outcome)
    }
}

/// Whole milliseconds, for messages.
func milliseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1000 + attoseconds / 1_000_000_000_000_000
}
