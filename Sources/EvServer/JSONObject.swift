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

    // private(set): the serializer (JSONSerialization.swift) walks the entries.
    private(set) var entries: [Entry] = []
    /// How many leading entries have array-index keys.
    private(set) var indexKeyCount = 0
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
