// Parsing: JSON text (UTF-8 bytes) to a JSONValue, strictly per RFC 8259 (see JSONValue.swift for the departures
// from JavaScript).

/// Why JSON text was rejected, and where.
public struct JSONParseError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong. A struct over a private enum, so new reasons can be added.
    public struct Reason: Sendable, Hashable, CustomStringConvertible {
        private enum Code: Sendable, Hashable {
            case unexpectedEnd, unexpectedCharacter, invalidNumber, invalidEscape, controlCharacter, invalidUTF8
            case tooDeep, trailingCharacters
        }
        private let code: Code
        private init(_ code: Code) { self.code = code }

        /// The input ended inside a value.
        public static let unexpectedEnd = Reason(.unexpectedEnd)
        /// A byte that cannot start or continue a value here.
        public static let unexpectedCharacter = Reason(.unexpectedCharacter)
        /// A number that does not follow the JSON grammar (`01`, `1.`, `.5`, `1e`, `+1`).
        public static let invalidNumber = Reason(.invalidNumber)
        /// A backslash escape that JSON does not define, or a malformed `\u` escape.
        public static let invalidEscape = Reason(.invalidEscape)
        /// A raw control character (U+0000 to U+001F) inside a string.
        public static let controlCharacter = Reason(.controlCharacter)
        /// Bytes inside a string that are not UTF-8.
        public static let invalidUTF8 = Reason(.invalidUTF8)
        /// Arrays and objects nested deeper than ``JSONValue/maximumDepth``.
        public static let tooDeep = Reason(.tooDeep)
        /// Something other than whitespace after the value.
        public static let trailingCharacters = Reason(.trailingCharacters)

        public var description: String {
            switch code {
            case .unexpectedEnd: "unexpected end of input"
            case .unexpectedCharacter: "unexpected character"
            case .invalidNumber: "invalid number"
            case .invalidEscape: "invalid escape sequence"
            case .controlCharacter: "unescaped control character in string"
            case .invalidUTF8: "invalid UTF-8 in string"
            case .tooDeep: "nesting deeper than \(JSONValue.maximumDepth)"
            case .trailingCharacters: "unexpected characters after the value"
            }
        }
    }

    public let reason: Reason
    /// The byte offset in the input where the problem was found.
    public let offset: Int

    public init(_ reason: Reason, at offset: Int) {
        self.reason = reason
        self.offset = offset
    }

    // Never includes the input itself: it may hold session data.
    public var description: String { "invalid JSON: \(reason) at byte \(offset)" }
}

extension JSONValue {
    /// How deeply arrays and objects may nest before parsing fails with ``JSONParseError/Reason/tooDeep``.
    public static let maximumDepth = 64

    /// Parses JSON text (RFC 8259, strictly: no comments, no trailing commas, no leading zeros, no BOM).
    ///
    /// A repeated object key keeps its first position and its last value, as JSON.parse does. A `\u` escape of a
    /// lone surrogate decodes to U+FFFD; raw bytes that are not UTF-8 are an error.
    /// - Parameter bytes: UTF-8 JSON text.
    /// - Throws: ``JSONParseError`` with the byte offset of the problem.
    public init(parsing bytes: [UInt8]) throws(JSONParseError) {
        var parser = JSONParser(bytes)
        self = try parser.parseDocument()
    }

    /// Parses JSON text. - Throws: ``JSONParseError``.
    public init(parsing text: String) throws(JSONParseError) {
        try self.init(parsing: Array(text.utf8))
    }
}

/// An object key as the parser read it: where it is in the input when it was plain ASCII (no escapes), so that it
/// can be compared with a known name without making a `String`; otherwise its decoded text.
package struct JSONKey {
    fileprivate let range: Range<Int>
    fileprivate let decoded: String?

    /// The key's length in UTF-8 bytes: a cheap first test before comparing it with several names.
    package var utf8Count: Int { decoded?.utf8.count ?? range.count }

    fileprivate init(range: Range<Int>, decoded: String?) {
        self.range = range
        self.decoded = decoded
    }
}

