import Dispatch
import Synchronization

/// An ``EventLoop`` running on a thread of its own, for servers with several loops and for tests.
public final class EventLoopThread: Sendable {
    /// The loop this thread runs.
    public let loop: EventLoop
    /// The thread, until it is joined or detached.
    private let thread: Mutex<LoopThread?>

    /// Starts a thread that runs a new loop until ``shutdown()``, or until the last reference to this object goes.
    /// - Throws: ``LibeventError`` when the loop or the thread cannot be created.
    public init(name: String = "loop") throws {
        let loop = try EventLoop(name: name)
        self.loop = loop
        let started = DispatchSemaphore(value: 0)
        // The thread holds the loop until run() returns.
        let thread = try LoopThread.start {
            loop.execute { _ = started.signal() }
            loop.run()
        }
        self.thread = Mutex(thread)
        started.wait()
    }

    /// Stops the loop and joins its thread. Must not be called on the loop's own thread, which cannot join itself.
    public func shutdown() {
        guard let thread = thread.withLock({ $0.take() }) else { return }
        precondition(!thread.isCurrent, "EventLoopThread.shutdown() called on its own loop thread")
        loop.stop()
        thread.join()
    }

    deinit {
        // The last reference may go on the loop thread itself (work there held it). That thread cannot join itself:
        // stop the loop and let the thread end on its own, once run() returns.
        guard let thread = thread.withLock({ $0.take() }) else { return }
        loop.stop()
        if thread.isCurrent {
            thread.detach()
        } else {
            thread.join()
        }
    }
}
