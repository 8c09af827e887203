import Logging
import Synchronization

/// What the connections to one Redis server have said in the log, shared by every connection a store makes to it
/// (one per event loop, and the one it connects at start), so that an outage reads as one story rather than one per
/// connection: the first failure is a warning, a new reason during the same outage is one info line, repeats are
/// debug; the first connection (at start, or after an outage) is an info line, the others' are debug.
///
/// The lock is taken only when a connection is made or fails, never per command.
package final class RedisConnectionLog: Sendable {
    private struct State {
        var down = false
        var connected = false
        /// Reasons already logged during this outage (a few: the first few distinct ones).
        var reasons: Set<String> = []
    }

    private let state = Mutex(State())

    package init() {}

    /// The level at which a failed attempt (or a lost connection) with `reason` is logged.
    func levelForFailure(_ reason: String) -> Logger.Level {
        state.withLock { state in
            if !state.down {
                state.down = true
                state.reasons = [reason]
                return .warning
            }
            guard state.reasons.count < 8, state.reasons.insert(reason).inserted else { return .debug }
            return .info
        }
    }

    /// The level at which a connection that became ready is logged.
    func levelForConnected() -> Logger.Level {
        state.withLock { state in
            defer {
                state.down = false
                state.connected = true
                state.reasons = []
            }
            return state.down || !state.connected ? .info : .debug
        }
    }
}
