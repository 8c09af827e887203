#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// JSON as express-session stores it. The parser and the serializer work on UTF-8 bytes without Foundation, because
// they run on every request that carries a session; only the Codable bridge at the bottom uses Foundation.
//
// Where this differs from JavaScript, on purpose:
// - numbers keep their literal text (`1.0` stays `1.0`, `1e400` stays `1e400`), where JSON.parse + JSON.stringify
//   would print `1` and `null`. A value read from a store is written back exactly as it came.
// - a `\uXXXX` escape of a lone surrogate (legal in JSON, impossible in a Swift `String`) decodes to U+FFFD.
// - raw bytes that are not UTF-8 are an error (JSON.parse never sees them: Node decodes the buffer first, with
//   replacement). A value Node wrote is always valid UTF-8, since JSON.stringify escapes lone surrogates.

/// A JSON value that keeps numbers exact (as their literal text) and object keys in order, so a value read from
/// Redis and written back is byte-for-byte what JavaScript's JSON.stringify would produce.
///
/// Equality compares structure: numbers compare by their literal text (`1.0 != 1`), strings by Swift's `String`
/// equality, objects by their members in order.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// A number as its JSON literal text, e.g. `"12345678901234567890"` or `"0.1"`.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

// MARK: - JSONObject

/// A JSON object with keys in JavaScript's enumeration order: array-index keys (`"0"`, `"42"`) first in ascending
/// numeric order, then every other key in insertion order, exactly as a JavaScript object (and so JSON.stringify)
/// orders them. Setting an existing key keeps its position; keys compare by their UTF-8 bytes, as JavaScript
/// compares property names by code units.
///
/// Equality is order-sensitive, because the order is part of the serialized form.
public struct JSONObject: Sendable, Hashable {
    @usableFromInline
    struct Entry: Sendable {
        var key: String
        var value: JSONValue
    }

    private var entries: [Entry] = []
    /// How many leading entries have array-index keys.
    private var indexKeyCount = 0
    /// A key -> position map, built only for large objects (linear search wins below that size).
    private var positions: [ExactKey: Int]?

    private static let positionsThreshold = 16

    public init() {}

    /// The keys in enumeration order.
    public var keys: [String] { entries.map(\.key) }
    /// The values in enumeration order.
    public var values: [JSONValue] { entries.map(\.value) }
    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    /// The value for `key`; setting nil removes the key.
    public subscript(key: String) -> JSONValue? {
        get {
            guard let position = position(of: key) else { return nil }
            return entries[position].value
        }
        set {
            if let newValue {
                updateValue(newValue, forKey: key)
            } else {
                removeValue(forKey: key)
            }
        }
    }

    /// Makes room for `count` members, so that building a small object allocates once.
    package mutating func reserveCapacity(_ count: Int) {
        entries.reserveCapacity(count)
    }

    /// Sets `value` for `key`, keeping the key's position when it exists.
    /// - Returns: the previous value, or nil.
    @discardableResult
    public mutating func updateValue(_ value: JSONValue, forKey key: String) -> JSONValue? {
        if let position = position(of: key) {
            let old = entries[position].value
            entries[position].value = value
            return old
        }
        if let index = JSONObject.arrayIndex(key) {
            // Array-index keys go first, in numeric order (ECMAScript OrdinaryOwnPropertyKeys).
            var insertAt = 0
            while insertAt < indexKeyCount, JSONObject.arrayIndex(entries[insertAt].key)! < index { insertAt += 1 }
            entries.insert(Entry(key: key, value: value), at: insertAt)
            indexKeyCount += 1
            rebuildPositions()
        } else {
            entries.append(Entry(key: key, value: value))
            if positions != nil {
                positions![ExactKey(key)] = entries.count - 1
            } else if entries.count > JSONObject.positionsThreshold {
                rebuildPositions()
            }
        }
        return nil
    }

