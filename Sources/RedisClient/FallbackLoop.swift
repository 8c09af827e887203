#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Dispatch
import EvServer
import Synchronization

/// The event loop for callers outside any loop (tests, scripts, startup checks): the calling task's
/// ``EventLoop/current`` when there is one, else a loop thread of its own, started on first use and joined when this
/// goes away. Redis connections belong to one loop, so the Redis clients made per loop need a loop even for such
/// callers.
package final class FallbackLoop: Sendable {
    private let name: String
    private let thread = Mutex<EventLoopThread?>(nil)

    /// - Parameter name: the name of the thread, when one is started.
    package init(name: String) {
        self.name = name
    }

    /// The calling task's loop, else the loop of this object's own thread (started now if need be).
    /// - Throws: when the thread cannot be started.
    package func current() throws -> EventLoop {
        if let loop = EventLoop.current { return loop }
        return try thread.withLock { thread in
            if let thread { return thread.loop }
            let started = try EventLoopThread(name: name)
            thread = started
            return started.loop
        }
    }

    /// Stops the thread, if one was started. Idempotent.
    package func shutdown() {
        thread.withLock { $0.take() }?.shutdownFromAnyThread()
    }

    deinit {
        shutdown()
    }
}

extension EventLoopThread {
    /// Stops the loop and joins the thread. Joining the thread from itself would trap, and the last reference to
    /// an owner may well go on that very thread: then the join happens on another thread.
    func shutdownFromAnyThread() {
        if loop.inLoop {
            DispatchQueue.global().async { self.shutdown() }
        } else {
            shutdown()
        }
    }
}
