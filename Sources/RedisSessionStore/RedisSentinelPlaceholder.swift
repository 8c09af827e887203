// PLACEHOLDER, deleted at merge: the Sentinel client (RedisSentinel.swift, branch `sentinel`) provides these two
// types with these signatures. The cluster branch codes against them (RedisSessionStore(sentinel:), the
// configuration plumbing); here they only say that the client is not built yet.

/// Where the Sentinels are, which primary they watch, and how to talk to that primary.
public struct RedisSentinelConfiguration: Sendable {
    /// The sentinels to ask for the primary's address.
    public var sentinels: [RedisAddress]
    /// The name the sentinels know the primary by (`sentinel monitor <name> ...`).
    public var masterName: String
    /// Credentials, timeout and metrics hook for the primary's connections (host and port are ignored).
    public var primary: RedisConfiguration

    public init(sentinels: [RedisAddress], masterName: String, primary: RedisConfiguration) {
        self.sentinels = sentinels
        self.masterName = masterName
        self.primary = primary
    }
}

/// One per store: a client per loop to the current primary.
final class SentinelClients: Sendable {
    let configuration: RedisSentinelConfiguration

    init(configuration: RedisSentinelConfiguration) {
        self.configuration = configuration
    }

    /// The current primary's client for the calling loop.
    func client() throws -> RedisClient {
        throw RedisClientError.notConnected.with("the Sentinel client is not built yet (placeholder)")
    }

    func close() {}
}