    /// Removes `key`. - Returns: the removed value, or nil when the key was absent.
    @discardableResult
    public mutating func removeValue(forKey key: String) -> JSONValue? {
        guard let position = position(of: key) else { return nil }
        let old = entries.remove(at: position).value
        if position < indexKeyCount { indexKeyCount -= 1 }
        rebuildPositions()
        return old
    }

    /// Removes every key.
    public mutating func removeAll() {
        entries.removeAll()
        indexKeyCount = 0
        positions = nil
    }

    /// How many leading keys are array indexes (they precede every other key, as in JavaScript).
    public var arrayIndexKeyCount: Int { indexKeyCount }

    /// Whether JavaScript treats `key` as an array index (a canonical integer 0 ... 2^32 - 2), which it enumerates
    /// before every other key.
    public static func isArrayIndexKey(_ key: String) -> Bool { arrayIndex(key) != nil }

    static func arrayIndex(_ key: String) -> UInt32? {
        let utf8 = key.utf8
        guard let first = utf8.first, first >= 0x30, first <= 0x39, utf8.count <= 10 else { return nil }
        if first == 0x30 { return utf8.count == 1 ? 0 : nil }   // "0" only; "01" is an ordinary key
        var value: UInt64 = 0
        for byte in utf8 {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            value = value * 10 + UInt64(byte - 0x30)
        }
        return value <= 4_294_967_294 ? UInt32(value) : nil
    }

    private func position(of key: String) -> Int? {
        if let positions { return positions[ExactKey(key)] }
        let keyCount = key.utf8.count
        for position in entries.indices {
            let candidate = entries[position].key
            if candidate.utf8.count == keyCount, candidate.utf8Equals(key) { return position }
        }
        return nil
    }

    private mutating func rebuildPositions() {
        guard entries.count > JSONObject.positionsThreshold else {
            positions = nil
            return
        }
        var map: [ExactKey: Int] = [:]
        map.reserveCapacity(entries.count)
        for (position, entry) in entries.enumerated() { map[ExactKey(entry.key)] = position }
        positions = map
    }

    // MARK: Equality

    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.entries.count == rhs.entries.count else { return false }
        for (a, b) in zip(lhs.entries, rhs.entries) {
            guard a.key.utf8Equals(b.key), a.value == b.value else { return false }
        }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(entries.count)
        for entry in entries {
            hasher.combine(entry.key)
            hasher.combine(entry.value)
        }
    }
}

/// A dictionary key compared by UTF-8 bytes (JavaScript's property-name identity), where `String` compares by
/// canonical equivalence. Hashing the `String` is still consistent: byte-equal strings are equal strings.
private struct ExactKey: Hashable {
    let string: String
    init(_ string: String) { self.string = string }
    static func == (lhs: ExactKey, rhs: ExactKey) -> Bool {
        lhs.string.utf8Equals(rhs.string)
    }
    func hash(into hasher: inout Hasher) { hasher.combine(string) }
}

extension JSONObject: Sequence {
    public typealias Element = (key: String, value: JSONValue)

    public struct Iterator: IteratorProtocol {
        fileprivate var base: IndexingIterator<[Entry]>
        public mutating func next() -> (key: String, value: JSONValue)? {
            base.next().map { (key: $0.key, value: $0.value) }
        }
    }

    public func makeIterator() -> Iterator { Iterator(base: entries.makeIterator()) }
    public var underestimatedCount: Int { entries.count }
}

extension JSONObject: ExpressibleByDictionaryLiteral {
    /// Creates an object from a literal; a repeated key keeps its first position and its last value (as JavaScript).
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(elements)
    }

    /// Creates an object from key-value pairs; a repeated key keeps its first position and its last value.
    public init<S: Sequence>(_ pairs: S) where S.Element == (String, JSONValue) {
        self.init()
        entries.reserveCapacity(pairs.underestimatedCount)   // one allocation for a literal, not one per doubling
        for (key, value) in pairs { updateValue(value, forKey: key) }
    }
}

extension JSONObject: CustomStringConvertible {
    /// The object as JSON text.
    public var description: String { String(decoding: JSONValue.object(self).serialized(), as: UTF8.self) }
}

