import Crypto
import EvServer
import Logging
import Synchronization

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

// MARK: - Scripts

/// A Lua script and its SHA1, computed once (the name EVALSHA knows it by).
public struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    public let source: String
    /// The lower-case hex SHA1 of the source.
    public let sha1: String
    /// `sha1` as bytes, the argument of every EVALSHA.
    private let sha1Bytes: [UInt8]

    /// Prepares a script.
    public init(_ source: String) {
        self.source = source
        self.sha1Bytes = RedisScript.sha1Hex(Array(source.utf8))
        self.sha1 = String(decoding: sha1Bytes, as: UTF8.self)
    }

    /// EVALSHA of the script with `keys` and `arguments` through `send`, then EVAL when the server answers
    /// `NOSCRIPT` (first use, a restart, a failover, SCRIPT FLUSH: EVAL caches it again). The one place that
    /// builds the two commands, whatever sends them (a client, a cluster node, a write followed by WAIT).
    nonisolated(nonsending) func run(
        keys: [String], arguments: [[UInt8]],
        through send: nonisolated(nonsending) ([[UInt8]]) async throws -> RedisValue
    ) async throws -> RedisValue {
        try await run(keyBytes: keys.map { Array($0.utf8) }, arguments: arguments, through: send)
    }

    /// ``run(keys:arguments:through:)`` with the keys as bytes.
    nonisolated(nonsending) package func run(
        keyBytes keys: [[UInt8]], arguments: [[UInt8]],
        through send: nonisolated(nonsending) ([[UInt8]]) async throws -> RedisValue
    ) async throws -> RedisValue {
        // Each command built in one array (not a tail joined to a head): a session save sends one on every write.
        func command(_ name: [UInt8], _ script: [UInt8]) -> [[UInt8]] {
            var command: [[UInt8]] = []
            command.reserveCapacity(3 + keys.count + arguments.count)
            command.append(name)
            command.append(script)
            command.append(decimal(keys.count))
            command.append(contentsOf: keys)
            command.append(contentsOf: arguments)
            return command
        }
        do {
            return try await send(command(Keyword.evalsha, sha1Bytes))
        } catch let error as RedisError where error.code == "NOSCRIPT" {
            return try await send(command(Keyword.eval, Array(source.utf8)))
        }
    }

    /// The lower-case hex SHA1 of `bytes`, as Lua's `redis.sha1hex` and `SCRIPT LOAD` write it.
    package static func sha1Hex(_ bytes: [UInt8]) -> [UInt8] {
        // Digits computed, not looked up in a table built per call (every session save hashes its loaded value).
        func digit(_ value: UInt8) -> UInt8 { value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10 }
        var text: [UInt8] = []
        text.reserveCapacity(40)
        for byte in Insecure.SHA1.hash(data: bytes) {
            text.append(digit(byte >> 4))
            text.append(digit(byte & 0x0F))
        }
        return text
    }
}

// MARK: - Arguments

/// Command names as bytes, built once.
/// Command names and keywords as bytes, made once (the request path sends them on every call).
package enum Keyword {
    static let get = Array("GET".utf8)
    static let getex = Array("GETEX".utf8)
    package static let set = Array("SET".utf8)
    package static let ex = Array("EX".utf8)
    static let expire = Array("EXPIRE".utf8)
    package static let del = Array("DEL".utf8)
    static let scan = Array("SCAN".utf8)
    static let match = Array("MATCH".utf8)
    static let count = Array("COUNT".utf8)
    static let ping = Array("PING".utf8)
    static let eval = Array("EVAL".utf8)
    static let evalsha = Array("EVALSHA".utf8)
    static let auth = Array("AUTH".utf8)
    static let select = Array("SELECT".utf8)
    static let wait = Array("WAIT".utf8)
    static let info = Array("INFO".utf8)
    static let server = Array("server".utf8)

    /// The commands the session store sends on every request, with their names: a command given as one of these
    /// arrays (the same buffer, so the comparison ends at once) needs neither case folding nor the refusal check.
    private static let hot: [([UInt8], String)] = [
        (getex, "GETEX"), (evalsha, "EVALSHA"), (eval, "EVAL"), (set, "SET"), (get, "GET"), (del, "DEL"),
        (expire, "EXPIRE"), (ping, "PING"), (wait, "WAIT"),
    ]

    /// The name of `command` when it is one of ``hot``'s keywords (upper case, as this client sends them), else nil.
    static func name(of command: [UInt8]) -> String? {
        for (keyword, name) in hot where keyword == command { return name }
        return nil
    }
}

