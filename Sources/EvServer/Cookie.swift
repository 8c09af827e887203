#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// SKELETON: to be completed by the HTTP workstream (parsing rules of the `cookie` npm package).

/// Parses `Cookie` request headers.
public enum CookieParser {
    /// Parses one or more `Cookie` header values into name -> value (first occurrence wins, values percent-decoded).
    public static func parse(_ headerValues: [String]) -> [String: String] {
        var result: [String: String] = [:]
        for header in headerValues {
            for pair in header.split(separator: ";") {
                guard let eq = pair.firstIndex(of: "=") else { continue }
                let name = pair[..<eq].trimmed
                var value = pair[pair.index(after: eq)...].trimmed
                if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
                if result[name] == nil { result[name] = percentDecode(value) ?? value }
            }
        }
        return result
    }
}

/// Splits a request target into path and query.
public enum URIParts {
    public static func split(_ uri: String) -> (path: String, query: String?) {
        guard let q = uri.firstIndex(of: "?") else { return (percentDecode(uri) ?? uri, nil) }
        let path = String(uri[..<q])
        return (percentDecode(path) ?? path, String(uri[uri.index(after: q)...]))
    }

    public static func parseQuery(_ query: String?) -> [String: String] {
        guard let query else { return [:] }
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
    public var httpDate: String {
        let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let seconds = Int(timeIntervalSince1970.rounded(.down))
        var dayNumber = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secondOfDay = seconds - dayNumber * 86400
        let weekday = days[((dayNumber % 7) + 7) % 7]
        // Civil-from-days (Howard Hinnant).
        dayNumber += 719468
        let era = (dayNumber >= 0 ? dayNumber : dayNumber - 146096) / 146097
        let doe = dayNumber - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(weekday), \(two(day)) \(months[month - 1]) \(year) \(two(secondOfDay / 3600)):"
            + "\(two(secondOfDay % 3600 / 60)):\(two(secondOfDay % 60)) GMT"
    }
}

extension Substring {
    var trimmed: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

/// Decodes `%XX` escapes (and `+` when asked); nil when an escape is malformed or the result is not UTF-8.
public func percentDecode(_ text: String, plusAsSpace: Bool = false) -> String? {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(text.utf8.count)
    var iterator = text.utf8.makeIterator()
    func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 65...70: c - 55
        case 97...102: c - 87
        default: nil
        }
    }
    while let c = iterator.next() {
        if c == 37 {
            guard let h = iterator.next().flatMap(hex), let l = iterator.next().flatMap(hex) else { return nil }
            bytes.append(h << 4 | l)
        } else if c == 43 && plusAsSpace {
            bytes.append(32)
        } else {
            bytes.append(c)
        }
    }
    return String(validating: bytes, as: UTF8.self)
}
