// The Sentinel monitor is one state machine (searches, the +switch-master subscription, checks, back-off); it is
// kept in one file of ~560 lines because split up, its transitions would be scattered across files.

import EvServer
import Logging
import Synchronization

/// Finds the primary through the sentinels and follows failovers, on one loop (``SentinelClients``'s own thread).
///
/// - A *search* asks each sentinel in turn, starting with the last one that answered, for
///   `SENTINEL get-master-addr-by-name <name>`, and checks the answer with `ROLE` on that address (a sentinel can
///   lag behind a failover, or name a primary that is down): the first address whose `ROLE` says `master` is
///   adopted. One search runs at a time; a failed search is retried after 100 ms, doubling up to 500 ms, until one
///   succeeds.
/// - Searches start at startup, when `+switch-master` is announced (the announced address is checked first),
///   when a subscription is (re-)established (an announcement may have been missed meanwhile), when a command
///   on the primary fails (at most every 100 ms), and every `checkInterval`.
/// - Every sentinel gets a subscription to `+switch-master` and `+failover-state-wait-promotion` (a failover's
///   events come only from the sentinel leading it); a lost one is re-established with back-off.
/// - `+failover-state-wait-promotion` means the leader has just told a replica to become the primary. From then on
///   the old primary still takes writes but no longer replicates them: whatever it acknowledges is lost when it
///   is demoted. So the clients are *held* (``SentinelClients/client()`` fails fast with `.notConnected`, the old
///   primary's clients are closed) while `ROLE` on the replica is polled every 20 ms; as soon as it says
///   `master` it is adopted, typically a second before the sentinels announce `+switch-master`. If it does not
///   within `promotionTimeout`, the hold ends and the sentinels are asked again.
final class SentinelMonitor: @unchecked Sendable {
    // @unchecked Sendable: everything but `suspicionQueued` is touched only on `loop`'s thread (entry points from
    // elsewhere hop with loop.execute; the others check preconditionInLoop); `suspicionQueued` is an Atomic.

    /// Failed searches are retried after this, doubling up to `retryCap`.
    static let retryStart: Duration = .milliseconds(100)
    static let retryCap: Duration = .milliseconds(500)
    /// A failing command triggers a search at most this often.
    static let suspicionInterval: Duration = .milliseconds(100)
    /// The delay before subscribing again after the subscription connection failed (doubling up to 2 s).
    static let resubscribeStart: Duration = .milliseconds(100)
    static let resubscribeCap: Duration = .seconds(2)
    static let switchChannel = "+switch-master"
    static let promotionChannel = "+failover-state-wait-promotion"
    /// How often `ROLE` is polled on a replica being promoted.
    static let promotionPoll: Duration = .milliseconds(20)

    let loop: EventLoop
    let configuration: RedisSentinelConfiguration
    private let state: SentinelState
    private var logger: Logger
    /// Loggers for the short-lived ROLE probes: their connection failures are reported by the search instead.
    private var quietLogger: Logger

    private var stopped = false
    /// One client per sentinel (same order as the configuration), made in start().
    private var sentinels: [RedisClient] = []
    /// Index of the sentinel asked first.
    private var preferred = 0
    /// The client that checks `ROLE` on a candidate primary; kept while it keeps answering.
    private var probe: (address: RedisAddress, client: RedisClient)?

    private var searching = false
    private var searchAgain = false
    /// An address to check first (announced by `+switch-master`).
    private var hint: RedisAddress?
    private var lastSearchStart: ContinuousClock.Instant?
    private var failedSearches = 0
    /// The failure last logged (a repeat is logged at debug level).
    private var loggedFailure: String?
    /// The next search planned (a retry, a periodic check, or a suspicion within the interval), and when.
    private var nextSearch: (timer: ScheduledTimer, at: ContinuousClock.Instant)?

    /// A replica being promoted, while the clients are held for it.
    private var promotion: (address: RedisAddress, until: ContinuousClock.Instant)?
    /// The primary left for a promoted replica before the sentinels announced the switch. Until they name the new
    /// one (or this expires), a sentinel naming the old one is lagging, not right: the old primary still says
    /// `master` (it is demoted only seconds later), so `ROLE` cannot tell the two apart.
    private var leftBehind: (address: RedisAddress, until: ContinuousClock.Instant)?
    /// How long a promoted replica is preferred over the primary it replaced while the sentinels still name that.
    static let announcementWait: Duration = .seconds(10)

