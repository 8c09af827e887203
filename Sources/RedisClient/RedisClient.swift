import Crypto
import EvServer
import Logging
import Synchronization
import Tracing

/// An async Redis client: one connection (plain or TLS) on one ``EventLoop``, commands pipelined on it.
///
/// The client connects in the background as soon as it is created. After the TCP connect it sends
/// `AUTH [user] password` (when configured) and `SELECT db` (when not 0), or a `PING` when neither applies, and is
/// *ready* once Redis has answered; commands issued meanwhile queue behind that handshake (up to
/// ``RedisConfiguration/connectingQueueLimit``). When the connection is lost, pending commands fail with
/// ``RedisClientError/connectionClosed`` and the client reconnects by itself with exponential back-off (about
/// 50 ms doubling to 1 s, with jitter), until ``close()``; while it waits between attempts, commands fail at once
/// with ``RedisClientError/notConnected`` instead of piling up.
///
/// Every command has a deadline, ``RedisConfiguration/commandTimeout``: a command that misses it fails with
/// ``RedisClientError/timeout`` at once and its late reply is dropped. The connection is kept while replies still
/// flow; one that stayed silent for a whole timeout while a command waited is dropped and re-established. A `-ERR`
/// reply throws ``RedisError``. Replies are RESP2.
///
/// Thread safety: all methods may be called from any thread or task. The connection itself lives on `loop`'s
/// thread; a call from a task running on the loop (`Task(executorPreference: loop)`) is sent without any hop,
/// and calls from one such task are pipelined in the order they are made. Task cancellation does not cancel a
/// command that was sent (Redis may already have run it); it still ends by its deadline.
public final class RedisClient: Sendable {
    /// The loop whose thread owns the connection.
    public let loop: EventLoop
    public let configuration: RedisConfiguration
    // Internal, not private: RedisClient+Cluster.swift queues ASKING and its command back to back on it.
    let connection: RedisConnection

    /// Creates a client; it connects in the background and reconnects with back-off when the connection drops.
    /// Logs to `Logger(label: "evserver.redis")`.
    public convenience init(configuration: RedisConfiguration, loop: EventLoop) {
        self.init(configuration: configuration, loop: loop, logger: Logger(label: "evserver.redis"))
    }

    /// Creates a client that logs connects, losses and reconnects (once per change, never per command, never a
    /// password) to `logger`.
    public init(configuration: RedisConfiguration, loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.configuration = configuration
        let connection = RedisConnection(configuration: configuration, loop: loop, logger: logger)
        self.connection = connection
        if loop.inLoop {
            connection.start()
        } else {
            loop.execute { connection.start() }
        }
    }

    deinit {
        close()
    }

    /// Whether the connection is established and authenticated (the client is *ready*). Safe from any thread.
    public var isConnected: Bool {
        connection.isReady.load(ordering: .acquiring)
    }

    // MARK: - Commands

    // nonisolated(nonsending) (here, on get(_:refreshingExpiry:) and on eval): these run on the caller's executor,
    // so a request task on the loop does not go through an executor check on the way in and out of each call;
    // they hop to the loop themselves when needed.
    /// Sends one command (arguments are binary-safe) and returns the reply.
    /// - Parameter arguments: the command name and its arguments, e.g. `[Array("GET".utf8), Array(key.utf8)]`.
    /// - Returns: the reply, copied out of hiredis's reader; `.null` for a nil reply.
    /// - Throws: ``RedisError`` when Redis replies with an error; ``RedisClientError`` when no reply comes
    ///   (`.notConnected`, `.connectFailed`, `.connectionClosed`, `.timeout`) or for a command that would change
    ///   how the connection replies (`.unsupportedCommand`: SUBSCRIBE, MONITOR, CLIENT REPLY, SELECT, ...).
    nonisolated(nonsending) public func send(_ arguments: [[UInt8]]) async throws -> RedisValue {
        precondition(!arguments.isEmpty, "RedisClient.send needs at least a command name")
        let name: String
        if let known = Keyword.name(of: arguments[0]) {
            name = known
        } else {
            name = commandName(arguments[0])
            if let reason = unsupportedCommandReason(name, arguments) {
                throw RedisClientError.unsupportedCommand.with(reason)
            }
        }
        return try await send(RedisCommand(arguments), name: name)
    }

    /// Sends a command already encoded; `name` is its upper-case name (for metrics and messages).
    nonisolated(nonsending) func send(_ command: RedisCommand, name: String) async throws -> RedisValue {
        if let tracer = configuration.tracer, let context = ServiceContext.current {
            return try await sendTraced(command, name: name, tracer: tracer, context: context)
        }
        return try await sendUntraced(command, name: name)
    }

