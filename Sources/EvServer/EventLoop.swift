import Dispatch
import Synchronization

/// One libevent `event_base` and the thread that runs it.
///
/// Everything that touches libevent, evhttp or hiredis objects owned by this loop must run on the loop thread;
/// code elsewhere hops with ``execute(_:)``. The loop is also a Swift `TaskExecutor`: a task started with
/// `Task(executorPreference: loop)` runs its nonisolated async code on the loop thread, so a handler can await a
/// Redis reply and go on touching loop-owned objects without any hop.
///
/// A loop runs once: ``run()`` returns after ``stop()``, and the loop stays stopped. Work sent to a stopped loop
/// still runs; it never vanishes. ``execute(_:)`` and the executor's jobs then run on a thread borrowed from
/// Dispatch that acts as the loop thread while it runs them (``inLoop`` is true there and ``current`` is this loop),
/// one borrowed thread at a time, in the order the work came, exactly as the loop would have run it. So whatever
/// waits for work on the loop (`perform`, a task preferring the loop, a `close()` that hops to the loop) finishes,
/// and the loop's objects can still be closed. What a stopped loop never does again is wait for I/O or time: an
/// event, a socket or a ``ScheduledTimer`` on it never fires, so close what awaits them (servers, Redis clients)
/// before stopping the loop, or check ``isStopped``.
public final class EventLoop: @unchecked Sendable {
    // @unchecked Sendable: its vars are touched only on the loop thread (inLoop checks); the queue is behind a Mutex.

    private enum Work: Sendable {
        case job(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    private enum Phase {
        /// Not run yet: work waits for run().
        case idle
        /// run() is running the loop: work wakes it.
        case running
        /// run() has returned: work runs on a borrowed thread.
        case stopped
    }

    private struct Remote: ~Copyable {
        var work: [Work] = []
        /// Whether the wake-up descriptor was written since the loop last took `work`.
        var signalled = false
        var phase = Phase.idle
        /// Whether a borrowed thread is running a stopped loop's work (it takes what arrives meanwhile too).
        var borrowedThreadRunning = false
    }

    /// The loop's `event_base` (Libevent.swift lends it out with `withUnsafeEventBase`).
    let eventBase: EventBase
    private let remote = Mutex(Remote())
    /// Whether run() has returned; set on the loop thread before `remote.phase` says so. An Atomic because the
    /// loop's threads read it without the lock: the loop thread first, borrowed threads after it.
    private let stopped = Atomic(false)
    private var local: [Work] = []
    /// The batch a drain is running; kept between drains for its capacity.
    private var batch: [Work] = []
    private var drainScheduled = false
    private var draining = false

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

    /// Runs the loop on the calling thread until ``stop()``. The calling thread becomes the loop thread. A loop runs
    /// once: a second call traps.
    public func run() {
        remote.withLock { remote in
            precondition(remote.phase == .idle, "EventLoop \(name) runs only once")
            remote.phase = .running
        }
        CurrentLoopSlot.set(self)
        eventBase.dispatch()
        // Run what was sent after the stop, until the queue is empty; the same locked step that finds it empty marks
        // the loop stopped, so that no work falls between this thread and a borrowed one.
        while true {
            while !local.isEmpty { drain() }
            let late = remote.withLock { remote -> [Work]? in
                remote.signalled = false
                guard remote.work.isEmpty else { return remote.work.isEmptyOrSwap() }
                stopped.store(true, ordering: .releasing)
                remote.phase = .stopped
                return nil
            }
            guard let late else { break }
            local.append(contentsOf: late)
        }
        CurrentLoopSlot.set(nil)
    }

    /// Stops the loop after the work already queued has run: ``run()`` returns. Safe from any thread; on a stopped
    /// loop it does nothing.
    public func stop() {
        guard !isStopped else { return }
        execute { [self] in eventBase.breakLoop() }   // on a loop that stopped meanwhile, a no-op too
    }

    /// Whether ``run()`` has not begun: the loop's objects may be set up from any one thread until it does.
    var hasNotRun: Bool {
        remote.withLock { $0.phase == .idle }
    }

    /// Whether ``run()`` has returned. From then on, work sent to the loop runs on borrowed threads, and its events
    /// and timers never fire (see ``EventLoop``).
    public var isStopped: Bool {
        stopped.load(ordering: .acquiring)
    }

    /// Whether the calling thread is this loop's thread.
    public var inLoop: Bool {
        // A thread-local read, no lock: the slot names this loop only on the thread inside run(), or on the thread a
        // stopped loop borrowed, while it runs the loop's work.
        CurrentLoopSlot.holds(self)
    }

    /// Traps unless called on the loop thread. Every function that touches a C object owned by the loop calls it; in
    /// release builds too, since it costs a thread-local read and a compare.
    public func preconditionInLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inLoop, "must be called on the thread of EventLoop \(name)", file: file, line: line)
    }

