// Serializing: a JSONValue to JSON text, byte for byte as JSON.stringify writes it.

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
