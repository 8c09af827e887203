import Dispatch
import EvServer
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The resolver: the one file that calls getaddrinfo. A lookup may take seconds (a slow or unreachable DNS server,
// a search list tried name by name), so it never runs on an event loop: a worker thread runs the system's
// getaddrinfo (so /etc/hosts, nsswitch and the resolver configuration apply exactly as for any other program) and
// hands the answer back to the loop that asked, with `loop.execute`. Lookups of the same name and port that overlap
// share one getaddrinfo call, so a name that hangs costs one blocked thread, not one per reconnect attempt.
//
// The last good answer for each name is kept and given at once to the next attempt while a new lookup runs
// ("stale while revalidate"): a resolver slower than the connect deadline would otherwise fail every attempt, and
// a resolver that is down for a while does not take Redis down with it. An address that changed (a failover, a
// rescheduled container) is still found: the attempt after the new answer arrives uses it.

/// One address a name resolved to, as the bytes of a `sockaddr_in` or `sockaddr_in6`.
struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    let storage: [UInt8]

    /// The address as text (`10.0.0.5:6379`, `[::1]:6379`), for logs.
    var description: String {
        storage.withUnsafeBytes { raw -> String in
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
            let status = getnameinfo(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count),
                                     &host, socklen_t(host.count), &service, socklen_t(service.count),
                                     NI_NUMERICHOST | NI_NUMERICSERV)
            guard status == 0 else { return "?" }
            let name = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let port = String(decoding: service.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return name.contains(":") ? "[\(name)]:\(port)" : "\(name):\(port)"
        }
    }

    /// Calls `body` with the address as the C API takes it.
    func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, Int32) -> Result) -> Result {
        storage.withUnsafeBytes { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), Int32(raw.count))
        }
    }
}

/// Why a name did not resolve, as the resolver said it.
struct ResolverError: Error, Sendable, CustomStringConvertible {
    let description: String
}

enum Resolver {
    private struct Key: Hashable {
        let host: String
        let port: Int
    }

    typealias Completion = @Sendable (Result<[SocketAddress], ResolverError>) -> Void

    /// Lookups in progress, with everyone waiting for each.
    private static let waiting = Mutex<[Key: [Completion]]>([:])
    /// The last successful answer for each name and port.
    private static let answers = Mutex<[Key: [SocketAddress]]>([:])

    /// Resolves `host` for TCP port `port`, then calls `completion` on a worker thread (callers hop to their loop):
    /// at once with the last good answer when there is one (a new lookup then runs for the next caller), else when
    /// the lookup ends. Addresses come in the resolver's order, duplicates removed.
    static func resolve(_ host: String, port: Int, completion: @escaping Completion) {
        let key = Key(host: host, port: port)
        let known = answers.withLock { $0[key] }
        let first = waiting.withLock { waiting -> Bool in
            if waiting[key] != nil {
                if known == nil { waiting[key]!.append(completion) }
                return false
            }
            waiting[key] = known == nil ? [completion] : []
            return true
        }
        if let known {
            DispatchQueue.global().async { completion(.success(known)) }
        }
        guard first else { return }
        DispatchQueue.global().async {
            let result = lookUp(host, port: port)
            if case .success(let addresses) = result { answers.withLock { $0[key] = addresses } }
            let completions = waiting.withLock { $0.removeValue(forKey: key) ?? [] }
            for completion in completions { completion(result) }
        }
    }

    /// getaddrinfo, blocking: worker threads only.
    private static func lookUp(_ host: String, port: Int) -> Result<[SocketAddress], ResolverError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        // No AI_ADDRCONFIG: with only a loopback interface up (a container, a test namespace) glibc would then
        // refuse every IPv4 answer, localhost's included.
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            let reason = status == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(status))
            return .failure(ResolverError(description: "cannot resolve \(host): \(reason)"))
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var node: UnsafeMutablePointer<addrinfo>? = list
        while let entry = node {
            if let address = entry.pointee.ai_addr, entry.pointee.ai_addrlen > 0 {
                let bytes = [UInt8](UnsafeRawBufferPointer(start: address, count: Int(entry.pointee.ai_addrlen)))
                let candidate = SocketAddress(storage: bytes)
                if !addresses.contains(candidate) { addresses.append(candidate) }
            }
            node = entry.pointee.ai_next
        }
        guard !addresses.isEmpty else {
            return .failure(ResolverError(description: "cannot resolve \(host): no address"))
        }
        return .success(addresses)
    }
}
