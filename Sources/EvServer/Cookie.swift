#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// Request cookies, parsed the way the `cookie` npm package 0.5 (`parse`) does, which is what express-session sees;
// and the URI helpers Request uses. Everything here takes client bytes, so it must accept any input without
// trapping: it works on UTF-8 bytes and only ever slices at ASCII delimiters.

/// Parses `Cookie` request headers.
public enum CookieParser {
    /// Parses one or more `Cookie` header values into name -> value, in order, the first occurrence of a name
    /// winning across all headers.
    ///
    /// The rules of the `cookie` package 0.5: pairs are separated by `;`; a pair without `=` is skipped; names and
    /// values are trimmed of spaces and tabs; one pair of surrounding double quotes is removed from a value; values
    /// are percent-decoded (`+` stays `+`), and a value whose decoding fails (a bad escape, or bytes that are not
    /// UTF-8) is kept as received. Never throws and never traps.
    public static func parse(_ headerValues: [String]) -> [String: String] {
        var result: [String: String] = [:]
        for header in headerValues { parse(header, into: &result) }
        return result
    }

    /// Parses one `Cookie` header value. See ``parse(_:)-([String])``.
    public static func parse(_ header: String) -> [String: String] {
        var result: [String: String] = [:]
        parse(header, into: &result)
        return result
    }

    private static let semicolon = UInt8(ascii: ";")
    private static let equals = UInt8(ascii: "=")
    private static let quote = UInt8(ascii: "\"")

    /// The value of the first cookie named `name` in `headerValues`: what `parse(headerValues)[name]` gives, without
    /// building the dictionary (or decoding the other values).
    public static func value(named name: String, in headerValues: [String]) -> String? {
        for header in headerValues {
            if let found = value(named: name, inHeader: header) { return found }
        }
        return nil
    }

    /// The value of the first cookie named `name` in one `Cookie` header value.
    static func value(named name: String, inHeader header: String) -> String? {
        var found: String?
        forEachPair(in: header) { candidate, value in
            guard equals(header, candidate, name) else { return true }
            found = decodedValue(header, value)
            return false
        }
        return found
    }

    private static func parse(_ header: String, into result: inout [String: String]) {
        forEachPair(in: header) { name, value in
            let name = text(header, name)
            if result[name] == nil { result[name] = decodedValue(header, value) }
            return true
        }
    }

    /// Walks the pairs of one header in order: `visit` gets the byte ranges of each name and value (trimmed, the
    /// value without its quotes) and returns false to stop.
    ///
    /// Over a span of the header's UTF-8, without a copy: the session cookie is looked up on every request.
    private static func forEachPair(in header: String, _ visit: (Range<Int>, Range<Int>) -> Bool) {
        let bytes = header.utf8.span
        let count = bytes.count
        var index = 0
        while index < count {
            var eq = index, end = index
            while eq < count && bytes[eq] != equals { eq += 1 }
            guard eq < count else { break }
            while end < count && bytes[end] != semicolon { end += 1 }
            if end < eq {
                // A pair without '=' before this one: skip to after the last ';' that precedes the '=' (the
                // package's backtracking), so `a; b=1` still yields b.
                var last = eq - 1
                while last > index && bytes[last] != semicolon { last -= 1 }
                index = last + 1
                continue
            }
            let name = trimmed(bytes, index, eq)
            var value = trimmed(bytes, eq + 1, end)
            if value.count >= 2 && bytes[value.lowerBound] == quote && bytes[value.upperBound - 1] == quote {
                value = (value.lowerBound + 1)..<(value.upperBound - 1)
            }
            if !visit(name, value) { return }
            index = end + 1
        }
    }

    /// `start..<end` without leading and trailing spaces and tabs.
    private static func trimmed(_ bytes: Span<UInt8>, _ start: Int, _ end: Int) -> Range<Int> {
        var start = start, end = end
        while start < end && (bytes[start] == 32 || bytes[start] == 9) { start += 1 }
        while end > start && (bytes[end - 1] == 32 || bytes[end - 1] == 9) { end -= 1 }
        return start..<end
    }