/// The JSON parser. ``JSONValue/init(parsing:)`` builds a whole tree with it; inside the package, a reader that wants
/// a few known members of an object (a stored session's cookie) walks the object with ``parseObject(members:)``
/// instead, so those members never become a tree. Both go through the same grammar code, errors and offsets.
package struct JSONParser {
    let bytes: [UInt8]
    var position = 0
    var depth = 0

    package init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        let value = try parseValue()
        try parseEnd()
        return value
    }

    /// Parses the whole input. When it is an object, `member` is called for each member in order, positioned at its
    /// value, and must parse that value (``parseValue()`` or ``parseObject(members:)``); a repeated key is passed
    /// again. - Returns: whether the input is an object (when not, the value was parsed and dropped).
    package mutating func parseDocument(
        members member: (inout JSONParser, JSONKey) throws(JSONParseError) -> Void
    ) throws(JSONParseError) -> Bool {
        skipWhitespace()
        let isObject = try parseObject(members: member)
        try parseEnd()
        return isObject
    }

    /// Parses the value at the current position. When it is an object, `member` is called for each member as in
    /// ``parseDocument(members:)``. - Returns: whether it is an object (when not, the value was parsed and dropped).
    package mutating func parseObject(
        members member: (inout JSONParser, JSONKey) throws(JSONParseError) -> Void
    ) throws(JSONParseError) -> Bool {
        guard position < bytes.count, bytes[position] == ASCII.openBrace else {
            _ = try parseValue()
            return false
        }
        try parseMembers(member)
        return true
    }

    /// Whether `key` is `name`, byte for byte (JavaScript's property-name identity).
    package func key(_ key: JSONKey, is name: String) -> Bool {
        if let decoded = key.decoded { return decoded.utf8Equals(name) }
        guard key.range.count == name.utf8.count else { return false }
        let input = bytes.span, expected = name.utf8.span
        var index = key.range.lowerBound
        for offset in expected.indices {
            guard input[index] == expected[offset] else { return false }
            index += 1
        }
        return true
    }

    /// The text of `key`.
    package func string(_ key: JSONKey) -> String {
        if let decoded = key.decoded { return decoded }
        return String(decoding: bytes[key.range], as: UTF8.self)
    }

    private mutating func parseEnd() throws(JSONParseError) {
        skipWhitespace()
        guard position == bytes.count else { throw JSONParseError(.trailingCharacters, at: position) }
    }

    @inline(__always)
    mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x0A, 0x0D, 0x09: position += 1
            default: return
            }
        }
    }

    package mutating func parseValue() throws(JSONParseError) -> JSONValue {
        guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
        switch bytes[position] {
        case ASCII.quote: return .string(try parseString())
        case ASCII.openBrace: return .object(try parseObject())
        case ASCII.openBracket: return .array(try parseArray())
        case ASCII.minus, ASCII.zero...ASCII.nine: return .number(try parseNumber())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        default:
            throw JSONParseError(.unexpectedCharacter, at: position)
        }
    }

    mutating func expect(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        for offset in 0..<count {
            guard position + offset < bytes.count else { throw JSONParseError(.unexpectedEnd, at: bytes.count) }
            let expected = literal.withUTF8Buffer { $0[offset] }
            guard bytes[position + offset] == expected else {
                throw JSONParseError(.unexpectedCharacter, at: position + offset)
            }
        }
        position += count
    }

    mutating func enter() throws(JSONParseError) {
        depth += 1
        guard depth <= JSONValue.maximumDepth else { throw JSONParseError(.tooDeep, at: position) }
    }

    /// After an opening `{`/`[`: consumes `close` (an empty container; leaves the nesting level) and says so.
    mutating func closes(_ close: UInt8) throws(JSONParseError) -> Bool {
        skipWhitespace()
        guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
        guard bytes[position] == close else { return false }
        position += 1
        depth -= 1
        return true
    }

    /// After a member or element: consumes `,` (false: another follows) or `close` (true: the container ended,
    /// leaving its nesting level); anything else is an error.
    mutating func endsAfterMember(_ close: UInt8) throws(JSONParseError) -> Bool {
        skipWhitespace()
        guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
        switch bytes[position] {
        case ASCII.comma:
            position += 1
            skipWhitespace()
            return false
        case close:
            position += 1
            depth -= 1
            return true
        default:
            throw JSONParseError(.unexpectedCharacter, at: position)
        }
    }

    /// At a `{`: the object's grammar, calling `member` at each value (which the closure parses).
    @inline(__always)
    mutating func parseMembers(
        _ member: (inout JSONParser, JSONKey) throws(JSONParseError) -> Void
    ) throws(JSONParseError) {
        try enter()
        position += 1   // {
        if try closes(ASCII.closeBrace) { return }
        while true {
            guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
            guard bytes[position] == ASCII.quote else { throw JSONParseError(.unexpectedCharacter, at: position) }
            let key = try parseKey()
            skipWhitespace()
            guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
            guard bytes[position] == ASCII.colon else { throw JSONParseError(.unexpectedCharacter, at: position) }
            position += 1
            skipWhitespace()
            try member(&self, key)
            if try endsAfterMember(ASCII.closeBrace) { return }
        }
    }

    mutating func parseObject() throws(JSONParseError) -> JSONObject {
        var object = JSONObject()
        try parseMembers { parser, key throws(JSONParseError) in
            // One allocation for the small objects sessions are made of, instead of growing 1, 2, 4, 8.
            if object.isEmpty { object.reserveCapacity(8) }
            let value = try parser.parseValue()
            object.updateValue(value, forKey: parser.string(key))
        }
        return object
    }

    mutating func parseArray() throws(JSONParseError) -> [JSONValue] {
        try enter()
        position += 1   // [
        var elements: [JSONValue] = []
        if try closes(ASCII.closeBracket) { return elements }
        while true {
            elements.append(try parseValue())
            if try endsAfterMember(ASCII.closeBracket) { return elements }
        }
    }

    @inline(__always)
    func isDigit(at index: Int) -> Bool {
        index < bytes.count && bytes[index] >= ASCII.zero && bytes[index] <= ASCII.nine
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, kept as its literal text.
    mutating func parseNumber() throws(JSONParseError) -> String {
        let start = position
        if bytes[position] == ASCII.minus { position += 1 }
        guard isDigit(at: position) else { throw JSONParseError(.invalidNumber, at: position) }
        if bytes[position] == ASCII.zero {
            position += 1
        } else {
            while isDigit(at: position) { position += 1 }
        }
        if position < bytes.count, bytes[position] == ASCII.dot {
            position += 1
            guard isDigit(at: position) else { throw JSONParseError(.invalidNumber, at: position) }
            while isDigit(at: position) { position += 1 }
        }
        if position < bytes.count, bytes[position] | 0x20 == UInt8(ascii: "e") {
            position += 1
            if position < bytes.count, bytes[position] == ASCII.plus || bytes[position] == ASCII.minus { position += 1 }
            guard isDigit(at: position) else { throw JSONParseError(.invalidNumber, at: position) }
            while isDigit(at: position) { position += 1 }
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    mutating func parseString() throws(JSONParseError) -> String {
        string(try parseKey())
    }

    /// A string at its opening quote, as a key: a range of the input when it is plain ASCII.
    mutating func parseKey() throws(JSONParseError) -> JSONKey {
        let open = position
        let start = position + 1
        let (end, ascii) = try scanPlainRun(from: start)
        if bytes[end] == ASCII.backslash {
            position = end
            return JSONKey(range: start..<end, decoded: try parseEscapedString(open: open, start: start))
        }
        position = end + 1
        if ascii { return JSONKey(range: start..<end, decoded: nil) }
        guard let text = String(validating: bytes[start..<end], as: UTF8.self) else {
            throw JSONParseError(.invalidUTF8, at: open)
        }
        return JSONKey(range: start..<end, decoded: text)
    }

    /// From `start` inside a string to the closing quote or the first backslash (the index returned), and whether
    /// the bytes before it are all ASCII. Over a span: every key and string of every loaded session passes here.
    func scanPlainRun(from start: Int) throws(JSONParseError) -> (end: Int, ascii: Bool) {
        let input = bytes.span
        var index = start
        var high: UInt8 = 0
        while index < input.count {
            let byte = input[index]
            if byte == ASCII.quote || byte == ASCII.backslash { return (index, high < 0x80) }
            if byte < 0x20 { throw JSONParseError(.controlCharacter, at: index) }
            high |= byte
            index += 1
        }
        throw JSONParseError(.unexpectedEnd, at: index)
    }

    /// The slow path, from the first backslash on: decode into a buffer.
    mutating func parseEscapedString(open: Int, start: Int) throws(JSONParseError) -> String {
        var buffer = Array(bytes[start..<position])
        buffer.reserveCapacity(buffer.count + 16)
        var ascii = !buffer.contains { $0 >= 0x80 }
        while position < bytes.count {
            let byte = bytes[position]
            switch byte {
            case ASCII.quote:
                position += 1
                if ascii { return String(decoding: buffer, as: UTF8.self) }
                // Escapes were written as valid UTF-8, so validation only ever fails on raw input bytes.
                guard let text = String(validating: buffer, as: UTF8.self) else {
                    throw JSONParseError(.invalidUTF8, at: open)
                }
                return text
            case ASCII.backslash:
                let escapeStart = position
                position += 1
                guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
                let escaped = bytes[position]
                position += 1
                switch escaped {
                case ASCII.quote, ASCII.backslash, ASCII.slash: buffer.append(escaped)
                case UInt8(ascii: "b"): buffer.append(0x08)
                case UInt8(ascii: "f"): buffer.append(0x0C)
                case UInt8(ascii: "n"): buffer.append(0x0A)
                case UInt8(ascii: "r"): buffer.append(0x0D)
                case UInt8(ascii: "t"): buffer.append(0x09)
                case UInt8(ascii: "u"):
                    let unit = try parseHex4()
                    var scalar: UInt32
                    if unit >= 0xD800, unit <= 0xDBFF {
                        // A high surrogate pairs only with an immediately following `\u` low surrogate.
                        if position + 1 < bytes.count, bytes[position] == ASCII.backslash,
                           bytes[position + 1] == UInt8(ascii: "u") {
                            let save = position
                            position += 2
                            let low = try parseHex4()
                            if low >= 0xDC00, low <= 0xDFFF {
                                scalar = 0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(low) - 0xDC00)
                            } else {
                                position = save   // not a pair: the next escape is decoded on its own
                                scalar = 0xFFFD
                            }
                        } else {
                            scalar = 0xFFFD
                        }
                    } else if unit >= 0xDC00, unit <= 0xDFFF {
                        scalar = 0xFFFD
                    } else {
                        scalar = UInt32(unit)
                    }
                    if scalar >= 0x80 { ascii = false }
                    appendUTF8(scalar, to: &buffer)
                default:
                    throw JSONParseError(.invalidEscape, at: escapeStart)
                }
            default:
                if byte < 0x20 { throw JSONParseError(.controlCharacter, at: position) }
                if byte >= 0x80 { ascii = false }
                buffer.append(byte)
                position += 1
            }
        }
        throw JSONParseError(.unexpectedEnd, at: position)
    }

    mutating func parseHex4() throws(JSONParseError) -> UInt16 {
        var value: UInt16 = 0
        for _ in 0..<4 {
            guard position < bytes.count else { throw JSONParseError(.unexpectedEnd, at: position) }
            let c = bytes[position]
            let digit: UInt8
            switch c {
            case ASCII.zero...ASCII.nine: digit = c - ASCII.zero
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = c - UInt8(ascii: "A") + 10
            default: throw JSONParseError(.invalidEscape, at: position)
            }
            value = value << 4 | UInt16(digit)
            position += 1
        }
        return value
    }

    func appendUTF8(_ scalar: UInt32, to buffer: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            buffer.append(UInt8(scalar))
        case 0x80..<0x800:
            buffer.append(UInt8(0xC0 | scalar >> 6))
            buffer.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            buffer.append(UInt8(0xE0 | scalar >> 12))
            buffer.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            buffer.append(UInt8(0x80 | scalar & 0x3F))
        default:
            buffer.append(UInt8(0xF0 | scalar >> 18))
            buffer.append(UInt8(0x80 | scalar >> 12 & 0x3F))
            buffer.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            buffer.append(UInt8(0x80 | scalar & 0x3F))
        }
    }
}
