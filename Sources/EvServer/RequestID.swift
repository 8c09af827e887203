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

/// Makes request ids on one loop: 8 random characters drawn when the generator is made (0-9, a-z: 41 bits), then a
/// counter in base 36 (`k3f9x0qa1`, `k3f9x0qa2`, ...). At most 15 characters, so an id is a small string that
/// costs no allocation; cheap enough for every request: no lock, no random draw per id. Unique across loops,
/// instances and restarts as long as no two generators draw the same prefix (about one chance in 2^41 per pair);
/// past 36^7 ids the generator draws a new prefix.
struct RequestIDGenerator {
    private var prefix: String
    private var counter: UInt64 = 0
    private static let counterLimit: UInt64 = 78_364_164_096   // 36^7: seven base-36 digits
    private static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyz".unicodeScalars)

    init() { prefix = Self.randomPrefix() }

    mutating func next() -> String {
        counter += 1
        if counter == Self.counterLimit {
            prefix = Self.randomPrefix()
            counter = 1
        }
        return prefix + String(counter, radix: 36)
    }

    private static func randomPrefix() -> String {
        var random = SystemRandomNumberGenerator()
        var text = ""
        for _ in 0..<8 { text.unicodeScalars.append(alphabet[Int(random.next(upperBound: UInt64(alphabet.count)))]) }
        return text
    }
}
