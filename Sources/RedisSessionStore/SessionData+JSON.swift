#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer

// express-session's stored shape, byte for byte: `JSON.stringify(req.session)`, where the cookie serializes through
// `Cookie.prototype.toJSON` -> `data`:
//   { originalMaxAge, partitioned, priority, expires, secure, httpOnly, domain, path, sameSite }
// JSON.stringify drops `undefined` members, so with express's defaults `partitioned`, `priority`, `secure`, `domain`
// and `sameSite` vanish unless set, while `originalMaxAge` and `expires` are always there (`null` without maxAge)
// and `path`/`httpOnly` always have values. `cookie` is the session's first own property, so it leads, except that
// JavaScript enumerates array-index keys ("0", "7") before every other key.

/// Why a stored value could not be read as a session. Stores treat it as "no session" and log a warning.
public struct SessionDecodingError: Error, Sendable, CustomStringConvertible {
    private enum Kind: Sendable {
        case notJSON(JSONParseError)
        case notAnObject
        case cookieNotAnObject
    }
    private let kind: Kind

    static func notJSON(_ error: JSONParseError) -> SessionDecodingError { SessionDecodingError(kind: .notJSON(error)) }
    static let notAnObject = SessionDecodingError(kind: .notAnObject)
    static let cookieNotAnObject = SessionDecodingError(kind: .cookieNotAnObject)

    // Never includes the value: it holds session data.
    public var description: String {
        switch kind {
        case .notJSON(let error): "session value is not JSON (\(error))"
        case .notAnObject: "session value is not a JSON object"
        case .cookieNotAnObject: "session value has no \"cookie\" object"
        }
    }
}

extension SessionData {
    /// The session as express-session stores it (`JSON.stringify(req.session)`), as UTF-8 bytes.
    public func jsonBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(160)
        // A "cookie" key among the values would shadow the real cookie (in express it would replace it): skip it.
        var values = self.values
        if values["cookie"] != nil { values["cookie"] = nil }
        values.serialize(into: &out, leadingMember: "cookie") { cookie.serialize(into: &$0) }
        return out
    }

    /// The session as express-session stores it, as text.
    public var jsonString: String { String(decoding: jsonBytes(), as: UTF8.self) }

    /// Reads a stored session, tolerantly: what express-session (any 1.x) or this module wrote loads; unknown cookie
    /// fields are ignored; `expires` may have milliseconds or not, or be unreadable (then the cookie has no expiry).
    /// - Throws: ``SessionDecodingError`` when the value is not JSON, not an object, or has no object `cookie`.
    public init(json bytes: [UInt8]) throws(SessionDecodingError) {
        // One pass over the bytes with the JSON parser, member by member: the cookie's fields go straight into a
        // SessionCookie (no tree, no key strings for them) and the other members into the values. This runs for
        // every request that carries a session. It reads exactly what parsing the whole value and then taking
        // `cookie` out would: a repeated key counts with its last value, and a repeated `cookie` starts over.
        var values = JSONObject()
        var cookie: SessionCookie?
        var parser = JSONParser(bytes)
        let isObject: Bool
        do {
            isObject = try parser.parseDocument { parser, key throws(JSONParseError) in
                if parser.key(key, is: "cookie") {
                    try SessionCookie.parse(&parser, into: &cookie)
                } else {
                    // One allocation for the handful of values a session holds, instead of growing 1, 2, 4, 8.
                    if values.isEmpty { values.reserveCapacity(8) }
                    let value = try parser.parseValue()
                    values.updateValue(value, forKey: parser.string(key))
                }
            }
        } catch {
            throw .notJSON(error)
        }
        guard isObject else { throw .notAnObject }
        guard let cookie = consume cookie else { throw .cookieNotAnObject }
        self.init(cookie: cookie, values: consume values)
    }

    /// Reads a stored session from text (see ``init(json:)-([UInt8])``).
    public init(json text: String) throws(SessionDecodingError) {
        try self.init(json: Array(text.utf8))
    }
}

extension SessionCookie {
    /// Parses express's cookie data (the value at the parser's position) into `cookie` the way `new Cookie(sess.cookie)`
    /// reads it: `path` defaults to "/", `httpOnly` to true, `originalMaxAge` is kept as stored. `cookie` becomes nil
    /// when the value is not an object. (Filled in place: returning it would copy the cookie, strings and all.)
    static func parse(_ parser: inout JSONParser, into cookie: inout SessionCookie?) throws(JSONParseError) {
        cookie = SessionCookie(originalMaxAge: nil, expires: nil, secure: nil, httpOnly: true, path: "/", domain: nil,
                               sameSite: nil)
        let isObject = try parser.parseObject { parser, key throws(JSONParseError) in
            let value = try parser.parseValue()
            cookie!.read(value, for: key, in: parser)
        }
        if !isObject { cookie = nil }
    }