// MARK: - Literals and conversions

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByStringInterpolation {
    public init(stringLiteral value: String) { self = .string(value) }
}

extension JSONValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int) { self = .number(String(value)) }
}

extension JSONValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self.init(value) }
}

extension JSONValue: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension JSONValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension JSONValue: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
}

extension JSONValue: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, JSONValue)...) { self = .object(JSONObject(elements)) }
}

extension JSONValue {
    /// A number from an integer, written as its decimal digits.
    public init<T: BinaryInteger>(_ value: T) { self = .number(String(value)) }

    /// A number from a double, written as JavaScript's `Number.prototype.toString` writes it (`1`, `0.1`, `1e+21`).
    /// NaN and the infinities become `null`, as JSON.stringify makes them.
    public init(_ value: Double) {
        if let text = JSONValue.javaScriptText(value) { self = .number(text) } else { self = .null }
    }

    /// A string.
    public init(_ value: String) { self = .string(value) }
}

// MARK: - Accessors

extension JSONValue {
    /// The text of a `.string`, else nil.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The value of a `.bool`, else nil.
    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// A `.number` as an `Int` when it is a whole number in range (`42`, `4.2e1`, `42.0`), else nil.
    public var intValue: Int? {
        guard case .number(let literal) = self else { return nil }
        if let value = Int(literal) { return value }
        guard let double = Double(literal), double.rounded(.towardZero) == double,
              double >= -9_223_372_036_854_775_808.0, double < 9_223_372_036_854_775_808.0 else { return nil }
        return Int(double)
    }

    /// A `.number` as the nearest `Double` (as JavaScript reads it; `1e400` is infinity), else nil.
    public var doubleValue: Double? {
        guard case .number(let literal) = self else { return nil }
        return Double(literal)
    }

    /// The members of an `.object`, else nil.
    public var objectValue: JSONObject? {
        if case .object(let value) = self { return value }
        return nil
    }

    /// The elements of an `.array`, else nil.
    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// Whether this is `.null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The member `key` of an object, else nil.
    public subscript(key: String) -> JSONValue? {
        objectValue?[key]
    }

    /// The element at `index` of an array, else nil (also when out of range).
    public subscript(index: Int) -> JSONValue? {
        guard case .array(let elements) = self, elements.indices.contains(index) else { return nil }
        return elements[index]
    }
}

extension JSONValue: CustomStringConvertible {
    /// A `.string` prints its raw text (so `"Welcome \(session["name"] ?? "guest")"` reads naturally);
    /// every other value prints as JSON.
    public var description: String {
        if case .string(let value) = self { return value }
        return String(decoding: serialized(), as: UTF8.self)
    }
}

// MARK: - Parsing

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

private enum ASCII {
    static let quote: UInt8 = 0x22, backslash: UInt8 = 0x5C, slash: UInt8 = 0x2F
    static let openBrace: UInt8 = 0x7B, closeBrace: UInt8 = 0x7D, openBracket: UInt8 = 0x5B, closeBracket: UInt8 = 0x5D
    static let comma: UInt8 = 0x2C, colon: UInt8 = 0x3A, minus: UInt8 = 0x2D, plus: UInt8 = 0x2B, dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30, nine: UInt8 = 0x39
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

// MARK: - Serializing

extension JSONValue {
    /// The value as JSON text, byte for byte what JavaScript's `JSON.stringify` writes for it: no spaces, `"`, `\`
    /// and U+0000 to U+001F escaped (`\b \f \n \r \t`, else `\u00xx` in lowercase), `/` and non-ASCII as is.
    /// Numbers are written as their literal text.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        serialize(into: &out)
        return out
    }

    /// The value as JSON text (see ``serialized()``).
    public var jsonString: String { String(decoding: serialized(), as: UTF8.self) }

