// Seed lists (`--redis-cluster`, `--redis-sentinel`) and the error RedisAddress(parsing:) throws.

extension RedisAddress {
    /// Parses a comma-separated list of `host:port` (spaces around the commas are allowed).
    /// - Throws: ``RedisConfigurationError`` for an empty list or a bad address.
    public static func list(parsing text: String) throws -> [RedisAddress] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: true)
            .map { String($0).trimmingSpacesForAddress }.filter { !$0.isEmpty }
        guard !parts.isEmpty else {
            throw RedisConfigurationError(address: "the address list is empty (expected host:port[,host:port...])")
        }
        var seen = Set<RedisAddress>()
        return try parts.map { try RedisAddress(parsing: $0) }.filter { seen.insert($0).inserted }
    }
}

extension RedisConfigurationError {
    init(address problem: String) {
        self.description = "invalid Redis address: \(problem)"
    }
}