    /// ``send(_:name:)`` in a client span, a child of `context`'s: the command's name and the server's address,
    /// never its arguments (keys and values stay out of traces).
    @inline(never)   // off the untraced path
    nonisolated(nonsending) private func sendTraced(_ command: RedisCommand, name: String, tracer: any Tracer,
                                                    context: ServiceContext) async throws -> RedisValue {
        let span = tracer.startSpan(name, context: context, ofKind: .client)
        span.attributes["db.system.name"] = "redis"
        span.attributes["db.operation.name"] = name
        span.attributes["server.address"] = configuration.host
        span.attributes["server.port"] = configuration.port
        defer { span.end() }
        do {
            return try await sendUntraced(command, name: name)
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            throw error
        }
    }

    @inline(__always)   // into send and sendTraced: no async function more on the untraced path
    nonisolated(nonsending) private func sendUntraced(_ command: RedisCommand, name: String) async throws
        -> RedisValue
    {
        // The wait counts against the caller's budget, whether it ends in a reply or an error.
        guard let budget = RedisTimeBudget.current else {
            return try await withCheckedThrowingContinuation { continuation in
                submit(name: name, command: command, budget: nil, continuation: continuation)
            }
        }
        let start = RedisStopwatch.nanoseconds()
        defer { budget.record(nanoseconds: RedisStopwatch.nanoseconds() - start) }
        return try await withCheckedThrowingContinuation { continuation in
            submit(name: name, command: command, budget: budget, continuation: continuation)
        }
    }

    // Out of line and synchronous on purpose: `ContinuousClock.Instant` comes from a library built for evolution, so
    // its size is unknown to the compiler, and every instant that code inlined into `send` handled would be a task
    // allocation of send's async frame (they are made on entry, whether used or not). Here they live on the stack.
    @inline(never)
    private func submit(name: String, command: RedisCommand, budget: RedisTimeBudget?,
                        continuation: CheckedContinuation<RedisValue, any Error>) {
        // The earlier of the caller's deadline and the end of its budget (task-locals: read on the caller's task).
        let connection = self.connection
        guard !loop.isStopped else {
            // A stopped loop runs no I/O and no timer again: the command could never be answered nor time out.
            continuation.resume(throwing: RedisClientError.connectionClosed)
            return
        }
        if loop.inLoop {
            // One reading of the clock for both the budget's end and the command's start.
            let now = ContinuousClock.now
            connection.submit(name: name, command: command, budget: RedisDeadline.effective(at: now, budget: budget),
                              now: now, continuation: continuation)
        } else {
            let until = RedisDeadline.effective(at: .now, budget: budget)
            loop.execute {
                connection.submit(name: name, command: command, budget: until, now: .now, continuation: continuation)
            }
        }
    }

    /// Sends one command given as strings (each sent as its UTF-8 bytes) and returns the reply.
    /// - Throws: as ``send(_:)-([[UInt8]])``.
    public func send(_ arguments: String...) async throws -> RedisValue {
        try await send(arguments.map { Array($0.utf8) })
    }

    /// [GET](https://redis.io/commands/get/)
    /// - Returns: the value's bytes, or nil when the key does not exist.
    public func get(_ key: String) async throws -> [UInt8]? {
        try optionalBytes(await send([Keyword.get, Array(key.utf8)]), command: "GET")
    }

    /// [GETEX](https://redis.io/commands/getex/) key EX seconds: gets the value and refreshes its TTL at once
    /// (Redis 6.2+).
    /// - Returns: the value's bytes, or nil when the key does not exist (then no key is created).
    nonisolated(nonsending) public func get(_ key: String, refreshingExpiry seconds: Int) async throws -> [UInt8]? {
        try await get(prefix: key, id: "", refreshingExpiry: seconds)
    }

    /// ``get(_:refreshingExpiry:)`` of the key `prefix + id`, encoded straight from its parts: the session store
    /// sends this on every request, and the key need not become a String of its own.
    nonisolated(nonsending) package func get(prefix: String, id: String, refreshingExpiry seconds: Int) async throws -> [UInt8]? {
        var command = RedisCommand(count: 4, payload: prefix.utf8.count + id.utf8.count + 16)
        command.append(Keyword.getex)
        command.append(prefix, id)
        command.append(Keyword.ex)
        command.append(seconds)
        return try optionalBytes(await send(command, name: "GETEX"), command: "GETEX")
    }

    /// [SET](https://redis.io/commands/set/) key value [EX seconds]
    /// - Parameters:
    ///   - value: the bytes to store.
    ///   - seconds: time to live; nil keeps the key until deleted. Must be positive (Redis rejects 0).
    public func set(_ key: String, to value: [UInt8], expiresIn seconds: Int? = nil) async throws {
        var arguments = [Keyword.set, Array(key.utf8), value]
        if let seconds { arguments += [Keyword.ex, decimal(seconds)] }
        let reply = try await send(arguments)
        guard case .simpleString = reply else { throw unexpected(reply, command: "SET", expected: "OK") }
    }