    /// Appends the value as JSON text to `out` (see ``serialized()``).
    public func serialize(into out: inout [UInt8]) {
        switch self {
        case .null: out.appendUTF8("null")
        case .bool(let value): out.appendUTF8(value ? "true" : "false")
        case .number(let literal): out.appendUTF8(literal)
        case .string(let value): JSONValue.serializeString(value, into: &out)
        case .array(let elements):
            out.append(ASCII.openBracket)
            var first = true
            for element in elements {
                if !first { out.append(ASCII.comma) }
                first = false
                element.serialize(into: &out)
            }
            out.append(ASCII.closeBracket)
        case .object(let object): object.serialize(into: &out)
        }
    }

    /// Appends `string` as a quoted, escaped JSON string (JSON.stringify's QuoteJSONString).
    public static func serializeString(_ string: String, into out: inout [UInt8]) {
        // Every key and string of every saved session passes here, and almost none needs escaping: copy from the
        // span in one append (quotes included) until a byte that needs an escape, if any, and go on byte by byte
        // from there.
        let bytes = string.utf8.span
        var escapeFrom = bytes.count
        out.append(addingCapacity: bytes.count + 2) { out in
            out.append(ASCII.quote)
            for index in bytes.indices {
                let byte = bytes[index]
                if byte < 0x20 || byte == ASCII.quote || byte == ASCII.backslash {
                    escapeFrom = index
                    return
                }
                out.append(byte)
            }
            out.append(ASCII.quote)
        }
        guard escapeFrom < bytes.count else { return }
        for index in escapeFrom..<bytes.count {
            let byte = bytes[index]
            switch byte {
            case ASCII.quote: out.append(ASCII.backslash); out.append(ASCII.quote)
            case ASCII.backslash: out.append(ASCII.backslash); out.append(ASCII.backslash)
            case 0x08: out.append(ASCII.backslash); out.append(UInt8(ascii: "b"))
            case 0x0C: out.append(ASCII.backslash); out.append(UInt8(ascii: "f"))
            case 0x0A: out.append(ASCII.backslash); out.append(UInt8(ascii: "n"))
            case 0x0D: out.append(ASCII.backslash); out.append(UInt8(ascii: "r"))
            case 0x09: out.append(ASCII.backslash); out.append(UInt8(ascii: "t"))
            case 0..<0x20:
                // Only 0x00-0x1F get here, so the high digit is 0 or 1 and the low one may be a-f.
                let low = byte & 0x0F
                out.append(contentsOf: [ASCII.backslash, UInt8(ascii: "u"), ASCII.zero, ASCII.zero])
                out.append(ASCII.zero + (byte >> 4))
                out.append(low < 10 ? ASCII.zero + low : UInt8(ascii: "a") + low - 10)
            default: out.append(byte)
            }
        }
        out.append(ASCII.quote)
    }
}

extension Array where Element == UInt8 {
    /// Appends the UTF-8 of `text`, copied from its span: `append(contentsOf: text.utf8)` walks the view as a
    /// generic sequence, which costs about twice as much for the short pieces JSON is written in.
    package mutating func appendUTF8(_ text: String) {
        let source = text.utf8.span
        append(addingCapacity: source.count) { out in
            for index in source.indices { out.append(source[index]) }
        }
    }
}

extension JSONObject {
    /// Appends the object as JSON text to `out`.
    public func serialize(into out: inout [UInt8]) {
        out.append(ASCII.openBrace)
        serializeMembers(entries.indices, into: &out, needsComma: false)
        out.append(ASCII.closeBrace)
    }

    /// Appends the object as JSON text with one extra member, placed where JavaScript enumerates a non-index key
    /// that was set before all of this object's other non-index keys: after the array-index keys, before the rest.
    /// This is where express-session's `cookie` lands in `JSON.stringify(req.session)`.
    /// - Parameters:
    ///   - key: the extra member's key; it must not be an array-index key or one of this object's keys.
    ///   - writeValue: appends the extra member's JSON value.
    public func serialize(into out: inout [UInt8], leadingMember key: String,
                          _ writeValue: (inout [UInt8]) -> Void) {
        out.append(ASCII.openBrace)
        serializeMembers(0..<indexKeyCount, into: &out, needsComma: false)
        if indexKeyCount > 0 { out.append(ASCII.comma) }
        JSONValue.serializeString(key, into: &out)
        out.append(ASCII.colon)
        writeValue(&out)
        serializeMembers(indexKeyCount..<entries.count, into: &out, needsComma: true)
        out.append(ASCII.closeBrace)
    }

