// Long-lived tasks that run a loop's requests, one request after another each, so that a request does not create
// and destroy a task of its own.
//
// Some explanation is required here: why not one `Task` per request. A task's creation, its first run, its
// completion and its destruction cost more than everything evhttp does for a small request: the task object, the
// slabs its async frames grow into (freed again with the task), the job's enqueue and the completion's bookkeeping.
// A worker keeps its task, and so its slabs, from one request to the next; between requests it waits on a
// continuation, which the next request resumes. A request still runs on a task that prefers the loop, exactly as
// before, and requests still run concurrently: a request that awaits (Redis) holds its worker, and the next request
// takes another worker, or starts one.
//
// A job is a value (the server's `RequestJob`), not a closure: a closure would be one more allocation per request,
// and calling it one more async function entered (an executor check on the way in and on the way out). The worker's
// loop itself is the server's (`HTTPServer.work(startingWith:)`); this type only keeps the waiting workers.
//
// The waits are `UnsafeContinuation`s (which is why this has a file of its own, as the C callbacks do): a checked one
// allocates and frees a canary object per wait. Each continuation is resumed exactly once: it is in `idle` from the
// moment it waits until `run` or `close` takes it out, and whoever takes it out resumes it.

/// The waiting request workers of one server (one loop). Used on the loop thread only.
final class RequestWorkers<Job>: @unchecked Sendable {
    // @unchecked Sendable: `idle` and `closed` are read and written only on `loop`'s thread: by the server (its
    // callbacks run there) and by the workers, whose tasks prefer the loop, so their nonisolated code runs there.

    /// Workers waiting for a request, most recently parked last (the next request takes that one: its memory is
    /// the warmest).
    @exclusivity(unchecked) private var idle: [UnsafeContinuation<Job?, Never>] = []
    /// The most workers kept waiting. More requests than this at once start more workers, which end once their
    /// request is done instead of waiting: a burst does not leave its tasks behind.
    private let maxIdle: Int
    private var closed = false

    init(maxIdle: Int = 128) {
        self.maxIdle = maxIdle
    }

    /// Hands `job` to a waiting worker, or, when none waits, to `start` (which starts a worker for it). Must be
    /// called on the loop thread.
    @inline(__always)
    func run(_ job: sending Job, orStart start: (sending Job) -> Void) {
        if let worker = idle.popLast() {
            worker.resume(returning: job)
        } else {
            start(job)
        }
    }

    /// Ends every waiting worker, and every busy one once its request is done. Must be called on the loop thread.
    func close() {
        closed = true
        let waiting = idle
        idle.removeAll()
        for worker in waiting { worker.resume(returning: nil) }
    }

    /// Called by a worker between requests: the next job, or nil when the worker should end.
    @inline(__always)   // into the worker's loop: one async function entered fewer per request
    func next() async -> Job? {
        if closed || idle.count >= maxIdle { return nil }
        return await withUnsafeContinuation { idle.append($0) }
    }
}
