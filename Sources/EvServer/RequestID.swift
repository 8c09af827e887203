import Logging

// Request ids: one per request, taken from a trusted proxy's `X-Request-Id` when it is well formed, else made here;
// sent back on every response (the server's own refusals included) and put into every log line written while the
// request is served, through a task-local value that a swift-log metadata provider reads.

/// Whether and how the server gives each request an id (``HTTPServerConfiguration/requestIDs``).
public struct RequestIDConfiguration: Sendable, Equatable {
    /// The header field the id is read from (when a trusted proxy sent it: ``HTTPServerConfiguration/trustedProxies``)
    /// and sent back in. From anyone else the field is ignored and a new id made: a client must not be able to
    /// choose the id that ties its request to other log lines.
    public let headerName: String

    /// - Parameter headerName: the field that carries the id (default `X-Request-Id`); must be a field name (an
    ///   RFC 9110 token), or this traps.
    public init(headerName: String = "X-Request-Id") {
        precondition(!headerName.isEmpty && headerName.utf8.allSatisfy(isTokenByte),
                     "RequestIDConfiguration: '\(headerName)' is not a header field name")
        self.headerName = headerName
    }
}

/// The id of the request being served, and the log metadata that carries it.
public enum RequestID {
    /// The id of the request the current task serves (set by the server around the middleware and the handler);
    /// nil outside a request or when the server gives no ids.
    @TaskLocal public static var current: String?

    /// Adds `request_id` to every log line written by a task that serves a request. Bootstrap swift-log with it
    /// (`LoggingSystem.bootstrap(_:metadataProvider:)`) or give it to a `Logger`.
    public static let metadataProvider = Logger.MetadataProvider {
        guard let id = current else { return [:] }
        return ["request_id": .string(id)]
    }

    /// The longest id taken from a proxy, in bytes.
    public static let maxLength = 128

    /// Whether `value` may be used as an id: 1 to ``maxLength`` bytes of letters, digits and `-_.:+/=@`, so it
    /// can go into a header field, a log line or a JSON string as it is (no spaces, quotes, control bytes or
    /// non-ASCII that a log reader could mistake for the line's own structure).
    public static func isWellFormed(_ value: String) -> Bool {
        let bytes = value.utf8
        guard !bytes.isEmpty, bytes.count <= maxLength else { return false }
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: "+"),
                 UInt8(ascii: "/"), UInt8(ascii: "="), UInt8(ascii: "@"):
                continue
            default:
                return false
            }
        }
        return true
    }
}

/// Makes request ids on one loop: 32 lowercase hex digits, a random 64-bit prefix drawn when the generator is made
/// and a 64-bit counter (the shape of a W3C trace id). Unique across loops, instances and restarts as long as no
/// two generators draw the same prefix (one chance in 2^64 per pair); cheap enough for every request: no lock, no
/// random draw per id.
struct RequestIDGenerator {
    private let prefix: [UInt8]
    private var counter: UInt64 = 0

    init() {
        var random = SystemRandomNumberGenerator()
        prefix = Self.hex(random.next())
    }

    mutating func next() -> String {
        counter &+= 1
        return String(decoding: prefix + Self.hex(counter), as: UTF8.self)
    }

    private static func hex(_ value: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        var rest = value
        for index in stride(from: 15, through: 0, by: -1) {
            let nibble = UInt8(truncatingIfNeeded: rest & 15)
            out[index] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") - 10 + nibble
            rest >>= 4
        }
        return out
    }
}