    private func serializeMembers(_ range: Range<Int>, into out: inout [UInt8], needsComma: Bool) {
        var comma = needsComma
        for position in range {
            if comma { out.append(ASCII.comma) }
            comma = true
            JSONValue.serializeString(entries[position].key, into: &out)
            out.append(ASCII.colon)
            entries[position].value.serialize(into: &out)
        }
    }
}

// MARK: - JavaScript number text

extension JSONValue {
    /// `Number.prototype.toString()` for a finite double (ECMAScript Number::toString, radix 10), or nil for NaN
    /// and the infinities. Swift's `description` already yields the shortest round-tripping digits, as JavaScript
    /// requires; only the layout differs (`1.0` -> `1`, `1e-07` -> `1e-7`, `1e+20` -> `100000000000000000000`).
    public static func javaScriptText(_ value: Double) -> String? {
        guard value.isFinite else { return nil }
        if value == 0 { return "0" }   // also -0, as JavaScript prints it
        let text = value.magnitude.description
        var digits: [UInt8] = []
        var pointPosition: Int?   // digits before the decimal point, before exponent adjustment
        var exponent = 0
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            if byte == ASCII.dot {
                pointPosition = digits.count
            } else if byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") {
                var sign = 1
                var magnitude = 0
                while let e = utf8.next() {
                    if e == ASCII.minus { sign = -1 } else if e != ASCII.plus { magnitude = magnitude * 10 + Int(e - ASCII.zero) }
                }
                exponent = sign * magnitude
            } else {
                digits.append(byte)
            }
        }
        // value = 0.d1d2...dk × 10^n, with leading and trailing zero digits removed.
        var n = (pointPosition ?? digits.count) + exponent
        while digits.first == ASCII.zero {
            digits.removeFirst()
            n -= 1
        }
        while digits.last == ASCII.zero { digits.removeLast() }
        let k = digits.count
        var out: [UInt8] = value < 0 ? [ASCII.minus] : []
        if k <= n && n <= 21 {
            out += digits
            out += [UInt8](repeating: ASCII.zero, count: n - k)
        } else if 0 < n && n <= 21 {
            out += digits[0..<n]
            out.append(ASCII.dot)
            out += digits[n...]
        } else if -6 < n && n <= 0 {
            out += [ASCII.zero, ASCII.dot]
            out += [UInt8](repeating: ASCII.zero, count: -n)
            out += digits
        } else {
            out.append(digits[0])
            if k > 1 {
                out.append(ASCII.dot)
                out += digits[1...]
            }
            out.append(UInt8(ascii: "e"))
            out.append(n - 1 >= 0 ? ASCII.plus : ASCII.minus)
            out += String((n - 1).magnitude).utf8
        }
        return String(decoding: out, as: UTF8.self)
    }
}

// MARK: - Codable bridge

extension JSONValue {
    /// Encodes `value` with Foundation's `JSONEncoder` and parses the result.
    ///
    /// The default encoder sorts object keys: JSONEncoder's own order is not even stable from one process to the
    /// next on Linux, and a session value whose bytes change without its content changing would be saved again on
    /// every request (and differ between instances).
    /// - Parameter encoder: the encoder to use; nil for one with `.sortedKeys`.
    /// - Throws: the encoder's error.
    public init<T: Encodable>(encoding value: T, encoder: JSONEncoder? = nil) throws {
        let data = try (encoder ?? JSONValue.makeEncoder()).encode(value)
        try self.init(parsing: Array(data))
    }

    private static func makeEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }

    /// Decodes this value as `T` with Foundation's `JSONDecoder`.
    /// - Throws: the decoder's error when the value does not have `T`'s shape.
    public func decode<T: Decodable>(as type: T.Type = T.self, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(T.self, from: Data(serialized()))
    }
}
