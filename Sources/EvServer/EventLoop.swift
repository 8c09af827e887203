import Synchronization

/// One libevent `event_base` and the thread that runs it.
///
/// Everything that touches libevent, evhttp or hiredis objects owned by this loop must run on the loop thread;
/// code elsewhere hops with ``execute(_:)``. The loop is also a Swift `TaskExecutor`: a task started with
/// `Task(executorPreference: loop)` runs its nonisolated async code on the loop thread, so a handler can await a
/// Redis reply and go on touching loop-owned objects without any hop.
public final class EventLoop: @unchecked Sendable {
    // @unchecked Sendable: `eventBase`, the events and `local` are touched only on the loop thread (checked by
    // `preconditionInLoop`), `remote` and `isRunning` are behind Mutexes, and writing the wake-up descriptor is safe
    // from any thread.

    private enum Work: Sendable {
        case job(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    private struct Remote: ~Copyable {
        var work: [Work] = []
        var signalled = false
    }

    /// The loop's `event_base` (Libevent.swift lends it out with `withUnsafeEventBase`).
    let eventBase: EventBase
    private let remote = Mutex(Remote())
    private var local: [Work] = []
    private var drainScheduled = false
    // Whether a thread is inside run(): a second run() at once is misuse.
    private let isRunning = Mutex(false)

    /// A short name used in logs and thread names.
    public let name: String

    /// Creates a loop. Call ``run()`` on the thread that will own it, or use ``EventLoopThread``.
    /// - Parameter name: a name for logs.
    /// - Throws: ``LibeventError`` when libevent cannot create a base.
    public init(name: String = "loop") throws {
        self.name = name
        eventBase = try EventBase()
        try eventBase.attach(to: self)
    }

    // MARK: - Running

    /// Runs the loop on the calling thread until ``stop()``. The calling thread becomes the loop thread.
    public func run() {
        isRunning.withLock { isRunning in
            precondition(!isRunning, "EventLoop \(name) is already running")
            isRunning = true
        }
        CurrentLoopSlot.set(self)
        drain()
        eventBase.dispatch()
        drain()
        CurrentLoopSlot.set(nil)
        isRunning.withLock { $0 = false }
    }

    /// Stops the loop after the work already queued has run. Safe from any thread.
    public func stop() {
        execute { [self] in eventBase.breakLoop() }
    }

    /// Whether the calling thread is this loop's thread.
    public var inLoop: Bool {
        // A thread-local read, no lock: the slot names this loop only on the thread inside run().
        CurrentLoopSlot.holds(self)
    }

    /// Traps unless called on the loop thread. Every function that touches a C object owned by the loop calls it.
    public func preconditionInLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inLoop, "must be called on the thread of EventLoop \(name)", file: file, line: line)
    }

    /// The loop whose thread is the calling thread, if any.
    public static var current: EventLoop? {
        CurrentLoopSlot.loop
    }

    // MARK: - Work from anywhere

    /// Runs `work` on the loop thread, after the work already queued. Safe from any thread.
    /// - Parameter work: the closure to run; it may touch loop-owned objects.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        submit(.closure(work))
    }

    private func submit(_ work: Work) {
        if inLoop {
            local.append(work)
            if !drainScheduled {
                drainScheduled = true
                eventBase.activateDrain()
            }
            return
        }
        let mustSignal = remote.withLock { remote in
            remote.work.append(work)
            defer { remote.signalled = true }
            return !remote.signalled
        }
        if mustSignal { eventBase.signalWakeUp() }
    }

    /// Takes the work other threads queued, and runs it. Called by the wake-up event.
    func wake() {
        eventBase.clearWakeUp()
        let work = remote.withLock { remote in
            remote.signalled = false
            return remote.work.isEmptyOrSwap()
        }
        local.append(contentsOf: work)
        drain()
    }

    /// Runs the queued work. Called by the drain event.
    func drain() {
        drainScheduled = false
        var index = 0
        // Work may append more work; run until the queue is empty, then drop the storage in one go.
        while index < local.count {
            let item = local[index]
            index += 1
            switch item {
            case .job(let job): job.runSynchronously(on: asUnownedTaskExecutor())
            case .closure(let closure): closure()
            }
        }
        local.removeAll(keepingCapacity: true)
    }

    // MARK: - Timers

    /// Runs `work` on the loop thread after `delay`. Must be called on the loop thread.
    /// - Parameters:
    ///   - delay: how long to wait.
    ///   - work: what to run; it runs at most once.
    /// - Returns: a handle that cancels the timer; dropping it does not cancel.
    @discardableResult
    public func schedule(after delay: Duration, _ work: @escaping () -> Void) -> ScheduledTimer {
        preconditionInLoop()
        let timer = ScheduledTimer(loop: self, work: work)
        timer.arm(base: eventBase, delay: delay)
        return timer
    }
}

extension Array {
    fileprivate mutating func isEmptyOrSwap() -> [Element] {
        if isEmpty { return [] }
        var taken: [Element] = []
        swap(&taken, &self)
        return taken
    }
}

// MARK: - Executor

extension EventLoop: TaskExecutor {
    public func enqueue(_ job: consuming ExecutorJob) {
        submit(.job(UnownedJob(job)))
    }
}
