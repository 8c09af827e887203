import CEvent

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The event loop's C interop, and nothing else: libevent's `event_base` and events, the wake-up descriptor, the
// thread-local slot that names a thread's loop, and the loop thread itself (pthread). EventLoop.swift,
// EventLoopThread.swift and ScheduledTimer.swift above it work with Swift values only. (The evhttp calls are in
// HTTPServer.swift, the Redis bufferevents' in RedisClient's RedisSocket.swift.)

/// An error from libevent itself (a NULL or -1 where a resource was expected).
public struct LibeventError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

// MARK: - The event base

/// One libevent `event_base` with the two events every loop has: the wake-up descriptor's read event (work sent from
/// other threads) and the drain event (work queued on the loop thread). Touched only on the loop thread, except
/// ``signalWakeUp()``, which any thread may call.
final class EventBase {
    let pointer: OpaquePointer
    private let wakeUp: WakeUpChannel
    private var wakeEvent: OpaquePointer?
    private var drainEvent: OpaquePointer?

    init() throws(LibeventError) {
        guard let config = event_config_new() else { throw LibeventError("event_config_new failed") }
        defer { event_config_free(config) }
        // No evthread locking: a base is only ever touched by its own thread. The changelist coalesces
        // add/del pairs into one epoll_ctl per fd per loop iteration (about half the syscalls per request).
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST.rawValue))
        guard let base = event_base_new_with_config(config) else {
            throw LibeventError("event_base_new_with_config failed")
        }
        pointer = base
        do {
            wakeUp = try WakeUpChannel()
        } catch {
            event_base_free(base)
            throw error
        }
    }

    /// Creates the wake-up and drain events, whose callbacks call `loop`'s ``EventLoop/wake()`` and
    /// ``EventLoop/drain()``.
    func attach(to loop: EventLoop) throws(LibeventError) {
        // passUnretained: the loop owns this base, which frees both events in its deinit, before the loop goes.
        let context = Unmanaged.passUnretained(loop).toOpaque()
        wakeEvent = event_new(pointer, wakeUp.readDescriptor, Int16(EV_READ | EV_PERSIST), onWake, context)
        drainEvent = event_new(pointer, -1, 0, onDrain, context)
        guard wakeEvent != nil, drainEvent != nil, event_add(wakeEvent, nil) == 0 else {
            throw LibeventError("event_new for the loop's wake-up failed")   // deinit frees what was made
        }
    }

    deinit {
        if let wakeEvent { event_free(wakeEvent) }
        if let drainEvent { event_free(drainEvent) }
        wakeUp.close()
        event_base_free(pointer)
    }

    /// Runs libevent's loop until ``breakLoop()``.
    func dispatch() {
        event_base_loop(pointer, EVLOOP_NO_EXIT_ON_EMPTY)
    }

    /// Makes ``dispatch()`` return once the callback under way has returned.
    func breakLoop() {
        event_base_loopbreak(pointer)
    }

    /// Makes the drain event run in the pass under way.
    func activateDrain() {
        event_active(drainEvent, 0, 0)
    }

    /// Makes the drain event run in the next pass, after libevent has polled I/O and run the timers that are due: a
    /// zero timeout. `event_active` from a callback would run it in the pass under way, before any polling
    /// (libevent processes an event activated during its active queue's processing in that same pass).
    func scheduleDrainAfterPolling() {
        var now = timeval()
        precondition(event_add(drainEvent, &now) == 0, "event_add for the loop's drain event failed")
    }

    /// Makes the wake-up descriptor readable. Safe from any thread.
    func signalWakeUp() {
        wakeUp.signal()
    }

    /// Consumes the wake-up signals written so far.
    func clearWakeUp() {
        wakeUp.clear()
    }
}

// MARK: - Waking a loop from another thread

/// The descriptor another thread writes to wake a loop, and the one the loop watches. An eventfd on Linux (one
/// descriptor, one 8-byte counter); elsewhere the two ends of an `evutil_socketpair`. Not libevent's own
/// cross-thread notification: that needs `evthread_use_pthreads()`, which puts a mutex around every `event_base`
/// call, on the request path too; the loop's queue takes its one lock per batch (see `EventLoop.submit`).
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