    /// Whether the bytes at `range` of `header` are `name`'s.
    private static func equals(_ header: String, _ range: Range<Int>, _ name: String) -> Bool {
        let bytes = header.utf8.span, expected = name.utf8.span
        guard range.count == expected.count else { return false }
        for offset in 0..<range.count where bytes[range.lowerBound + offset] != expected[offset] { return false }
        return true
    }

    /// A value percent-decoded; kept as received when that fails (the package's `tryDecode`).
    ///
    /// Decoded straight from the header's bytes: the session cookie (`s%3A…`) is decoded on every request, and a
    /// copy of the raw value first would be one more string allocated and scanned.
    private static func decodedValue(_ header: String, _ range: Range<Int>) -> String {
        let bytes = header.utf8.span
        for index in range where bytes[index] == UInt8(ascii: "%") {
            return percentDecoded(bytes, range, plusAsSpace: false) ?? text(header, range)
        }
        return text(header, range)
    }

    /// The bytes at `range` of `header`. The range starts and ends at ASCII bytes (delimiters, spaces, quotes), so
    /// it cuts no character.
    private static func text(_ header: String, _ range: Range<Int>) -> String {
        let utf8 = header.utf8
        let start = utf8.index(utf8.startIndex, offsetBy: range.lowerBound)
        return String(Substring(utf8[start..<utf8.index(start, offsetBy: range.count)]))
    }
}

/// Splits a request target into path and query.
public enum URIParts {
    /// `/a%20b?x=1` -> (`/a b`, `x=1`). The path is percent-decoded (kept as received if that fails); the query is
    /// returned raw, without the `?`.
    public static func split(_ uri: String) -> (path: String, query: String?) {
        guard let q = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return (percentDecode(uri) ?? uri, nil) }
        let path = String(uri[..<q])
        return (percentDecode(path) ?? path, String(uri[uri.index(after: q)...]))
    }

    /// Parses `a=1&b=x+y` into name -> value, percent-decoded with `+` as space; the first value of a repeated name
    /// wins; a name without `=` has the value "".
    public static func parseQuery(_ query: String?) -> [String: String] {
        guard let query, !query.isEmpty else { return [:] }
        var result: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let decode = { (s: Substring) in percentDecode(String(s), plusAsSpace: true) ?? String(s) }
            let name = decode(parts[0])
            if result[name] == nil { result[name] = parts.count > 1 ? decode(parts[1]) : "" }
        }
        return result
    }
}

extension Date {
    /// RFC 1123 date, e.g. `Tue, 01 Dec 2026 10:00:00 GMT` (as `Date.prototype.toUTCString`).
    public var httpDate: String { EvServer.httpDate(secondsSince1970: Int(timeIntervalSince1970.rounded(.down))) }
}

