import CEvent
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The only file (with HTTPServer.swift) that calls libevent. Everything above it sees `EventLoop`,
// which owns one `event_base` and the thread that runs it.

/// An error from libevent itself (a NULL or -1 where a resource was expected).
public struct LibeventError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One libevent `event_base` and the thread that runs it.
///
/// Everything that touches libevent, evhttp or hiredis objects owned by this loop must run on the loop thread;
/// code elsewhere hops with ``execute(_:)``. The loop is also a Swift `TaskExecutor`: a task started with
/// `Task(executorPreference: loop)` runs its nonisolated async code on the loop thread, so a handler can await a
/// Redis reply and go on touching loop-owned objects without any hop.
public final class EventLoop: @unchecked Sendable {
    // @unchecked Sendable: `base`, the events and `local` are touched only on the loop thread (checked by
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

    private let base: OpaquePointer
    private var wakeEvent: OpaquePointer?
    private var drainEvent: OpaquePointer?
    private let wakeUp: WakeUpChannel
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
        guard let config = event_config_new() else { throw LibeventError("event_config_new failed") }
        defer { event_config_free(config) }
        // No evthread locking: a base is only ever touched by its own thread. The changelist coalesces
        // add/del pairs into one epoll_ctl per fd per loop iteration (about half the syscalls per request).
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST.rawValue))
        guard let base = event_base_new_with_config(config) else {
            throw LibeventError("event_base_new_with_config failed")
        }
        self.base = base
        do {
            wakeUp = try WakeUpChannel()
        } catch {
            event_base_free(base)
            throw error
        }
        // passUnretained: the loop owns both events and frees them in deinit, before it goes.
        let context = Unmanaged.passUnretained(self).toOpaque()
        wakeEvent = event_new(base, wakeUp.readDescriptor, Int16(EV_READ | EV_PERSIST), onWake, context)
        drainEvent = event_new(base, -1, 0, onDrain, context)
        guard wakeEvent != nil, drainEvent != nil, event_add(wakeEvent, nil) == 0 else {
            if let wakeEvent { event_free(wakeEvent) }
            if let drainEvent { event_free(drainEvent) }
            wakeUp.close()
            event_base_free(base)
            throw LibeventError("event_new for the loop's wake-up failed")
        }
    }

    deinit {
        if let wakeEvent { event_free(wakeEvent) }
        if let drainEvent { event_free(drainEvent) }
        wakeUp.close()
        event_base_free(base)
    }

    // MARK: - Running

    /// Runs the loop on the calling thread until ``stop()``. The calling thread becomes the loop thread.
    public func run() {
        isRunning.withLock { isRunning in
            precondition(!isRunning, "EventLoop \(name) is already running")
            isRunning = true
        }
        EventLoop.setCurrent(self)
        drain()
        event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY)
        drain()
        EventLoop.setCurrent(nil)
        isRunning.withLock { $0 = false }
    }

    /// Stops the loop after the work already queued has run. Safe from any thread.
    public func stop() {
        execute { [self] in event_base_loopbreak(base) }
    }

    /// Whether the calling thread is this loop's thread.
    public var inLoop: Bool {
        // A thread-local read, no lock: the slot names this loop only on the thread inside run().
        pthread_getspecific(EventLoop.currentKey) == Unmanaged.passUnretained(self).toOpaque()
    }

    /// Traps unless called on the loop thread. Every function that touches a C object owned by the loop calls it.
    public func preconditionInLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inLoop, "must be called on the thread of EventLoop \(name)", file: file, line: line)
    }

    /// The loop whose thread is the calling thread, if any.
    public static var current: EventLoop? {
        guard let pointer = pthread_getspecific(currentKey) else { return nil }
        return Unmanaged<EventLoop>.fromOpaque(pointer).takeUnretainedValue()
    }

    private static let currentKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
        return key
    }()

    private static func setCurrent(_ loop: EventLoop?) {
        // passUnretained: the thread-local slot is cleared before run() returns, while the caller still holds the loop.
        pthread_setspecific(currentKey, loop.map { Unmanaged.passUnretained($0).toOpaque() })
    }

    // MARK: - Work from anywhere

    /// Runs `work` on the loop thread, after the work already queued. Safe from any thread.
    /// - Parameter work: the closure to run; it may touch loop-owned objects.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        submit(.closure(work))
    }

    /// Runs `body` with the raw `event_base`. Must be called on the loop thread (or before the loop runs).
    public func withUnsafeEventBase<Result>(_ body: (OpaquePointer) throws -> Result) rethrows -> Result {
        try body(base)
    }

    private func submit(_ work: Work) {
        if inLoop {
            local.append(work)
            if !drainScheduled {
                drainScheduled = true
                event_active(drainEvent, 0, 0)
            }
            return
        }
        let mustSignal = remote.withLock { remote in
            remote.work.append(work)
            defer { remote.signalled = true }
            return !remote.signalled
        }
        if mustSignal { wakeUp.signal() }
    }

    fileprivate func wake() {
        wakeUp.clear()
        let work = remote.withLock { remote in
            remote.signalled = false
            return remote.work.isEmptyOrSwap()
        }
        local.append(contentsOf: work)
        drain()
    }

    fileprivate func drain() {
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
        timer.arm(base: base, delay: delay)
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

// MARK: - Waking a loop from another thread

/// The descriptor another thread writes to wake a loop, and the one the loop watches. An eventfd on Linux (one
/// descriptor, one 8-byte counter); elsewhere the two ends of an `evutil_socketpair`. Not libevent's own
/// cross-thread notification: that needs `evthread_use_pthreads()`, which puts a mutex around every `event_base`
/// call, on the request path too; the loop's queue takes its one lock per batch (see `submit`).
private struct WakeUpChannel {
    /// The descriptor the loop reads (watched by its wake event).
    let readDescriptor: Int32
    /// The descriptor other threads write; the same one as `readDescriptor` for an eventfd.
    private let writeDescriptor: Int32

    init() throws(LibeventError) {
        #if os(Linux)
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw LibeventError("eventfd failed: errno \(errno)") }
        readDescriptor = fd
        writeDescriptor = fd
        #else
        var pair: [Int32] = [-1, -1]
        guard evutil_socketpair(AF_UNIX, SOCK_STREAM, 0, &pair) == 0 else {
            throw LibeventError("evutil_socketpair failed: errno \(errno)")
        }
        guard pair.allSatisfy({ evutil_make_socket_nonblocking($0) == 0 && evutil_make_socket_closeonexec($0) == 0 })
        else {
            let error = errno
            for fd in pair { evutil_closesocket(fd) }
            throw LibeventError("cannot make the loop's wake-up sockets nonblocking: errno \(error)")
        }
        readDescriptor = pair[0]
        writeDescriptor = pair[1]
        #endif
    }

    /// Makes the read end readable. Safe from any thread; the caller writes at most once per `clear()`.
    func signal() {
        #if os(Linux)
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(writeDescriptor, $0.baseAddress, 8) }
        #else
        var one: UInt8 = 1
        _ = send(writeDescriptor, &one, 1, 0)
        #endif
    }

    /// Consumes the signals written so far. On the loop thread.
    func clear() {
        #if os(Linux)
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { read(readDescriptor, $0.baseAddress, 8) }
        #else
        var bytes: (UInt64, UInt64) = (0, 0)
        _ = withUnsafeMutableBytes(of: &bytes) { recv(readDescriptor, $0.baseAddress, $0.count, 0) }
        #endif
    }

    func close() {
        evutil_closesocket(readDescriptor)
        if writeDescriptor != readDescriptor { evutil_closesocket(writeDescriptor) }
    }
}