/// `value` in decimal, as Redis expects numbers.
package func decimal(_ value: Int) -> [UInt8] {
    var digits: [UInt8] = []
    digits.reserveCapacity(20)
    appendDecimal(value, to: &digits)
    return digits
}

/// Appends the decimal digits of `value` (and its sign) to `bytes`, without a String on the way.
private func appendDecimal(_ value: Int, to bytes: inout [UInt8]) {
    // Most are argument lengths and counts below 100: no loop for those.
    if value >= 0, value < 100 {
        if value >= 10 { bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value / 10)) }
        bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value % 10))
        return
    }
    if value < 0 { bytes.append(UInt8(ascii: "-")) }
    let magnitude = value.magnitude
    var divisor: UInt = 1
    while divisor <= magnitude / 10 { divisor *= 10 }
    while divisor > 0 {
        bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: magnitude / divisor % 10))
        divisor /= 10
    }
}

/// How many bytes `appendDecimal` writes for `value`.
private func decimalLength(_ value: Int) -> Int {
    var length = value < 0 ? 2 : 1
    var rest = value.magnitude
    while rest >= 10 {
        rest /= 10
        length += 1
    }
    return length
}

/// A command encoded as Redis reads it (RESP: `*<count>\r\n`, then `$<length>\r\n<bytes>\r\n` per argument),
/// which the transport writes as is.
///
/// Built in one buffer straight from its parts: no array per argument, and no second pass in which a library formats
/// an argv with printf-style calls into a string of its own. Binary-safe: every argument is sent with its length.
struct RedisCommand: Sendable {
    /// The RESP bytes; complete once every announced argument was appended.
    private(set) var bytes: [UInt8]
    /// Arguments announced in the header and not appended yet.
    private var missing: Int

    /// Starts a command of `count` arguments (the name included), with room for `payload` bytes of arguments.
    init(count: Int, payload: Int) {
        precondition(count > 0, "a Redis command needs at least its name")
        bytes = []
        // Per argument: "$", up to 20 digits, two CRLFs.
        bytes.reserveCapacity(payload + 24 * (count + 1))
        missing = count
        bytes.append(UInt8(ascii: "*"))
        appendDecimal(count, to: &bytes)
        appendNewline()
    }

    /// Encodes `arguments`, the command name first.
    init(_ arguments: [[UInt8]]) {
        var payload = 0
        for argument in arguments { payload += argument.count }
        self.init(count: arguments.count, payload: payload)
        for argument in arguments { append(argument) }
    }

    var isComplete: Bool { missing == 0 }

    mutating func append(_ argument: [UInt8]) {
        startArgument(length: argument.count)
        bytes.append(contentsOf: argument)
        appendNewline()
    }

    /// Appends the UTF-8 bytes of `argument`.
    mutating func append(_ argument: String) {
        startArgument(length: argument.utf8.count)
        bytes.append(contentsOf: argument.utf8)
        appendNewline()
    }

    /// Appends one argument made of the UTF-8 bytes of `first` then those of `second` (a prefixed key).
    mutating func append(_ first: String, _ second: String) {
        startArgument(length: first.utf8.count + second.utf8.count)
        bytes.append(contentsOf: first.utf8)
        bytes.append(contentsOf: second.utf8)
        appendNewline()
    }

    /// Appends `value` in decimal, as Redis expects numbers.
    mutating func append(_ value: Int) {
        startArgument(length: decimalLength(value))
        appendDecimal(value, to: &bytes)
        appendNewline()
    }

