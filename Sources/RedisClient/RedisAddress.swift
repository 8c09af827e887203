/// A Redis server's address: a host name or IP address and a TCP port, as cluster seeds, sentinels and the
/// redirections of a cluster (`MOVED 3999 127.0.0.1:7002`) name them.
public struct RedisAddress: Sendable, Hashable, CustomStringConvertible {
    /// Host name or IP address (IPv6 without brackets).
    public var host: String
    /// TCP port, 1-65535.
    public var port: Int

    /// An address from its parts (not validated).
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (an IPv6 address in brackets, `[::1]:7000`, or bare, `::1:7000`, where the part after
    /// the last `:` is the port).
    /// - Throws: ``RedisConfigurationError`` naming what is wrong.
    public init(parsing text: String) throws {
        let text = text.trimmingSpacesForAddress
        var host: Substring
        let portText: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else {
                throw RedisConfigurationError(address: "\"\(text.prefix(60))\" has no port (expected host:port)")
            }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw RedisConfigurationError(address: "\"\(text.prefix(60))\" has no port (expected host:port)")
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else {
            throw RedisConfigurationError(address: "\"\(text.prefix(60))\" has no host (expected host:port)")
        }
        guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._:".contains($0)) }) else {
            throw RedisConfigurationError(address: "invalid host \"\(host.prefix(60))\"")
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portText), (1...65535).contains(port) else {
            throw RedisConfigurationError(address: "invalid port \"\(portText.prefix(20))\" in \"\(text.prefix(60))\" "
                                          + "(expected a number 1-65535)")
        }
        self.init(host: String(host), port: port)
    }

    /// `host:port`, an IPv6 host in brackets.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

extension RedisConfiguration {
    /// These settings (credentials, timeouts, hooks) for the server at `address`: a cluster node, or the primary
    /// the sentinels name.
    func pointing(to address: RedisAddress) -> RedisConfiguration {
        var configuration = self
        configuration.host = address.host
        configuration.port = address.port
        return configuration
    }
}

extension StringProtocol {
    /// Without leading and trailing whitespace (FoundationEssentials has no `trimmingCharacters`).
    var trimmingSpacesForAddress: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