    /// Sets the field `key` from `value`. Each field is set from its value alone (a default when unreadable), so that
    /// a field repeated in the JSON reads as its last value, as JSON.parse keeps it.
    private mutating func read(_ value: JSONValue, for key: JSONKey, in parser: JSONParser) {
        // The length picks the candidate names, so each field is compared with one or two names, not all seven.
        switch key.utf8Count {
        case 14 where parser.key(key, is: "originalMaxAge"):
            originalMaxAge = SessionCookie.milliseconds(value)
        case 7 where parser.key(key, is: "expires"):
            expires = value.stringValue.flatMap(ISO8601Milliseconds.parse).map { Date(javaScriptMilliseconds: $0) }
        case 6 where parser.key(key, is: "secure"):
            secure = value.boolValue
        case 8 where parser.key(key, is: "httpOnly"):
            httpOnly = value.boolValue ?? true
        case 4 where parser.key(key, is: "path"):
            path = value.stringValue ?? "/"
        case 6 where parser.key(key, is: "domain"):
            domain = value.stringValue
        case 8 where parser.key(key, is: "sameSite"):
            sameSite = SessionCookie.sameSite(value)
        default:
            break
        }
    }

    /// A stored `originalMaxAge` as whole milliseconds, read as JavaScript reads the number (truncated); nil when it
    /// is not a number or beyond 9e15.
    private static func milliseconds(_ value: JSONValue) -> Int64? {
        // express stores whole milliseconds: an integer literal reads exactly without the general (and several
        // times dearer) decimal-to-double conversion. Below 9e15 every integer is exact as a double too.
        if case .number(let literal) = value, let ms = Int64(literal) {
            return ms.magnitude < 9_000_000_000_000_000 ? ms : nil
        }
        guard let ms = value.doubleValue, ms.isFinite, abs(ms) < 9e15 else { return nil }
        return Int64(ms.rounded(.towardZero))
    }

    /// The `cookie` package's reading of a stored `sameSite`.
    private static func sameSite(_ value: JSONValue) -> SetCookie.SameSite? {
        switch value {
        case .bool(true): return .strict   // the `cookie` package reads `true` as Strict
        case .string(let text):
            // ASCII case folding gives what lowercased() would here: no other character lowercases into these
            // words (the Kelvin sign, the one non-ASCII letter that lowercases to ASCII, is a "k"), and it
            // allocates nothing.
            if text.asciiCaseInsensitiveEquals("lax") { return .lax }
            if text.asciiCaseInsensitiveEquals("strict") { return .strict }
            if text.asciiCaseInsensitiveEquals("none") { return SetCookie.SameSite.none }
            return nil
        default: return nil
        }
    }

    /// express's `cookie.data` as a JSON value (for showing it, e.g. in an API), from the serializer the stores use.
    public var jsonValue: JSONValue {
        var out: [UInt8] = []
        serialize(into: &out)
        return (try? JSONValue(parsing: out)) ?? .null   // our own output always parses
    }