    /// [EXPIRE](https://redis.io/commands/expire/); returns whether the key existed.
    @discardableResult
    public func expire(_ key: String, after seconds: Int) async throws -> Bool {
        let reply = try await send([Keyword.expire, Array(key.utf8), decimal(seconds)])
        guard case .integer(let value) = reply else { throw unexpected(reply, command: "EXPIRE", expected: "integer") }
        return value == 1
    }

    /// [DEL](https://redis.io/commands/del/); returns how many keys were removed. No keys: returns 0 without
    /// asking Redis.
    @discardableResult
    public func delete(_ keys: [String]) async throws -> Int {
        guard !keys.isEmpty else { return 0 }
        let reply = try await send([Keyword.del] + keys.map { Array($0.utf8) })
        guard case .integer(let value) = reply else { throw unexpected(reply, command: "DEL", expected: "integer") }
        return value
    }

    /// [SCAN](https://redis.io/commands/scan/) cursor MATCH pattern COUNT count
    /// - Parameters:
    ///   - cursor: `"0"` to start; then the cursor returned by the previous call.
    ///   - pattern: a glob such as `sess:*`, or nil for every key.
    ///   - count: a hint for how much work each call does.
    /// - Returns: the next cursor (`"0"` when the iteration is complete) and a batch of keys (keys may repeat
    ///   across batches, as SCAN guarantees only that every key present throughout is returned at least once).
    public func scan(cursor: String, match pattern: String?, count: Int) async throws -> (cursor: String, keys: [String]) {
        var arguments = [Keyword.scan, Array(cursor.utf8)]
        if let pattern { arguments += [Keyword.match, Array(pattern.utf8)] }
        arguments += [Keyword.count, decimal(count)]
        let reply = try await send(arguments)
        guard case .array(let parts) = reply, parts.count == 2, case .bulkString(let next) = parts[0],
              case .array(let items) = parts[1] else {
            throw unexpected(reply, command: "SCAN", expected: "[cursor, [keys]]")
        }
        var keys: [String] = []
        keys.reserveCapacity(items.count)
        for item in items {
            guard case .bulkString(let key) = item else {
                throw unexpected(item, command: "SCAN", expected: "bulk string key")
            }
            keys.append(String(decoding: key, as: UTF8.self))
        }
        return (String(decoding: next, as: UTF8.self), keys)
    }

    /// [PING](https://redis.io/commands/ping/)
    public func ping() async throws {
        let reply = try await send([Keyword.ping])
        guard case .simpleString = reply else { throw unexpected(reply, command: "PING", expected: "PONG") }
    }

    /// Runs a Lua script with [EVALSHA](https://redis.io/commands/evalsha/), falling back to
    /// [EVAL](https://redis.io/commands/eval/) when Redis does not have it cached yet (`NOSCRIPT`).
    /// - Parameters:
    ///   - script: the Lua source.
    ///   - keys: the keys the script touches (`KEYS[1]`, ...).
    ///   - arguments: the other arguments (`ARGV[1]`, ...).
    /// - Returns: the script's reply.
    /// - Throws: ``RedisError`` when the script fails; ``RedisClientError`` as for ``send(_:)-([[UInt8]])``.
    public func eval(script: String, keys: [String], arguments: [String] = []) async throws -> RedisValue {
        try await eval(RedisScript(script), keys: keys, arguments: arguments.map { Array($0.utf8) })
    }

    /// Runs a prepared ``RedisScript`` (its SHA1 computed once) with EVALSHA, falling back to EVAL on `NOSCRIPT`.
    /// - Parameters:
    ///   - script: the script.
    ///   - keys: the keys the script touches (`KEYS[1]`, ...).
    ///   - arguments: the other arguments, binary-safe (`ARGV[1]`, ...).
    /// - Returns: the script's reply.
    nonisolated(nonsending) public func eval(_ script: RedisScript, keys: [String], arguments: [[UInt8]] = []) async throws -> RedisValue {
        try await script.run(keys: keys, arguments: arguments) { try await send($0) }
    }

    // MARK: - Closing

    /// Closes the connection; pending commands fail with `RedisClientError.connectionClosed`, and so does every
    /// later command. No reconnect follows. Idempotent; safe from any thread (from elsewhere than the loop, the
    /// close happens on the loop shortly after this returns).
    public func close() {
        let connection = self.connection
        if loop.inLoop {
            connection.close()
        } else {
            loop.execute { connection.close() }
        }
    }
}
