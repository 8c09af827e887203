// `HTTPServerError`: why a server could not start (a taken or invalid address, a failed system call), as
// `ListeningSockets` and `HTTPServer`'s initializer throw it.

/// Why a server could not start: the address is taken or invalid, or a system call failed.
public struct HTTPServerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure, for code that reacts to it (`error.code == .addressInUse`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case addressInUse, invalidAddress, permissionDenied, invalidArgument, systemFailure
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// Another socket already listens on the port.
        public static let addressInUse = Code(.addressInUse)
        /// The host does not resolve or is not an address of this machine.
        public static let invalidAddress = Code(.invalidAddress)
        /// The system refused the bind (for example a port below 1024 without privileges).
        public static let permissionDenied = Code(.permissionDenied)
        /// A bad port or thread count.
        public static let invalidArgument = Code(.invalidArgument)
        /// A socket, thread or libevent call failed.
        public static let systemFailure = Code(.systemFailure)

        public var description: String { "\(value)" }
    }

    /// The kind of failure.
    public let code: Code
    /// A sentence for logs, naming the address, e.g. `cannot listen on 127.0.0.1:3000: address already in use`.
    public let description: String

    /// Creates an error.
    /// - Parameters:
    ///   - code: the kind of failure.
    ///   - description: a sentence naming the address and the reason.
    public init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}