// MARK: - Executor

extension EventLoop: TaskExecutor {
    public func enqueue(_ job: consuming ExecutorJob) {
        submit(.job(UnownedJob(job)))
    }
}

// MARK: - Timer

/// A one-shot timer on an ``EventLoop``. Cancel it on the loop thread.
public final class ScheduledTimer {
    private var event: OpaquePointer?
    private var work: (() -> Void)?
    private unowned let loop: EventLoop

    fileprivate init(loop: EventLoop, work: @escaping () -> Void) {
        self.loop = loop
        self.work = work
    }

    fileprivate func arm(base: OpaquePointer, delay: Duration) {
        // passRetained: the pending timer holds the +1 on its ScheduledTimer until it fires or is cancelled,
        // so the work runs even when the caller drops the handle.
        let context = Unmanaged.passRetained(self).toOpaque()
        event = event_new(base, -1, 0, onTimer, context)
        var tv = timeval(delay)
        precondition(event != nil && event_add(event, &tv) == 0, "event_add for a timer failed")
    }

    /// Whether the timer has neither fired nor been cancelled.
    public var isPending: Bool { work != nil }

    /// Cancels the timer if it has not fired. Must be called on the loop thread.
    public func cancel() {
        loop.preconditionInLoop()
        guard work != nil, let event else { return }
        event_del(event)
        finish()
    }

