// Which peers may speak for the client through X-Forwarded-* headers (express's `trust proxy` setting): nobody,
// everybody, or a list of addresses and CIDR ranges. A header from any other peer is ignored, so a client that
// connects directly cannot claim to be on HTTPS or to come from another address.

/// The proxies whose `X-Forwarded-Proto` / `X-Forwarded-For` headers are believed.
public struct TrustedProxies: Sendable, Equatable, CustomStringConvertible {
    private enum Kind: Sendable, Equatable {
        case none
        case all
        case ranges([IPRange])
    }

    private let kind: Kind

    /// Trust no proxy: forwarded headers are ignored (the default).
    public static let none = TrustedProxies(kind: .none)
    /// Trust any peer (express's `trust proxy: true`): only behind a proxy that every request passes through.
    public static let all = TrustedProxies(kind: .all)

    private init(kind: Kind) { self.kind = kind }

    /// Trust the listed addresses and ranges, e.g. `["10.0.0.0/8", "127.0.0.1", "::1"]`.
    /// - Throws: ``TrustedProxiesError`` naming the first entry that is not an IPv4/IPv6 address or CIDR range.
    public init(_ entries: [String]) throws(TrustedProxiesError) {
        var ranges: [IPRange] = []
        for entry in entries {
            guard let range = IPRange(entry) else { throw TrustedProxiesError(entry: entry) }
            ranges.append(range)
        }
        kind = ranges.isEmpty ? .none : .ranges(ranges)
    }

    /// Parses `true`, `false`, or a comma-separated list of addresses and CIDR ranges.
    /// - Throws: ``TrustedProxiesError`` for an entry that is none of these.
    public init(parsing text: String) throws(TrustedProxiesError) {
        switch text.lowercased() {
        case "true", "1", "yes", "on", "all": self = .all
        case "false", "0", "no", "off", "none", "": self = .none
        default:
            try self.init(text.split(separator: ",").map { String($0).filter { $0 != " " } }.filter { !$0.isEmpty })
        }
    }

    /// Whether forwarded headers from the peer at `address` (an IP without port, as ``Request/remoteAddress``)
    /// are believed.
    public func trusts(_ address: String) -> Bool {
        switch kind {
        case .none: return false
        case .all: return true
        case .ranges(let ranges):
            guard let ip = IPRange.parseAddress(address) else { return false }
            return ranges.contains { $0.contains(ip) }
        }
    }

    /// Whether any proxy is trusted.
    public var isEnabled: Bool { kind != .none }

    public var description: String {
        switch kind {
        case .none: "none"
        case .all: "all"
        case .ranges(let ranges): ranges.map(\.description).joined(separator: ",")
        }
    }
}

/// An entry of a trusted-proxy list that is not an address or CIDR range.
public struct TrustedProxiesError: Error, Sendable, CustomStringConvertible {
    public let entry: String
    public var description: String {
        "'\(entry)' is not an IPv4/IPv6 address or CIDR range (e.g. 10.0.0.0/8, 127.0.0.1, ::1)"
    }
}

/// An IPv4 or IPv6 network: an address (16 bytes; IPv4 as ::ffff:a.b.c.d) and a prefix length.
struct IPRange: Sendable, Equatable, CustomStringConvertible {
    let network: [UInt8]
    let prefixLength: Int
    let text: String

    init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPRange.parseAddress(String(parts[0])) else { return nil }
        let isV4 = !parts[0].contains(":")
        var length = 128
        if parts.count == 2 {
            guard let bits = Int(parts[1]), bits >= 0, bits <= (isV4 ? 32 : 128) else { return nil }
            length = isV4 ? 96 + bits : bits
        }
        network = address
        prefixLength = length
        self.text = text
    }

    var description: String { text }

    func contains(_ address: [UInt8]) -> Bool {
        var remaining = prefixLength
        for index in 0..<16 where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if network[index] & mask != address[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// 16 bytes for an IPv6 address or an IPv4 one (mapped into ::ffff:0:0/96), else nil.
    static func parseAddress(_ text: String) -> [UInt8]? {
        if !text.contains(":") {
            guard let v4 = parseIPv4(Substring(text)) else { return nil }
            return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + v4
        }
        return parseIPv6(text)
    }

    private static func parseIPv4(_ text: Substring) -> [UInt8]? {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for octet in octets {
            guard !octet.isEmpty, octet.count <= 3, octet.allSatisfy(\.isASCII), let value = UInt8(octet) else {
                return nil
            }
            bytes.append(value)
        }
        return bytes
    }

    private static func parseIPv6(_ text: String) -> [UInt8]? {
        var text = Substring(text)
        if let zone = text.firstIndex(of: "%") { text = text[..<zone] }   // fe80::1%eth0
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: Substring) -> [UInt8]? {
            guard !part.isEmpty else { return [] }
            var bytes: [UInt8] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if index == pieces.count - 1, piece.contains(".") {
                    guard let v4 = parseIPv4(piece) else { return nil }
                    bytes += v4
                } else {
                    guard !piece.isEmpty, piece.count <= 4, let value = UInt16(piece, radix: 16) else { return nil }
                    bytes += [UInt8(value >> 8), UInt8(value & 0xFF)]
                }
            }
            return bytes
        }
        guard let head = groups(halves[0]) else { return nil }
        if halves.count == 1 { return head.count == 16 ? head : nil }
        guard let tail = groups(halves[1]), head.count + tail.count < 16 else { return nil }
        return head + [UInt8](repeating: 0, count: 16 - head.count - tail.count) + tail
    }
}

extension Substring {
    fileprivate func components(separatedBy separator: String) -> [Substring] {
        var parts: [Substring] = []
        var rest = self[...]
        while let range = rest.firstRange(of: separator) {
            parts.append(rest[..<range.lowerBound])
            rest = rest[range.upperBound...]
        }
        parts.append(rest)
        return parts
    }
}