    /// One subscription per sentinel (same order as the configuration), nil between attempts.
    private var subscriptions: [SentinelSubscription?] = []
    private var subscriptionFailures: [Int] = []
    private var resubscribeTimers: [ScheduledTimer?] = []

    private let suspicionQueued = Atomic<Bool>(false)

    init(configuration: RedisSentinelConfiguration, state: SentinelState, loop: EventLoop) {
        self.configuration = configuration
        self.state = state
        self.loop = loop
        var logger = Logger(label: "evserver.redis.sentinel")
        logger[metadataKey: "master"] = "\(configuration.masterName)"
        self.logger = logger
        var quiet = Logger(label: "evserver.redis.sentinel.probe")
        quiet.logLevel = .critical
        self.quietLogger = quiet
    }

    // MARK: Entry points

    func start() {
        loop.preconditionInLoop()
        guard !stopped, sentinels.isEmpty else { return }
        for address in configuration.sentinels {
            var sentinel = RedisConfiguration(host: address.host, port: address.port,
                                              password: configuration.sentinelPassword,
                                              tls: configuration.sentinelTLS,
                                              commandTimeout: configuration.attemptTimeout)
            sentinel.connectingQueueLimit = 64
            sentinel.role = "sentinel"
            var logger = self.logger
            logger[metadataKey: "sentinel"] = "\(address)"
            sentinels.append(RedisClient(configuration: sentinel, loop: loop, logger: logger))
        }
        search()
        let count = configuration.sentinels.count
        subscriptions = Array(repeating: nil, count: count)
        subscriptionFailures = Array(repeating: 0, count: count)
        resubscribeTimers = Array(repeating: nil, count: count)
        if configuration.followsAnnouncements {
            for index in 0..<count { subscribe(index) }
        }
    }

    func stop() {
        loop.preconditionInLoop()
        guard !stopped else { return }
        stopped = true
        nextSearch?.timer.cancel()
        nextSearch = nil
        for timer in resubscribeTimers { timer?.cancel() }
        resubscribeTimers = []
        for subscription in subscriptions { subscription?.cancel() }
        subscriptions = []
        probe?.client.close()
        probe = nil
        for sentinel in sentinels { sentinel.close() }
    }

    /// A command on the primary of `generation` failed: search again soon (from any thread; cheap when repeated).
    func suspect(generation: Int) {
        guard suspicionQueued.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
            .exchanged else { return }
        loop.execute { [self] in
            suspicionQueued.store(false, ordering: .releasing)
            // A client of an earlier primary fails its last commands as it is closed: nothing to learn from it.
            guard generation == state.generation, !stopped else { return }
            if searching {
                searchAgain = true
                return
            }
            // At most one search per interval: under load a dead primary fails many commands at once.
            let earliest = (lastSearchStart ?? .now) + Self.suspicionInterval
            if lastSearchStart == nil || earliest <= .now {
                search()
            } else {
                planSearch(at: earliest)
            }
        }
    }

    /// Plans a search at `instant`, unless one is planned earlier already.
    private func planSearch(at instant: ContinuousClock.Instant) {
        if let nextSearch {
            guard instant < nextSearch.at else { return }
            nextSearch.timer.cancel()
        }
        let timer = loop.schedule(after: max(.zero, instant - .now)) { [self] in
            nextSearch = nil
            search()
        }
        nextSearch = (timer, instant)
    }

    // MARK: Searching

    /// Starts a search (or asks the running one to go again when it ends).
    private func search(hint: RedisAddress? = nil) {
        loop.preconditionInLoop()
        guard !stopped else { return }
        if let hint { self.hint = hint }
        guard !searching else {
            searchAgain = true
            return
        }
        nextSearch?.timer.cancel()
        nextSearch = nil
        searching = true
        lastSearchStart = .now
        let hint = self.hint
        self.hint = nil
        Task(executorPreference: loop) { [self] in
            let outcome = await findPrimary(checkingFirst: hint)
            searchEnded(outcome)
        }
    }

    private enum Outcome {
        case found(RedisAddress)
        case failed(String)
    }

