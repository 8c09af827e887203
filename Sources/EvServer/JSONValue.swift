// JSON as express-session stores it. The parser and the serializer work on UTF-8 bytes without Foundation, because
// they run on every request that carries a session; only the Codable bridge
// (JSONValue+Codable.swift) uses Foundation.
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

/// The ASCII bytes of JSON's grammar, shared by the parser, the serializer and the number text.
enum ASCII {
    static let quote: UInt8 = 0x22, backslash: UInt8 = 0x5C, slash: UInt8 = 0x2F
    static let openBrace: UInt8 = 0x7B, closeBrace: UInt8 = 0x7D, openBracket: UInt8 = 0x5B, closeBracket: UInt8 = 0x5D
    static let comma: UInt8 = 0x2C, colon: UInt8 = 0x3A, minus: UInt8 = 0x2D, plus: UInt8 = 0x2B, dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30, nine: UInt8 = 0x39
}
