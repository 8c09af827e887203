/// The instant by which the Redis work of the current task must be done, when something above the client (the
/// session middleware, for one request) has a budget of its own.
///
/// ``RedisClient`` gives every command its `commandTimeout`; a request that sends two commands could otherwise wait
/// up to twice that. The middleware sets this task-local around each store call to "the request's budget minus what
/// its earlier Redis calls took", and a command whose budget ends before its own timeout fails with
/// ``RedisClientError/timeout`` when the budget ends (or at once, when nothing is left). Clients built on
/// ``RedisClient`` (the cluster client's retries, say) stop retrying at this instant too.
public enum RedisDeadline {
    /// The current task's deadline for Redis work; nil: only each command's own timeout applies.
    @TaskLocal public static var current: ContinuousClock.Instant?
}
