/// Redis Cluster's key -> hash slot mapping: `CRC16(key) mod 16384`, where CRC16 is CRC-16/XMODEM (polynomial
/// 0x1021, initial value 0) and only the part between the first `{` and the next `}` is hashed when that part is
/// not empty (a *hash tag*: `{user:1}:profile` and `{user:1}:cart` share a slot). As in the cluster specification
/// (https://redis.io/docs/reference/cluster-spec/#key-distribution-model).
public enum RedisClusterSlot {
    /// The number of hash slots.
    public static let count = 16384

    /// The slot of `key`.
    public static func slot(forKey key: String) -> Int {
        var key = key
        return key.withUTF8 { slot(forKey: $0) }
    }

    /// The slot of `key`, given as bytes.
    public static func slot(forKey key: some Collection<UInt8>) -> Int {
        if let open = key.firstIndex(of: UInt8(ascii: "{")) {
            let afterOpen = key.index(after: open)
            if let close = key[afterOpen...].firstIndex(of: UInt8(ascii: "}")), close != afterOpen {
                return Int(crc16(key[afterOpen..<close]) & 0x3FFF)
            }
        }
        return Int(crc16(key) & 0x3FFF)
    }

    /// CRC-16/XMODEM of `bytes` ("123456789" -> 0x31C3).
    public static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    /// The byte-at-a-time table for polynomial 0x1021.
    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 {
            crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1
        }
        return crc
    }
}
