#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The Codable bridge: any Encodable to a JSONValue and back, through Foundation's JSONEncoder and JSONDecoder.

extension JSONValue {
    /// Encodes `value` with Foundation's `JSONEncoder` and parses the result.
    ///
    /// The default encoder sorts object keys: JSONEncoder's own order is not even stable from one process to the
    /// next on Linux, and a session value whose bytes change without its content changing would be saved again on
    /// every request (and differ between instances).
    /// - Parameter encoder: the encoder to use; nil for one with `.sortedKeys`.
    /// - Throws: the encoder's error.
    public init<T: Encodable>(encoding value: T, encoder: JSONEncoder? = nil) throws {
        let data = try (encoder ?? JSONValue.makeEncoder()).encode(value)
        try self.init(parsing: Array(data))
    }

    private static func makeEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }

    /// Decodes this value as `T` with Foundation's `JSONDecoder`.
    /// - Throws: the decoder's error when the value does not have `T`'s shape.
    public func decode<T: Decodable>(as type: T.Type = T.self, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(T.self, from: Data(serialized()))
    }
}
