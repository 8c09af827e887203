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

/// Makes request ids on one loop: 15 characters of `0-9a-z`, 8 random ones drawn when the generator is made (41
/// bits) and a 7-digit base-36 counter (`k3f9x0qa0000001`, `k3f9x0qa0000002`, ...). Fifteen bytes make a small
/// string, which costs no allocation, and the counter's digits are counted up in place, so an id costs a few
/// dozen instructions: no lock, no random draw, no number formatting per id. Unique across loops, instances and
/// restarts as long as no two generators draw the same prefix (about one chance in 2^41 per pair); after 36^7 - 1
/// ids the generator draws a new prefix.
struct RequestIDGenerator {
    private var bytes: [UInt8]
    private static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
    private static let prefixLength = 8
    static let length = 15

    init() {
        bytes = []
        restart()
    }

    mutating func next() -> String {
        var index = Self.length - 1
        while true {
            if index < Self.prefixLength {   // every counter digit wrapped: a new prefix
                restart()
                break
            }
            let digit = bytes[index]
            if digit == UInt8(ascii: "z") {
                bytes[index] = UInt8(ascii: "0")
                index -= 1
            } else {
                bytes[index] = digit == UInt8(ascii: "9") ? UInt8(ascii: "a") : digit + 1
                break
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A new random prefix, and the counter at 0 (the next id ends in `0000001`).
    private mutating func restart() {
        var random = SystemRandomNumberGenerator()
        bytes = (0..<Self.prefixLength).map { _ in Self.alphabet[Int(random.next(upperBound: UInt64(Self.alphabet.count)))] }
            + Array(repeating: UInt8(ascii: "0"), count: Self.length - Self.prefixLength)
    }
}
