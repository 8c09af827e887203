import EvServer

// What the cluster client and the replication option need from one node's client: ASKING glued to its command,
// and WAIT.

extension RedisClient {
    /// Sends `ASKING` and then `arguments`, queued back to back on the connection in one turn of the loop, and
    /// returns the command's reply (the cluster's `ASK` redirection, https://redis.io/commands/asking/).
    ///
    /// The flag ASKING sets applies to the next command *on the connection*; commands of other tasks are pipelined
    /// on the same connection, so the two must be queued with nothing between them, which two `send` calls in a
    /// row cannot promise.
    func sendAsking(_ arguments: [[UInt8]]) async throws -> RedisValue {
        let connection = self.connection
        let loop = self.loop
        let name = commandName(arguments[0])
        let deadline = RedisDeadline.effective
        return try await withCheckedThrowingContinuation { command in
            // A task on the loop, so that both submits run on its thread, one right after the other. ASKING's own
            // reply is not needed: should it fail, the command's reply (ASK or MOVED again) says what to do.
            Task(executorPreference: loop) {
                _ = try? await withCheckedThrowingContinuation { asking in
                    connection.submit(name: "ASKING", arguments: [Array("ASKING".utf8)], budget: deadline,
                                      continuation: asking)
                    connection.submit(name: name, arguments: arguments, budget: deadline, continuation: command)
                }
            }
        }
    }

    /// [WAIT](https://redis.io/commands/wait/) numreplicas timeout: waits until `replicas` replicas have
    /// acknowledged every write this client's connection made before, or until `timeout`.
    ///
    /// WAIT blocks the connection: commands of other tasks pipelined behind it wait too. Keep `timeout` short.
    /// - Parameters:
    ///   - replicas: how many replicas must acknowledge.
    ///   - timeout: how long Redis waits (at least 1 ms: `WAIT n 0` would wait forever).
    /// - Returns: how many replicas acknowledged (may be fewer than `replicas` when the timeout passed).
    public func wait(forReplicas replicas: Int, timeout: Duration) async throws -> Int {
        let waitMilliseconds = max(1, milliseconds(timeout))
        let reply = try await send([Keyword.wait, Array(String(replicas).utf8),
                                    Array(String(waitMilliseconds).utf8)])
        guard case .integer(let acknowledged) = reply else {
            throw RedisClientError.unexpectedReply.with("WAIT answered \(reply.kindDescription), expected integer")
        }
        return acknowledged
    }
}