    private func findPrimary(checkingFirst hint: RedisAddress?) async -> Outcome {
        if let promotion {
            if ContinuousClock.now < promotion.until {
                switch await role(of: promotion.address) {
                case .master: return .found(promotion.address)
                case .other(let why): return .failed("a failover is in progress: \(promotion.address) is being "
                                                     + "promoted (\(why))")
                }
            }
            // Not promoted in time (the failover may have been aborted): ask the sentinels again.
            self.promotion = nil
            state.release()
            logger.warning("the replica being promoted did not become the primary in time; asking the sentinels",
                           metadata: ["replica": "\(promotion.address)"])
        }
        var problems: [String] = []
        // Addresses already found wanting in this search: sentinels usually agree, so ask ROLE once per address.
        var rejected = Set<RedisAddress>()
        if let hint {
            switch await role(of: hint) {
            case .master: return .found(hint)
            case .other(let why):
                rejected.insert(hint)
                problems.append("announced primary \(hint): \(why)")
            }
        }
        if let leftBehind, ContinuousClock.now >= leftBehind.until { self.leftBehind = nil }
        var lagging = false
        let count = sentinels.count
        for step in 0..<count {
            guard !stopped else { return .failed("stopped") }
            let index = (preferred + step) % count
            let sentinel = configuration.sentinels[index]
            let address: RedisAddress
            do {
                let reply = try await sentinels[index].send("SENTINEL", "get-master-addr-by-name",
                                                            configuration.masterName)
                guard let named = Self.address(from: reply) else {
                    problems.append("sentinel \(sentinel) does not know a master named \"\(configuration.masterName)\"")
                    continue
                }
                address = named
            } catch {
                let text = "\(error)"
                // RedisClient's own advice (a password in the Redis URL) does not fit a sentinel.
                let hint = text.contains("NOAUTH") || text.contains("WRONGPASS")
                    ? " (the sentinels' own password goes in RedisSentinelConfiguration.sentinelPassword)" : ""
                problems.append("sentinel \(sentinel): \(text)\(hint)")
                continue
            }
            guard !stopped else { return .failed("stopped") }
            if address == leftBehind?.address {
                lagging = true
                problems.append("sentinel \(sentinel) still names \(address), the primary before the promotion")
                continue
            }
            if rejected.contains(address) {
                problems.append("sentinel \(sentinel) names \(address) too")
                continue
            }
            switch await role(of: address) {
            case .master:
                preferred = index
                return .found(address)
            case .other(let why):
                rejected.insert(address)
                problems.append("sentinel \(sentinel) names \(address), but \(why)")
            }
        }
        // The sentinels have not caught up with the promotion yet: keep the promoted primary while it says master.
        if lagging, let current = state.primary, !rejected.contains(current) {
            if case .master = await role(of: current) { return .found(current) }
        }
        return .failed(problems.joined(separator: "; "))
    }

    private func searchEnded(_ outcome: Outcome) {
        loop.preconditionInLoop()
        searching = false
        guard !stopped else { return }
        var staleFind = false
        switch outcome {
        case .found(let address) where promotion != nil && promotion?.address != address:
            // Begun before the promotion was announced, this search found the old primary: not any more.
            staleFind = true
        case .found(let address):
            failedSearches = 0
            if promotion?.address == address, let previous = state.primary, previous != address {
                leftBehind = (previous, .now + Self.announcementWait)
            } else if address != leftBehind?.address, address != state.primary {
                leftBehind = nil
            }
            promotion = nil
            if loggedFailure != nil {
                loggedFailure = nil
                logger.info("the sentinels name a working primary again", metadata: ["primary": "\(address)"])
            }
            adopt(address)
        case .failed(let why):
            failedSearches += 1
            state.setProblem(why)
            if loggedFailure != why {
                loggedFailure = why
                logger.warning("cannot find the Redis primary through the sentinels: \(why); retrying")
            } else {
                logger.debug("still no Redis primary: \(why)")
            }
        }
        // An announced address, or a promotion announced during this search, is checked at once; a failed command
        // asked for another look meanwhile: after the interval; otherwise a retry with back-off, or the periodic
        // check.
        if hint != nil || staleFind || (searchAgain && promotion != nil) {
            searchAgain = false
            search()
            return
        }
        var delay: Duration
        switch outcome {
        case .found: delay = configuration.checkInterval
        case .failed where promotion != nil: delay = Self.promotionPoll
        case .failed: delay = Self.backoff(after: failedSearches, from: Self.retryStart, upTo: Self.retryCap)
        }
        if searchAgain {
            searchAgain = false
            delay = min(delay, Self.suspicionInterval)
        }
        planSearch(at: (lastSearchStart ?? .now) + delay)
    }

    /// `start` after the first of `failures` failures, doubling with each further one, at most `cap`.
    private static func backoff(after failures: Int, from start: Duration, upTo cap: Duration) -> Duration {
        min(cap, start * (1 << min(failures - 1, 8)))
    }

