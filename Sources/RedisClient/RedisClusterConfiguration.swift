/// Where a Redis Cluster is and how to talk to its nodes.
public struct RedisClusterConfiguration: Sendable, Equatable {
    /// Nodes to ask for the topology (`CLUSTER SLOTS`); any reachable one will do, primary or replica. The nodes
    /// actually used are the ones the cluster names.
    public var seeds: [RedisAddress]
    /// Credentials (`username`, `password`), ``RedisConfiguration/commandTimeout``, the queue limit and the
    /// metrics hook, used for every node's connection. Its `host` and `port` are ignored; its `database` must be 0
    /// (a cluster has only database 0).
    public var node: RedisConfiguration
    /// The shortest time between two topology refreshes that a `MOVED` redirection or a lost node triggers (at
    /// most one refresh runs at a time). Explicit refreshes (``RedisClusterClient/refreshTopology()``) ignore it.
    public var minimumRefreshInterval: Duration = .milliseconds(200)
    /// How many redirections (`MOVED`, `ASK`) one command follows before it fails: more means the cluster's
    /// nodes disagree, which a refresh fixes, not another hop.
    public var maximumRedirections = 5

    /// A configuration from seed addresses and the settings for each node's connection.
    public init(seeds: [RedisAddress], node: RedisConfiguration = RedisConfiguration()) {
        self.seeds = seeds
        self.node = node
    }

    /// A configuration from a comma-separated seed list, `host:port[,host:port...]`.
    /// - Throws: ``RedisConfigurationError`` for an empty list or a bad address.
    public init(seeds seedList: String, node: RedisConfiguration = RedisConfiguration()) throws {
        self.init(seeds: try RedisAddress.list(parsing: seedList), node: node)
    }
}
