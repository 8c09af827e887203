import EvServer

// Commands as RESP: keywords made once, arguments encoded into one buffer, names for metrics and errors.

/// Command names as bytes, built once.
/// Command names and keywords as bytes, made once (the request path sends them on every call).
package enum Keyword {
    static let get = Array("GET".utf8)
    static let getex = Array("GETEX".utf8)
    package static let set = Array("SET".utf8)
    package static let ex = Array("EX".utf8)
    static let expire = Array("EXPIRE".utf8)
    package static let del = Array("DEL".utf8)
    static let scan = Array("SCAN".utf8)
    static let match = Array("MATCH".utf8)
    static let count = Array("COUNT".utf8)
    static let ping = Array("PING".utf8)
    static let eval = Array("EVAL".utf8)
    static let evalsha = Array("EVALSHA".utf8)
    static let auth = Array("AUTH".utf8)
    static let select = Array("SELECT".utf8)
    static let wait = Array("WAIT".utf8)
    static let info = Array("INFO".utf8)
    static let server = Array("server".utf8)

    /// The commands the session store sends on every request, with their names: a command given as one of these
    /// arrays (the same buffer, so the comparison ends at once) needs neither case folding nor the refusal check.
    private static let hot: [([UInt8], String)] = [
        (getex, "GETEX"), (evalsha, "EVALSHA"), (eval, "EVAL"), (set, "SET"), (get, "GET"), (del, "DEL"),
        (expire, "EXPIRE"), (ping, "PING"), (wait, "WAIT"),
    ]

    /// The name of `command` when it is one of ``hot``'s keywords (upper case, as this client sends them), else nil.
    static func name(of command: [UInt8]) -> String? {
        for (keyword, name) in hot where keyword == command { return name }
        return nil
    }
}

/// `value` in decimal, as Redis expects numbers.
package func decimal(_ value: Int) -> [UInt8] {
    var digits: [UInt8] = []
    digits.reserveCapacity(20)
    appendDecimal(value, to: &digits)
    return digits
}

/// Appends the decimal digits of `value` (and its sign) to `bytes`, without a String on the way.
private func appendDecimal(_ value: Int, to bytes: inout [UInt8]) {
    // Most are argument lengths and counts below 100: no loop for those.
    if value >= 0, value < 100 {
        if value >= 10 { bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value / 10)) }
        bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value % 10))
        return
    }
    if value < 0 { bytes.append(UInt8(ascii: "-")) }
    let magnitude = value.magnitude
    var divisor: UInt = 1
    while divisor <= magnitude / 10 { divisor *= 10 }
    while divisor > 0 {
        bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: magnitude / divisor % 10))
        divisor /= 10
    }
}

/// How many bytes `appendDecimal` writes for `value`.
private func decimalLength(_ value: Int) -> Int {
    var length = value < 0 ? 2 : 1
    var rest = value.magnitude
    while rest >= 10 {
        rest /= 10
        length += 1
    }
    return length
}

/// A command encoded as Redis reads it (RESP: `*<count>\r\n`, then `$<length>\r\n<bytes>\r\n` per argument),
/// which the transport writes as is.
///
/// Built in one buffer straight from its parts: no array per argument, and no second pass in which a library formats
/// an argv with printf-style calls into a string of its own. Binary-safe: every argument is sent with its length.
struct RedisCommand: Sendable {
    /// The RESP bytes; complete once every announced argument was appended.
    private(set) var bytes: [UInt8]
    /// Arguments announced in the header and not appended yet.
    private var missing: Int

    /// Starts a command of `count` arguments (the name included), with room for `payload` bytes of arguments.
    init(count: Int, payload: Int) {
        precondition(count > 0, "a Redis command needs at least its name")
        bytes = []
        // Per argument: "$", up to 20 digits, two CRLFs.
        bytes.reserveCapacity(payload + 24 * (count + 1))
        missing = count
        bytes.append(UInt8(ascii: "*"))
        appendDecimal(count, to: &bytes)
        appendNewline()
    }

    /// Encodes `arguments`, the command name first.
    init(_ arguments: [[UInt8]]) {
        var payload = 0
        for argument in arguments { payload += argument.count }
        self.init(count: arguments.count, payload: payload)
        for argument in arguments { append(argument) }
    }

    var isComplete: Bool { missing == 0 }

    mutating func append(_ argument: [UInt8]) {
        startArgument(length: argument.count)
        bytes.append(contentsOf: argument)
        appendNewline()
    }

    /// Appends the UTF-8 bytes of `argument`.
    mutating func append(_ argument: String) {
        startArgument(length: argument.utf8.count)
        bytes.append(contentsOf: argument.utf8)
        appendNewline()
    }

    /// Appends one argument made of the UTF-8 bytes of `first` then those of `second` (a prefixed key).
    mutating func append(_ first: String, _ second: String) {
        startArgument(length: first.utf8.count + second.utf8.count)
        bytes.append(contentsOf: first.utf8)
        bytes.append(contentsOf: second.utf8)
        appendNewline()
    }

    /// Appends `value` in decimal, as Redis expects numbers.
    mutating func append(_ value: Int) {
        startArgument(length: decimalLength(value))
        appendDecimal(value, to: &bytes)
        appendNewline()
    }

    private mutating func startArgument(length: Int) {
        precondition(missing > 0, "more arguments than the RedisCommand announced")
        missing -= 1
        bytes.append(UInt8(ascii: "$"))
        appendDecimal(length, to: &bytes)
        appendNewline()
    }

    private mutating func appendNewline() {
        bytes.append(UInt8(ascii: "\r"))
        bytes.append(UInt8(ascii: "\n"))
    }
}

/// The command name in upper case ASCII, for metrics, errors and the checks below.
func commandName(_ bytes: [UInt8]) -> String {
    String(decoding: bytes.lazy.map { (0x61...0x7A).contains($0) ? $0 - 0x20 : $0 }, as: UTF8.self)
}

/// Why a command cannot go through this client, or nil. These commands change how the connection replies (or
/// its state behind the client's back), which a pipelined request/reply connection cannot follow: the transport
/// would deliver several replies to one callback, or abort on a reply nobody asked for.
func unsupportedCommandReason(_ name: String, _ arguments: [[UInt8]]) -> String? {
    switch name {
    case "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE":
        return "\(name) turns the connection into a pub/sub connection; use a dedicated connection"
    case "MONITOR", "SYNC", "PSYNC":
        return "\(name) streams replies nobody asked for; use a dedicated connection"
    case "SELECT", "RESET":
        return "\(name) would change the connection's database or login behind the client; "
            + "set the database in RedisConfiguration"
    case "CLIENT" where arguments.count > 1 && commandName(arguments[1]) == "REPLY":
        return "CLIENT REPLY would make replies stop matching their commands"
    case "HELLO" where arguments.count > 1 && arguments[1] != Array("2".utf8):
        return "only RESP2 is supported (HELLO 2)"
    default:
        return nil
    }
}