    /// Appends express's `cookie.data` as JSON, in its field order, leaving out what JavaScript would leave undefined.
    func serialize(into out: inout [UInt8]) {
        out.appendUTF8(#"{"originalMaxAge":"#)
        if let originalMaxAge { out.appendUTF8(String(originalMaxAge)) } else { out.appendUTF8("null") }
        out.appendUTF8(#","expires":"#)
        if let expires {
            out.append(UInt8(ascii: "\""))
            ISO8601Milliseconds.format(expires.javaScriptMilliseconds, into: &out)
            out.append(UInt8(ascii: "\""))
        } else {
            out.appendUTF8("null")
        }
        if let secure { out.appendUTF8(secure ? #","secure":true"# : #","secure":false"#) }
        out.appendUTF8(httpOnly ? #","httpOnly":true"# : #","httpOnly":false"#)
        if let domain {
            out.appendUTF8(#","domain":"#)
            JSONValue.serializeString(domain, into: &out)
        }
        out.appendUTF8(#","path":"#)
        JSONValue.serializeString(path, into: &out)
        // express users configure the lower-case names ('lax'), which is what express stores. The last field and
        // the closing brace go in one piece.
        switch sameSite {
        case .lax?: out.appendUTF8(#","sameSite":"lax"}"#)
        case .strict?: out.appendUTF8(#","sameSite":"strict"}"#)
        case SetCookie.SameSite.none?: out.appendUTF8(#","sameSite":"none"}"#)
        case nil: out.append(UInt8(ascii: "}"))
        }
    }
}

// MARK: - ISO 8601, as Date.prototype.toISOString writes it and `new Date(string)` reads it

enum ISO8601Milliseconds {
    /// `2026-12-01T10:00:00.000Z`; years outside 0...9999 as `+275760` / `-000001` (toISOString's expanded years).
    static func format(_ milliseconds: Int64, into out: inout [UInt8]) {
        let msOfDay = ((milliseconds % 86_400_000) + 86_400_000) % 86_400_000
        let days = (milliseconds - msOfDay) / 86_400_000
        let (year, month, day) = CivilDate.civil(fromDays: days)
        // The last `width` decimal digits of `value` (not negative), zero-padded; straight into `out`, without an
        // array per field (a save with a max age formats a date every time).
        func append(_ value: Int64, width: Int) {
            var divisor: Int64 = 1
            for _ in 1..<width { divisor *= 10 }
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
                divisor /= 10
            }
        }
        if year >= 0 && year <= 9999 {
            append(year, width: 4)
        } else {
            out.append(year < 0 ? UInt8(ascii: "-") : UInt8(ascii: "+"))
            append(abs(year), width: 6)
        }
        out.append(UInt8(ascii: "-"))
        append(month, width: 2)
        out.append(UInt8(ascii: "-"))
        append(day, width: 2)
        out.append(UInt8(ascii: "T"))
        append(msOfDay / 3_600_000, width: 2)
        out.append(UInt8(ascii: ":"))
        append(msOfDay / 60_000 % 60, width: 2)
        out.append(UInt8(ascii: ":"))
        append(msOfDay / 1000 % 60, width: 2)
        out.append(UInt8(ascii: "."))
        append(msOfDay % 1000, width: 3)
        out.append(UInt8(ascii: "Z"))
    }

    static func format(_ milliseconds: Int64) -> String {
        var out: [UInt8] = []
        format(milliseconds, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Reads the ECMAScript date-time string format: `YYYY-MM-DD` or `YYYY-MM-DDTHH:mm[:ss[.sss]]` followed by `Z`
    /// or `±HH:mm` (a date-time without a zone is read as UTC here; JavaScript would use local time). Years may be
    /// expanded (`+YYYYYY`). Extra fraction digits are truncated to milliseconds. Nil when malformed.
    static func parse(_ text: String) -> Int64? {
        // Over the string's span with byte arguments: a stored session with a max age is parsed on every request,
        // and an array copy plus `Character.asciiValue` per separator cost more than the rest of the parse.
        let bytes = text.utf8.span
        var index = 0
        func digits(_ count: Int) -> Int64? {
            guard index + count <= bytes.count else { return nil }
            var value: Int64 = 0
            for _ in 0..<count {
                let byte = bytes[index]
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int64(byte - 0x30)
                index += 1
            }
            return value
        }
        func consume(_ byte: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
            return true
        }
        var year: Int64
        if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let negative = bytes[index] == UInt8(ascii: "-")
            index += 1
            guard let y = digits(6) else { return nil }
            year = negative ? -y : y
        } else {
            guard let y = digits(4) else { return nil }
            year = y
        }
        guard consume(UInt8(ascii: "-")), let month = digits(2), consume(UInt8(ascii: "-")), let day = digits(2),
              (1...12).contains(month), day >= 1, day <= daysInMonth(year: year, month: month) else { return nil }
        var msOfDay: Int64 = 0
        var offsetMinutes: Int64 = 0
        if index < bytes.count {
            guard consume(UInt8(ascii: "T")), let hour = digits(2), consume(UInt8(ascii: ":")), let minute = digits(2),
                  hour <= 24, minute <= 59 else { return nil }
            var second: Int64 = 0, millisecond: Int64 = 0
            if consume(UInt8(ascii: ":")) {
                guard let s = digits(2), s <= 59 else { return nil }
                second = s
                if consume(UInt8(ascii: ".")) {
                    var fractionDigits = 0
                    while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                        if fractionDigits < 3 { millisecond = millisecond * 10 + Int64(bytes[index] - 0x30) }
                        fractionDigits += 1
                        index += 1
                    }
                    guard fractionDigits > 0 else { return nil }
                    for _ in min(fractionDigits, 3)..<3 { millisecond *= 10 }
                }
            }
            guard hour < 24 || (minute == 0 && second == 0 && millisecond == 0) else { return nil }
            msOfDay = ((hour * 60 + minute) * 60 + second) * 1000 + millisecond
            if consume(UInt8(ascii: "Z")) {
                offsetMinutes = 0
            } else if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                let negative = bytes[index] == UInt8(ascii: "-")
                index += 1
                guard let offsetHour = digits(2), consume(UInt8(ascii: ":")), let offsetMinute = digits(2),
                      offsetHour <= 23, offsetMinute <= 59 else { return nil }
                offsetMinutes = (offsetHour * 60 + offsetMinute) * (negative ? -1 : 1)
            }
            guard index == bytes.count else { return nil }
        }
        let ms = CivilDate.days(fromYear: year, month: month, day: day) * 86_400_000 + msOfDay - offsetMinutes * 60_000
        // JavaScript dates end at +/-8.64e15 ms: beyond, Node reads an Invalid Date (and stores null), so do we.
        return abs(ms) <= 8_640_000_000_000_000 ? ms : nil
    }

    private static func isLeap(_ year: Int64) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    private static func daysInMonth(year: Int64, month: Int64) -> Int64 {
        switch month {
        case 2: isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }
}