    private mutating func startArgument(length: Int) {
        precondition(missing > 0, "more arguments than the RedisCommand announced")
        missing -= 1
        bytes.append(UInt8(ascii: "$"))
        appendDecimal(length, to: &bytes)
        appendNewline()
    }

    private mutating func appendNewline() {
        bytes.append(UInt8(ascii: "\r"))
        bytes.append(UInt8(ascii: "\n"))
    }
}

/// The command name in upper case ASCII, for metrics, errors and the checks below.
func commandName(_ bytes: [UInt8]) -> String {
    String(decoding: bytes.lazy.map { (0x61...0x7A).contains($0) ? $0 - 0x20 : $0 }, as: UTF8.self)
}

/// Why a command cannot go through this client, or nil. These commands change how the connection replies (or
/// its state behind the client's back), which a pipelined request/reply connection cannot follow: the transport
/// would deliver several replies to one callback, or abort on a reply nobody asked for.
private func unsupportedCommandReason(_ name: String, _ arguments: [[UInt8]]) -> String? {
    switch name {
    case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE":
        return "\(name) turns the connection into a pub/sub connection; use a dedicated connection"
    case "MONITOR", "SYNC", "PSYNC":
        return "\(name) streams replies nobody asked for; use a dedicated connection"
    case "SELECT", "RESET":
        return "\(name) would change the connection's database or login behind the client; "
            + "set the database in RedisConfiguration"
    case "CLIENT" where arguments.count > 1 && commandName(arguments[1]) == "REPLY":
        return "CLIENT REPLY would make replies stop matching their commands"
    case "HELLO" where arguments.count > 1 && arguments[1] != Array("2".utf8):
        return "only RESP2 is supported (HELLO 2)"
    default:
        return nil
    }
}

// MARK: - The connection state machine

/// One command given to the transport, handed back with its reply.
final class PendingCommand {
    // The caller's continuation is a `let` beside the role rather than the payload of `.caller`: the continuation's
    // layout is not known at compile time (a library built for evolution), so an enum carrying it is copied and
    // assigned through value witnesses on every look at the role, where this one is a plain byte.
    enum Role {
        /// A caller's command, waiting for its reply (`caller`).
        case caller
        /// A step of the connection handshake (AUTH, SELECT, PING).
        case handshake(HandshakeStep)
        /// Completed (answered, timed out or failed): a late reply is dropped.
        case done
    }

    var role: Role
    private let caller: CheckedContinuation<RedisValue, any Error>?
    /// Upper-case command name, for metrics and messages.
    let name: String
    let start: ContinuousClock.Instant
    let deadline: ContinuousClock.Instant
    /// How many replies the connection had received when this command was queued: the same count when it times
    /// out means the connection has been silent since.
    let repliesBefore: Int
    /// Fires at the caller's budget when that ends well before `deadline`; cancelled when the command completes.
    var budgetTimer: ScheduledTimer?

    /// A step of a handshake (or another command without a caller), `role` `.handshake`.
    init(role: Role, name: String, start: ContinuousClock.Instant, deadline: ContinuousClock.Instant,
         repliesBefore: Int = 0) {
        self.role = role
        self.caller = nil
        self.name = name
        self.start = start
        self.deadline = deadline
        self.repliesBefore = repliesBefore
    }

    /// A caller's command.
    init(caller: CheckedContinuation<RedisValue, any Error>, name: String, start: ContinuousClock.Instant,
         deadline: ContinuousClock.Instant, repliesBefore: Int) {
        self.role = .caller
        self.caller = caller
        self.name = name
        self.start = start
        self.deadline = deadline
        self.repliesBefore = repliesBefore
    }

    /// The caller still waiting, taken: from now on the command is done (a late reply is dropped) and its budget
    /// timer is cancelled. Nil when it was done already, or is a handshake step. Loop thread only.
    func takeCaller() -> CheckedContinuation<RedisValue, any Error>? {
        guard case .caller = role, let caller else { return nil }
        role = .done
        if let budgetTimer {
            budgetTimer.cancel()
            self.budgetTimer = nil
        }
        return caller
    }

