/// The address of one Redis server: a cluster seed node, a sentinel, or a primary a sentinel named.
public struct RedisAddress: Sendable, Hashable, CustomStringConvertible {
    /// Host name or IP address (an IPv6 address without brackets).
    public var host: String
    public var port: Int

    /// An address from its parts, taken as given.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, or `[v6]:port` for an IPv6 address (`[::1]:6379`). The port is required; spaces around
    /// the text are ignored.
    /// - Throws: ``RedisConfigurationError`` with a one-line reason naming the text.
    public init(parsing text: String) throws {
        var address = Substring(text)
        while let first = address.first, first == " " || first == "\t" { address.removeFirst() }
        while let last = address.last, last == " " || last == "\t" { address.removeLast() }
        guard !address.isEmpty else {
            throw RedisConfigurationError(address: "empty address (expected host:port, e.g. 127.0.0.1:26379)")
        }
        let shown = String(address.prefix(60))
        guard !address.contains("://") else {
            throw RedisConfigurationError(address: "\"\(shown)\": expected host:port, not a URL")
        }
        let hostPart: Substring
        let portPart: Substring
        if address.hasPrefix("[") {
            guard let close = address.firstIndex(of: "]") else {
                throw RedisConfigurationError(address: "\"\(shown)\": IPv6 address without a closing \"]\"")
            }
            hostPart = address[address.index(after: address.startIndex)..<close]
            let after = address[address.index(after: close)...]
            guard after.hasPrefix(":") else {
                throw RedisConfigurationError(address: "\"\(shown)\": missing \":port\" after the IPv6 address")
            }
            portPart = after.dropFirst()
            guard !hostPart.isEmpty, hostPart.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw RedisConfigurationError(address: "\"\(shown)\": invalid IPv6 address \"[\(hostPart)]\"")
            }
        } else {
            guard let colon = address.lastIndex(of: ":") else {
                throw RedisConfigurationError(address: "\"\(shown)\": missing port (expected host:port)")
            }
            hostPart = address[..<colon]
            portPart = address[address.index(after: colon)...]
            guard !hostPart.contains(":") else {
                throw RedisConfigurationError(
                    address: "\"\(shown)\": write an IPv6 address in brackets, e.g. [::1]:6379")
            }
            guard !hostPart.isEmpty else {
                throw RedisConfigurationError(address: "\"\(shown)\": missing host (expected host:port)")
            }
            guard hostPart.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
                throw RedisConfigurationError(address: "\"\(shown)\": invalid host \"\(hostPart.prefix(60))\"")
            }
        }
        guard !portPart.isEmpty, portPart.count <= 5, portPart.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portPart) else {
            throw RedisConfigurationError(
                address: "\"\(shown)\": invalid port \"\(portPart.prefix(20))\" (expected a number 1-65535)")
        }
        guard (1...65535).contains(port) else {
            throw RedisConfigurationError(address: "\"\(shown)\": port \(port) is out of range (1-65535)")
        }
        self.init(host: String(hostPart), port: port)
    }

    /// `host:port`, or `[v6]:port` for an IPv6 address: the form ``init(parsing:)`` reads.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

extension RedisConfigurationError {
    /// An address (`host:port`) that cannot be used.
    init(address problem: String) {
        self.description = "invalid Redis address: \(problem)"
    }
}
