import Dispatch
import Synchronization

/// An ``EventLoop`` running on a thread of its own, for servers with several loops and for tests.
public final class EventLoopThread: Sendable {
    /// The loop this thread runs.
    public let loop: EventLoop
    private let thread: Mutex<LoopThread?>

    /// Starts a thread that runs a new loop until ``shutdown()``.
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

    /// Stops the loop and joins its thread. Must not be called on the loop thread.
    public func shutdown() {
        precondition(!loop.inLoop, "EventLoopThread.shutdown() called on its own loop")
        guard let thread = thread.withLock({ $0.take() }) else { return }
        loop.stop()
        thread.join()
    }

    deinit { shutdown() }
}