    /// Fails a caller still waiting. Only for paths that cannot happen if the transport keeps its promises.
    func abandon() {
        takeCaller()?.resume(throwing: RedisClientError.connectionClosed)
    }
}

enum HandshakeStep {
    case auth
    case select
    /// `INFO server`: proves Redis answers, and names its version for the log.
    case info
}

/// The commands sent on one connection and not yet answered, oldest first.
///
/// Redis answers in order, so a reply always belongs to the first entry. Deadlines grow with the order too,
/// which is why one timer (armed for the oldest live entry) serves every command, and why the entries that
/// already timed out form a prefix (`expired`).
private final class Link {
    let connection: RedisTransport
    private var entries: [PendingCommand?] = []
    private var head = 0
    /// How many of the first entries already timed out (their late replies are still due).
    var expired = 0
    /// Handshake steps not yet answered; the link is ready at 0.
    var handshakeRemaining = 0
    /// Why the client decided to drop this connection (timeout, failed AUTH, close); reported instead of the transport's.
    var failure: String?
    /// The server's version from the handshake's INFO, for the log.
    var serverVersion: String?
    /// How many replies (not NULLs) arrived: a connection that answers nothing while a command times out is
    /// considered dead (a count, not the time of the last reply: cheaper to keep on every reply).
    var replies = 0

    init(connection: RedisTransport) {
        self.connection = connection
    }

    var count: Int { entries.count - head }

    /// The oldest command that has not timed out yet.
    var liveHead: PendingCommand? {
        expired < count ? entries[head + expired] : nil
    }

    func append(_ command: PendingCommand) {
        entries.append(command)
    }

    /// Removes `command`, normally the first entry.
    func remove(_ command: PendingCommand) {
        if head < entries.count, entries[head] === command {
            entries[head] = nil
            head += 1
            if expired > 0 { expired -= 1 }
        } else if let index = entries[head...].firstIndex(where: { $0 === command }) {
            // Out of order: cannot happen with the transport, handled so that bookkeeping stays right regardless.
            if index - head < expired { expired -= 1 }
            entries.remove(at: index)
        }
        compactTakenPrefix(&entries, head: &head)
    }

    /// Empties the queue, returning what was in it.
    func removeAll() -> [PendingCommand] {
        defer {
            entries.removeAll()
            head = 0
            expired = 0
        }
        return entries[head...].compactMap { $0 }
    }
}

/// For a queue kept as an array and the index of its head (`entries[..<head]` taken, nil): empties the array once
/// everything is taken, and drops the taken prefix once it is long and at least half the array (amortized O(1) per
/// entry, no copy per take).
@inline(__always)
func compactTakenPrefix<Element>(_ entries: inout [Element?], head: inout Int) {
    if head == entries.count {
        entries.removeAll(keepingCapacity: true)
        head = 0
    } else if head >= 1024, head * 2 >= entries.count {
        entries.removeFirst(head)
        head = 0
    }
}

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

    private var phase = Phase.idle
    private var link: Link?
    private var deadlineTimer: ScheduledTimer?
    private var retryTimer: ScheduledTimer?
    /// Failed attempts since the last ready connection (drives the back-off).
    private var attempts = 0
    /// Why the last attempt failed or the connection was lost; shown with `.notConnected`.
    private var lastError: String?
    /// When the current outage began (nil while ready, and before the first connection).
    private var outageStart: ContinuousClock.Instant?
    private var everReady = false
    /// Decides how loudly connects and failures are logged, shared with the other connections of the same store.
    private let connectionLog: RedisConnectionLog

    init(configuration: RedisConfiguration, loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.logger[metadataKey: "redis"] = "\(configuration.redactedURL)"
        self.connectionLog = configuration.connectionLog ?? RedisConnectionLog()
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
        continuation.resume(throwing: error)
    }

    private func record(_ name: String, since start: ContinuousClock.Instant, outcome: RedisCommandOutcome) {
        guard let onCommand = configuration.onCommand else { return }
        onCommand(name, ContinuousClock.now - start, outcome)
    }
}

/// Whole milliseconds, for messages.
func milliseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1000 + attoseconds / 1_000_000_000_000_000
}