    private func adopt(_ address: RedisAddress) {
        guard let change = state.switchPrimary(to: address) else { return }
        if let previous = change.previous {
            logger.warning("the Redis primary moved; switching clients",
                           metadata: ["from": "\(previous)", "to": "\(address)"])
        } else {
            logger.info("found the Redis primary", metadata: ["primary": "\(address)"])
        }
        // Commands still waiting on the old primary fail now (connectionClosed): the middleware answers 503.
        for client in change.clients { client.close() }
    }

    private enum Role {
        case master
        case other(String)
    }

    /// `ROLE` on `address`, with the primary's credentials and the attempt deadline.
    private func role(of address: RedisAddress) async -> Role {
        let client: RedisClient
        if let probe, probe.address == address {
            client = probe.client
        } else {
            probe?.client.close()
            var configuration = self.configuration.primary.pointing(to: address)
            configuration.commandTimeout = self.configuration.attemptTimeout
            configuration.onCommand = nil
            configuration.connectingQueueLimit = 16
            client = RedisClient(configuration: configuration, loop: loop, logger: quietLogger)
            probe = (address, client)
        }
        do {
            let reply = try await client.send("ROLE")
            guard case .array(let parts) = reply, let role = parts.first?.string else {
                return .other("ROLE answered \(reply.kindDescription)")
            }
            return role == "master" ? .master : .other("ROLE says \(role)")
        } catch {
            // Connect afresh next time rather than wait out this client's reconnect back-off.
            if let probe, probe.client === client {
                self.probe = nil
                client.close()
            }
            return .other("ROLE failed: \(error)")
        }
    }

    /// The address in a `get-master-addr-by-name` reply (`[ip, port]`), nil for a nil reply (unknown name).
    static func address(from reply: RedisValue) -> RedisAddress? {
        guard case .array(let parts) = reply, parts.count == 2, let host = parts[0].string, !host.isEmpty,
              let port = parts[1].integer, (1...65535).contains(port) else { return nil }
        return RedisAddress(host: host, port: port)
    }

    // MARK: Subscription

    private func subscribe(_ index: Int) {
        loop.preconditionInLoop()
        guard !stopped, subscriptions[index] == nil else { return }
        let subscription = SentinelSubscription(address: configuration.sentinels[index], index: index, monitor: self,
                                                loop: loop)
        subscriptions[index] = subscription
        subscription.start(channels: [Self.switchChannel, Self.promotionChannel],
                           password: configuration.sentinelPassword, tls: configuration.sentinelTLS,
                           timeout: configuration.attemptTimeout * 2)
    }

    /// A sentinel confirmed the subscription.
    func subscriptionConfirmed(_ subscription: SentinelSubscription) {
        loop.preconditionInLoop()
        guard !stopped, subscriptions[subscription.index] === subscription else { return }
        subscriptionFailures[subscription.index] = 0
        logger.debug("subscribed to failover announcements", metadata: ["sentinel": "\(subscription.address)"])
        // A failover may have happened while no subscription listened.
        search()
    }

    /// A message on one of the channels.
    func announced(_ payload: String, on channel: String) {
        loop.preconditionInLoop()
        guard !stopped else { return }
        let words = payload.split(separator: " ")
        switch channel {
        case Self.switchChannel:
            // <name> <old ip> <old port> <new ip> <new port>
            guard words.count == 5, words[0] == configuration.masterName,
                  let port = Int(words[4]), (1...65535).contains(port) else { return }
            let address = RedisAddress(host: String(words[3]), port: port)
            logger.info("a sentinel announced a failover", metadata: ["to": "\(address)"])
            // The sentinels have caught up (with a promotion followed early, or with a failover we missed).
            leftBehind = nil
            search(hint: address)
        case Self.promotionChannel:
            // slave <ip:port> <ip> <port> @ <name> <master ip> <master port>
            guard words.count == 8, words[0] == "slave", words[4] == "@", words[5] == configuration.masterName,
                  let port = Int(words[3]), (1...65535).contains(port) else { return }
            holdForPromotion(of: RedisAddress(host: String(words[2]), port: port))
        default:
            break
        }
    }

    private func holdForPromotion(of address: RedisAddress) {
        guard address != state.primary, promotion?.address != address else { return }
        promotion = (address, .now + configuration.promotionTimeout)
        logger.warning("a sentinel is promoting a replica; holding commands until it is the primary",
                       metadata: ["replica": "\(address)"])
        // Writes the old primary would acknowledge from now on are lost at its demotion: fail them fast instead.
        for client in state.hold(because: "a failover is in progress (\(address) is being promoted)") {
            client.close()
        }
        search()
    }

