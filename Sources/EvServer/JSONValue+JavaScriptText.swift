// JavaScript number text: a Double as Number.prototype.toString() prints it.

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
