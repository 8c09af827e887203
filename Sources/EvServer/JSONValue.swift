// SKELETON: to be completed by the sessions workstream (parser, serializer, literals, Codable bridge).

/// A JSON value that keeps numbers exact (as their literal text) and object keys in order, so a value read from
/// Redis and written back is byte-for-byte what JavaScript's JSON.stringify would produce.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// A number as its JSON literal text, e.g. `"12345678901234567890"` or `"0.1"`.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

/// A JSON object with keys in insertion order (as JavaScript objects keep them).
public struct JSONObject: Sendable, Hashable {
    public private(set) var keys: [String] = []
    private var storage: [String: JSONValue] = [:]

    public init() {}

    public subscript(key: String) -> JSONValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }
}