    func subscriptionClosed(_ subscription: SentinelSubscription, reason: String) {
        loop.preconditionInLoop()
        guard !stopped, subscriptions[subscription.index] === subscription else { return }
        let index = subscription.index
        subscriptions[index] = nil
        subscriptionFailures[index] += 1
        let delay = Self.backoff(after: subscriptionFailures[index], from: Self.resubscribeStart,
                                 upTo: Self.resubscribeCap)
        logger.debug("the subscription on \(subscription.address) ended: \(reason)")
        resubscribeTimers[index] = loop.schedule(after: delay) { [self] in
            guard !stopped else { return }
            resubscribeTimers[index] = nil
            subscribe(index)
        }
    }
}

// MARK: - The subscription connection

/// One connection to a sentinel, subscribed to `+switch-master`, reporting to its monitor.
final class SentinelSubscription: RedisSubscriberDelegate, @unchecked Sendable {
    // @unchecked Sendable: loop-confined like its RedisTransport; it crosses threads only inside loop.execute
    // closures that run on that same loop.
    let address: RedisAddress
    /// The sentinel's index in the configuration.
    let index: Int
    private let loop: EventLoop
    // Weak: the monitor owns this subscription.
    private weak var monitor: SentinelMonitor?
    private var connection: RedisTransport?
    private var confirmTimer: ScheduledTimer?
    private var failure: String?
    private var cancelled = false
    private var confirmed = false

    init(address: RedisAddress, index: Int, monitor: SentinelMonitor, loop: EventLoop) {
        self.address = address
        self.index = index
        self.monitor = monitor
        self.loop = loop
    }

    /// Connects, sends `AUTH` when there is a password, then `SUBSCRIBE channels`; closes if no confirmation comes
    /// within `timeout`.
    func start(channels: [String], password: String?, tls: RedisTLSConfiguration?, timeout: Duration) {
        loop.preconditionInLoop()
        let connection = RedisTransport(endpoint: RedisEndpoint(host: address.host, port: address.port, tls: tls),
                                        loop: loop, delegate: self)
        self.connection = connection
        do {
            if let password {
                let now = ContinuousClock.now
                let auth = PendingCommand(role: .handshake(.auth), name: "AUTH", start: now, deadline: now + timeout)
                try connection.send([Array("AUTH".utf8), Array(password.utf8)], command: auth)
            }
            try connection.subscribe(channels)
        } catch {
            fail("could not send SUBSCRIBE: \(error.description)")
            return
        }
        confirmTimer = loop.schedule(after: timeout) { [self] in
            confirmTimer = nil
            fail("no SUBSCRIBE confirmation within \(timeout)")
        }
    }

    /// Closes without telling the monitor.
    func cancel() {
        loop.preconditionInLoop()
        cancelled = true
        confirmTimer?.cancel()
        confirmTimer = nil
        connection?.free()
    }

    private func fail(_ reason: String) {
        if failure == nil { failure = reason }
        connection?.free()
    }

    // MARK: RedisSubscriberDelegate

    func transportDidConnect(_ connection: RedisTransport) {}

    func transport(_ connection: RedisTransport, didReceive reply: RedisValue?, for command: PendingCommand) {
        // The AUTH reply (the only regular command sent here).
        command.role = .done
        if case .error(let message)? = reply {
            fail("AUTH failed (\(message))")
        }
    }

    func transport(_ connection: RedisTransport, didReceivePush push: RedisValue) {
        guard case .array(let parts) = push, let kind = parts.first?.string else { return }
        switch kind {
        case "subscribe":
            // One confirmation per channel; the first one is enough.
            guard !confirmed else { return }
            confirmed = true
            confirmTimer?.cancel()
            confirmTimer = nil
            monitor?.subscriptionConfirmed(self)
        case "message" where parts.count == 3:
            if let channel = parts[1].string, let payload = parts[2].string {
                monitor?.announced(payload, on: channel)
            }
        default:
            break
        }
    }

    func transportDidClose(_ connection: RedisTransport, reason: String?) {
        confirmTimer?.cancel()
        confirmTimer = nil
        self.connection = nil
        guard !cancelled else { return }
        monitor?.subscriptionClosed(self, reason: failure ?? reason ?? "connection closed")
    }
}