// MARK: - Timer events

/// The libevent event of a pending ``ScheduledTimer``: a one-shot timeout whose callback calls the timer's `fire()`.
struct TimerEvent {
    private let event: OpaquePointer

    /// Adds a timeout of `delay` on `base` that fires `timer`.
    init(base: EventBase, delay: Duration, firing timer: ScheduledTimer) {
        // passRetained: the pending event holds a +1 on its ScheduledTimer until `free(firing:)` drops it (the timer
        // fired or was cancelled), so the work runs even when the caller drops the handle.
        let context = Unmanaged.passRetained(timer).toOpaque()
        let event = event_new(base.pointer, -1, 0, onTimer, context)
        var tv = timeval(delay)
        precondition(event != nil && event_add(event, &tv) == 0, "event_add for a timer failed")
        self.event = event!
    }

    /// Deletes the event if still pending, frees it, and drops its +1 on `timer`, which may be the last reference.
    func free(firing timer: ScheduledTimer) {
        event_free(event)   // deletes it first when still pending
        Unmanaged.passUnretained(timer).release()   // drops the +1 taken in init
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

// MARK: - The loop thread

/// The thread-local slot that names the loop whose thread the calling thread is (``EventLoop/current``).
enum CurrentLoopSlot {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
        return key
    }()

    /// Whether the calling thread's slot names `loop`: a thread-local read and a compare, no lock.
    static func holds(_ loop: EventLoop) -> Bool {
        pthread_getspecific(key) == Unmanaged.passUnretained(loop).toOpaque()
    }

    /// The loop the calling thread's slot names.
    static var loop: EventLoop? {
        guard let pointer = pthread_getspecific(key) else { return nil }
        return Unmanaged<EventLoop>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// Names `loop` in the calling thread's slot (nil clears it).
    static func set(_ loop: EventLoop?) {
        // passUnretained: whoever sets the slot clears it before it lets go of the loop (EventLoop.run and
        // EventLoop.runStopped).
        pthread_setspecific(key, loop.map { Unmanaged.passUnretained($0).toOpaque() })
    }
}

/// A thread started with pthread, to be joined or detached once.
struct LoopThread {
    private let id: pthread_t

    /// Starts a thread that runs `body`.
    /// - Throws: ``LibeventError`` when the thread cannot be created.
    static func start(_ body: @escaping @Sendable () -> Void) throws(LibeventError) -> LoopThread {
        // passRetained: the new thread holds the +1 on this box until it has read it.
        let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        // pthread_t is an integer on Linux and a pointer that pthread_create takes as optional on Darwin; its start
        // routine's argument is optional on Linux only (the `as` spelling compiles on both).
        #if canImport(Darwin)
        var id: pthread_t? = nil
        #else
        var id = pthread_t()
        #endif
        let rc = pthread_create(&id, nil, { raw in
            Unmanaged<ThreadBody>.fromOpaque((raw as UnsafeMutableRawPointer?)!).takeRetainedValue().body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<ThreadBody>.fromOpaque(box).release()
            throw LibeventError("pthread_create failed: \(rc)")
        }
        #if canImport(Darwin)
        return LoopThread(id: id!)
        #else
        return LoopThread(id: id)
        #endif
    }

    /// Whether the calling thread is this thread.
    var isCurrent: Bool {
        pthread_equal(id, pthread_self()) != 0
    }

    /// Waits for the thread to end. Must not be called on the thread itself.
    func join() {
        pthread_join(id, nil)
    }

    /// Lets the thread end on its own: its resources go when it returns.
    func detach() {
        pthread_detach(id)
    }
}

private final class ThreadBody: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

// MARK: - Borrowing the raw base

extension EventLoop {
    /// Runs `body` with the raw `event_base`. Must be called on the loop thread (or before the loop runs).
    public func withUnsafeEventBase<Result>(_ body: (OpaquePointer) throws -> Result) rethrows -> Result {
        precondition(inLoop || hasNotRun, "withUnsafeEventBase must be called on the thread of EventLoop \(name)")
        return try body(eventBase.pointer)
    }
}