/// The RFC 1123 date of a time in whole seconds since 1970 (as `Date.prototype.toUTCString` writes it): the one
/// formatter for `Expires` and the server's `Date` header.
func httpDate(secondsSince1970 seconds: Int) -> String {
    // Written byte by byte from two small tables (every Set-Cookie with an expiry has one): interpolation made a
    // string per field, and the name tables were arrays built on every call.
    let dayNumber = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
    let secondOfDay = seconds - dayNumber * 86400
    let (year, month, day) = CivilDate.civil(fromDays: Int64(dayNumber))
    var out: [UInt8] = []
    out.reserveCapacity(32)
    func name(_ table: [UInt8], _ index: Int) {
        out.append(table[3 * index]); out.append(table[3 * index + 1]); out.append(table[3 * index + 2])
    }
    func two(_ value: Int) {
        out.append(UInt8(ascii: "0") + UInt8(value / 10)); out.append(UInt8(ascii: "0") + UInt8(value % 10))
    }
    name(httpDateWeekdays, ((dayNumber % 7) + 7) % 7)   // day 0, 1970-01-01, was a Thursday
    out.append(contentsOf: ", ".utf8)
    two(Int(day))
    out.append(UInt8(ascii: " "))
    name(httpDateMonths, Int(month) - 1)
    out.append(UInt8(ascii: " "))
    // As toUTCString: at least four digits, and a '-' before a year before 1 BC (`0999`, `-0001`, `10000`).
    if (0...9999).contains(year) {
        two(Int(year / 100)); two(Int(year % 100))
    } else {
        if year < 0 { out.append(UInt8(ascii: "-")) }
        let digits = Array(String(year.magnitude).utf8)
        out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: max(0, 4 - digits.count)))
        out.append(contentsOf: digits)
    }
    out.append(UInt8(ascii: " "))
    two(secondOfDay / 3600)
    out.append(UInt8(ascii: ":"))
    two(secondOfDay % 3600 / 60)
    out.append(UInt8(ascii: ":"))
    two(secondOfDay % 60)
    out.append(contentsOf: " GMT".utf8)
    return String(decoding: out, as: UTF8.self)
}

private let httpDateWeekdays = Array("ThuFriSatSunMonTueWed".utf8)
private let httpDateMonths = Array("JanFebMarAprMayJunJulAugSepOctNovDec".utf8)

/// Decodes `%XX` escapes (and `+` as space when asked).
/// - Returns: the decoded text, or nil when an escape is malformed (`%`, `%4`, `%zz`) or the decoded bytes are not
///   UTF-8 (as `decodeURIComponent` throws). Text without escapes comes back as is, without copying.
public func percentDecode(_ text: String, plusAsSpace: Bool = false) -> String? {
    let plus = UInt8(ascii: "+"), percent = UInt8(ascii: "%")
    // Over a span of the UTF-8: this decodes every session cookie, and the view's iterator costs several times more.
    let input = text.utf8.span
    var first = 0
    while first < input.count && input[first] != percent && !(plusAsSpace && input[first] == plus) { first += 1 }
    guard first < input.count else { return text }
    return percentDecoded(input, 0..<input.count, plusAsSpace: plusAsSpace)
}

/// `input[range]` with its `%XX` escapes decoded (and `+` as space when asked): what ``percentDecode(_:plusAsSpace:)``
/// returns for the text of those bytes, nil included.
func percentDecoded(_ input: Span<UInt8>, _ range: Range<Int>, plusAsSpace: Bool) -> String? {
    let plus = UInt8(ascii: "+"), percent = UInt8(ascii: "%")
    func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 65...70: c - 55
        case 97...102: c - 87
        default: nil
        }
    }
    var ascii = true
    var malformed = false
    // Written through an output span: the decoded text is never longer than the input, so it never grows, and an
    // append checks no uniqueness and no capacity beyond the span's own bound. (Appended to an empty array rather
    // than `Array(capacity:initializingWith:)`, whose allocation goes through the standard library's unspecialized
    // generic code, at about twice the cost.)
    var bytes: [UInt8] = []
    bytes.append(addingCapacity: range.count) { output in
        var index = range.lowerBound
        let end = range.upperBound
        while index < end {
            var c = input[index]
            index += 1
            if c == percent {
                guard index + 1 < end, let h = hex(input[index]), let l = hex(input[index + 1]) else {
                    malformed = true
                    return
                }
                index += 2
                c = h << 4 | l
            } else if c == plus && plusAsSpace {
                c = 32
            }
            if c >= 0x80 { ascii = false }
            output.append(c)
        }
    }
    if malformed { return nil }
    // ASCII is valid UTF-8 as it is; only other bytes need the check.
    return ascii ? String(decoding: bytes, as: UTF8.self) : String(validating: bytes, as: UTF8.self)
}
