// `PackedWord`: up to 24 bytes in three machine words, so that the scanner (HTTPLimits+Scanner.swift) can compare a
// header field name or value it has just read with the few it knows in three instructions.

/// Up to 24 bytes packed into three words, compared in three instructions. Longer input only counts.
struct PackedWord: Equatable {
    static let capacity = 24
    private var low: UInt64 = 0
    private var middle: UInt64 = 0
    private var high: UInt64 = 0
    private(set) var count = 0

    init() {}

    init(_ text: StaticString) {
        text.withUTF8Buffer { bytes in for byte in bytes { append(byte) } }
    }

    @inline(__always)
    mutating func append(_ byte: UInt8) {
        let shift = UInt64(8 * (count & 7))
        switch count >> 3 {
        case 0: low |= UInt64(byte) << shift
        case 1: middle |= UInt64(byte) << shift
        case 2: high |= UInt64(byte) << shift
        default: break
        }
        count += 1
    }

    /// The bytes read as a decimal number (the caller has checked they are at most 18 digits).
    var decimalValue: Int {
        var value = 0
        for index in 0..<min(count, Self.capacity) {
            let word = index < 8 ? low : index < 16 ? middle : high
            value = value * 10 + Int((word >> UInt64(8 * (index & 7))) & 0xff) - 48
        }
        return value
    }
}
