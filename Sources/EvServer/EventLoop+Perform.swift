import Dispatch
import Synchronization

// Running code on a loop's thread from another thread, and waiting for its result: how the application creates,
// closes and asks its servers (each confined to its loop) from outside.

extension EventLoop {
    /// Runs `body` on the loop thread and blocks the caller until it returns. Must not be called on this loop.
    func performAndWait<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) throws -> Result {
        precondition(!inLoop, "performAndWait called on its own loop")
        let box = WaitBox<Result>()
        execute {
            let result = Swift.Result { try body() }
            box.result.withLock { $0 = result }
            box.done.signal()
        }
        box.done.wait()
        return try box.result.withLock { $0! }.get()
    }

    /// Runs `body` on the loop thread (on a stopped loop: on the thread that stands in for it) and returns its result.
    func perform<Result: Sendable>(_ body: @escaping @Sendable () -> Result) async -> Result {
        await withCheckedContinuation { continuation in
            execute { continuation.resume(returning: body()) }
        }
    }
}

private final class WaitBox<Value: Sendable>: Sendable {
    let result = Mutex<Result<Value, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
}
