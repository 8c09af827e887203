import Testing
@testable import EvServer

@Test func eventLoopRunsWorkFromAnotherThread() async throws {
    let thread = try EventLoopThread(name: "test")
    defer { thread.shutdown() }
    let value = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
        thread.loop.execute { continuation.resume(returning: thread.loop.inLoop) }
    }
    #expect(value)
}

@Test func taskWithLoopPreferenceRunsOnLoop() async throws {
    let thread = try EventLoopThread(name: "test")
    defer { thread.shutdown() }
    let loop = thread.loop
    let onLoop = await Task(executorPreference: loop) { () async -> Bool in
        await Task.yield()
        return loop.inLoop
    }.value
    #expect(onLoop)
}
