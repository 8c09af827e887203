// Plain Swift values as JSON values and back, so that code can store and read `Int`, `String`, `[String]`... where a
// `JSONValue` is kept (the session: `req.session["views"] = views`, `let n: Int? = req.session["views"]`).

/// A Swift type with a JSON form: strings, integers, doubles, booleans, and arrays and string-keyed dictionaries of
/// them. Anything `Codable` goes through `JSONValue(encoding:)` and `decode(as:)` instead.
public protocol JSONRepresentable {
    /// The value as JSON.
    var jsonValue: JSONValue { get }
    /// The value read from JSON, or nil when `json` has another type (or, for an integer, is not a whole number in
    /// range).
    init?(json: JSONValue)
}

extension String: JSONRepresentable {
    public var jsonValue: JSONValue { .string(self) }
    public init?(json: JSONValue) {
        guard let value = json.stringValue else { return nil }
        self = value
    }
}

extension Bool: JSONRepresentable {
    public var jsonValue: JSONValue { .bool(self) }
    public init?(json: JSONValue) {
        guard let value = json.boolValue else { return nil }
        self = value
    }
}

extension Int: JSONRepresentable {
    public var jsonValue: JSONValue { JSONValue(self) }
    public init?(json: JSONValue) {
        guard let value = json.intValue else { return nil }
        self = value
    }
}

extension Int64: JSONRepresentable {
    public var jsonValue: JSONValue { JSONValue(self) }
    public init?(json: JSONValue) {
        guard let value = json.intValue else { return nil }
        self = Int64(value)
    }
}

extension Double: JSONRepresentable {
    public var jsonValue: JSONValue { JSONValue(self) }
    public init?(json: JSONValue) {
        guard let value = json.doubleValue else { return nil }
        self = value
    }
}

extension Array: JSONRepresentable where Element: JSONRepresentable {
    public var jsonValue: JSONValue { .array(map(\.jsonValue)) }
    /// Nil unless every element has `Element`'s type.
    public init?(json: JSONValue) {
        guard let elements = json.arrayValue else { return nil }
        var result: [Element] = []
        result.reserveCapacity(elements.count)
        for element in elements {
            guard let value = Element(json: element) else { return nil }
            result.append(value)
        }
        self = result
    }
}

extension Dictionary: JSONRepresentable where Key == String, Value: JSONRepresentable {
    /// The members in key order (a dictionary has none of its own; sorted keys make equal values encode alike).
    public var jsonValue: JSONValue {
        var object = JSONObject()
        for key in keys.sorted() { object[key] = self[key]!.jsonValue }
        return .object(object)
    }
    /// Nil unless every member's value has `Value`'s type.
    public init?(json: JSONValue) {
        guard let object = json.objectValue else { return nil }
        var result: [String: Value] = [:]
        for key in object.keys {
            guard let member = object[key], let value = Value(json: member) else { return nil }
            result[key] = value
        }
        self = result
    }
}

extension JSONValue: JSONRepresentable {
    public var jsonValue: JSONValue { self }
    public init?(json: JSONValue) { self = json }
}
