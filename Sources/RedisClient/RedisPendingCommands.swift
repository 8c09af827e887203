import EvServer

// The commands a connection has sent and waits on: each with its caller (or handshake step), in a FIFO.

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

// Link's state is `@exclusivity(unchecked)`: it is used on its connection's loop thread only, one access at a time.

/// The commands sent on one connection and not yet answered, oldest first.
///
/// Redis answers in order, so a reply always belongs to the first entry. Deadlines grow with the order too,
/// which is why one timer (armed for the oldest live entry) serves every command, and why the entries that
/// already timed out form a prefix (`expired`).
final class Link {
    let connection: RedisTransport
    @exclusivity(unchecked) private var entries: [PendingCommand?] = []
    @exclusivity(unchecked) private var head = 0
    /// How many of the first entries already timed out (their late replies are still due).
    @exclusivity(unchecked) var expired = 0
    /// Handshake steps not yet answered; the link is ready at 0.
    @exclusivity(unchecked) var handshakeRemaining = 0
    /// Why the client decided to drop this connection (timeout, failed AUTH, close); reported instead of the transport's.
    @exclusivity(unchecked) var failure: String?
    /// The server's version from the handshake's INFO, for the log.
    var serverVersion: String?
    /// How many replies (not NULLs) arrived: a connection that answers nothing while a command times out is
    /// considered dead (a count, not the time of the last reply: cheaper to keep on every reply).
    @exclusivity(unchecked) var replies = 0

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