    /// The loop whose thread is the calling thread, if any.
    public static var current: EventLoop? {
        CurrentLoopSlot.loop
    }

    // MARK: - Work from anywhere

    /// Runs `work` on the loop thread, after the work already queued. Safe from any thread; it never runs `work`
    /// before returning.
    ///
    /// On a stopped loop, `work` still runs: on a borrowed thread that acts as the loop thread (see ``EventLoop``).
    /// - Parameter work: the closure to run; it may touch loop-owned objects.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        submit(.closure(work))
    }

    private enum AfterSubmit {
        case nothing, wakeUp, borrowThread
    }

    private func submit(_ work: Work) {
        if inLoop, !stopped.load(ordering: .relaxed) {
            local.append(work)
            if !drainScheduled, !draining {   // a drain under way schedules the next one as it ends
                drainScheduled = true
                eventBase.activateDrain()
            }
            return
        }
        let next = remote.withLock { remote -> AfterSubmit in
            remote.work.append(work)
            switch remote.phase {
            case .idle, .running:
                defer { remote.signalled = true }
                return remote.signalled ? .nothing : .wakeUp
            case .stopped:
                defer { remote.borrowedThreadRunning = true }
                return remote.borrowedThreadRunning ? .nothing : .borrowThread
            }
        }
        switch next {
        case .nothing: break
        case .wakeUp: eventBase.signalWakeUp()   // if the loop stopped meanwhile, run() took the work anyway
        case .borrowThread: DispatchQueue.global().async { self.runStopped() }
        }
    }

    /// Runs a stopped loop's work on the calling (borrowed) thread, as the loop thread, until none is left.
    private func runStopped() {
        precondition(isStopped && !inLoop, "EventLoop \(name): a borrowed thread runs only a stopped loop's work")
        CurrentLoopSlot.set(self)
        defer { CurrentLoopSlot.set(nil) }
        while let work = remote.withLock({ remote -> [Work]? in
            guard !remote.work.isEmpty else {
                remote.borrowedThreadRunning = false
                return nil
            }
            return remote.work.isEmptyOrSwap()
        }) {
            for item in work { run(item) }
        }
    }

    /// Takes the work other threads queued, and runs it. Called by the wake-up event.
    func wake() {
        preconditionInLoop()
        eventBase.clearWakeUp()
        let work = remote.withLock { remote in
            remote.signalled = false
            return remote.work.isEmptyOrSwap()
        }
        local.append(contentsOf: work)
        drain()
    }

    /// Runs the work queued when it begins, and only that. Work queued meanwhile (a job that yields, a closure that
    /// sends itself again) waits for the next pass of libevent's loop, after it has polled I/O and run the timers
    /// that are due, so a task that keeps re-enqueueing itself cannot starve them. Called by the drain event.
    func drain() {
        preconditionInLoop()
        drainScheduled = false
        precondition(!draining, "EventLoop.drain() re-entered")
        swap(&local, &batch)
        draining = true
        for item in batch { run(item) }
        draining = false
        batch.removeAll(keepingCapacity: true)
        if !local.isEmpty {
            drainScheduled = true
            eventBase.scheduleDrainAfterPolling()
        }
    }

    private func run(_ item: Work) {
        switch item {
        case .job(let job): job.runSynchronously(on: asUnownedTaskExecutor())
        case .closure(let closure): closure()
        }
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
