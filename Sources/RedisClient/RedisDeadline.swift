#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// How long the current task may still wait on Redis in all, when something above the client has a budget of its
/// own: the session middleware gives each request one command timeout's worth of Redis time, shared by all of its
/// commands, so a request that sends two commands waits at most one timeout, not two.
///
/// Only the time spent waiting for replies counts (from sending a command to its reply, as ``RedisClient``
/// measures it), not the time the request spends elsewhere, decoding a large session or in its handler. A command
/// whose budget ends before its own `commandTimeout` fails with ``RedisClientError/timeout`` when the budget ends,
/// or at once when nothing is left. Set it with `RedisTimeBudget.$current.withValue(budget) { ... }`; child tasks
/// share it.
public final class RedisTimeBudget: Sendable {
    /// The current task's budget; nil: only each command's own timeout applies.
    @TaskLocal public static var current: RedisTimeBudget?

    /// The whole budget.
    public let limit: Duration
    private let spentNanoseconds = Atomic<Int64>(0)

    public init(limit: Duration) {
        self.limit = limit
    }

    /// Redis time used so far.
    public var spent: Duration { .nanoseconds(spentNanoseconds.load(ordering: .relaxed)) }

    /// Redis time left (zero or less: spent).
    public var remaining: Duration { limit - spent }

    /// Adds the wait of one command.
    public func record(_ wait: Duration) {
        let (seconds, attoseconds) = wait.components
        record(nanoseconds: seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// Adds the wait of one command, measured with ``RedisStopwatch``.
    func record(nanoseconds: Int64) {
        spentNanoseconds.add(nanoseconds, ordering: .relaxed)
    }
}

/// Deadlines for the current task's Redis work.
///
/// `current` is an absolute deadline set by code that retries a command (the cluster client runs every attempt of
/// one command under one deadline: `RedisDeadline.$current.withValue(deadline) { ... }`); ``RedisTimeBudget`` is the
/// request's share of Redis time. ``RedisClient`` honours the earlier of the two.
public enum RedisDeadline {
    /// An absolute deadline for the current task's Redis commands; nil: none.
    @TaskLocal public static var current: ContinuousClock.Instant?

    /// The earlier of ``current`` and the end of the current ``RedisTimeBudget`` (nil when there is neither).
    public static var effective: ContinuousClock.Instant? {
        effective(at: .now, budget: RedisTimeBudget.current)
    }

    /// ``effective`` as of `now`, for `budget`.
    static func effective(at now: @autoclosure () -> ContinuousClock.Instant,
                          budget: RedisTimeBudget?) -> ContinuousClock.Instant? {
        guard let budget else { return current }
        let end = now() + budget.remaining
        guard let current else { return end }
        return min(current, end)
    }
}

/// Runs `body` with one absolute deadline for all of its Redis commands, set as ``RedisDeadline/current`` and
/// passed in: ``RedisDeadline/effective`` when something above set one (or a ``RedisTimeBudget``), else now plus
/// `timeout`. Retries and a write's WAIT run under it, so none of them gets a fresh timeout of its own.
package func withOneDeadline<Result>(orAfter timeout: Duration,
                                     isolation: isolated (any Actor)? = #isolation,
                                     _ body: (ContinuousClock.Instant) async throws -> Result) async throws -> Result {
    let deadline = RedisDeadline.effective ?? .now + timeout
    return try await RedisDeadline.$current.withValue(deadline) { try await body(deadline) }
}

/// A monotonic clock in nanoseconds, for measuring waits in async code.
///
/// Not `ContinuousClock`: its `Instant` comes from a library built for evolution, so its size is unknown to the
/// compiler, and an async function keeps each instant it holds across an `await` in a task allocation of its own,
/// copied through value witnesses; and turning the `Duration` between two of them into nanoseconds
/// (`components`) is a 128-bit division. An `Int64` sits in the frame like any integer.
enum RedisStopwatch {
    static func nanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }
}