    fileprivate func fire() {
        let work = self.work
        finish()
        work?()
    }

    private func finish() {
        work = nil
        if let event { event_free(event) }
        event = nil
        Unmanaged.passUnretained(self).release()   // drops the +1 taken in arm()
    }
}

// MARK: - C callbacks

private func onWake(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    Unmanaged<EventLoop>.fromOpaque(context!).takeUnretainedValue().wake()
}

private func onDrain(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    Unmanaged<EventLoop>.fromOpaque(context!).takeUnretainedValue().drain()
}

private func onTimer(_ fd: Int32, _ what: Int16, _ context: UnsafeMutableRawPointer?) {
    Unmanaged<ScheduledTimer>.fromOpaque(context!).takeUnretainedValue().fire()
}

// MARK: - A loop on its own thread

/// An ``EventLoop`` running on a thread of its own, for servers with several loops and for tests.
public final class EventLoopThread: Sendable {
    /// The loop this thread runs.
    public let loop: EventLoop
    private let thread = Mutex<pthread_t?>(nil)

    /// Starts a thread that runs a new loop until ``shutdown()``.
    /// - Throws: ``LibeventError`` when the loop or the thread cannot be created.
    public init(name: String = "loop") throws {
        let loop = try EventLoop(name: name)
        self.loop = loop
        let started = DispatchSemaphore(value: 0)
        // passRetained: the new thread holds the +1 on this box until it has read it.
        let box = Unmanaged.passRetained(ThreadStart(loop: loop, started: started)).toOpaque()
        // pthread_t is an integer on Linux and a pointer that pthread_create takes as optional on Darwin; its start
        // routine's argument is optional on Linux only (the `as` spelling compiles on both).
        #if canImport(Darwin)
        var tid: pthread_t? = nil
        #else
        var tid = pthread_t()
        #endif
        let rc = pthread_create(&tid, nil, { raw in
            let start = Unmanaged<ThreadStart>.fromOpaque((raw as UnsafeMutableRawPointer?)!).takeRetainedValue()
            start.loop.execute { _ = start.started.signal() }
            start.loop.run()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<ThreadStart>.fromOpaque(box).release()
            throw LibeventError("pthread_create failed: \(rc)")
        }
        thread.withLock { $0 = tid }
        started.wait()
    }

    /// Stops the loop and joins its thread. Must not be called on the loop thread.
    public func shutdown() {
        precondition(!loop.inLoop, "EventLoopThread.shutdown() called on its own loop")
        guard let tid = thread.withLock({ tid -> pthread_t? in defer { tid = nil }; return tid }) else { return }
        loop.stop()
        pthread_join(tid, nil)
    }

    deinit { shutdown() }
}

private final class ThreadStart: Sendable {
    let loop: EventLoop
    let started: DispatchSemaphore
    init(loop: EventLoop, started: DispatchSemaphore) {
        self.loop = loop
        self.started = started
    }
}

extension timeval {
    /// `duration` as a timeval, negative durations as zero.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        // `.init`: suseconds_t is Int on Linux, Int32 on Darwin.
        self.init(tv_sec: .init(max(0, seconds)), tv_usec: .init(max(0, attoseconds) / 1_000_000_000_000))
    }
}
