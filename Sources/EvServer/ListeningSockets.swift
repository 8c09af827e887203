import CEvent

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The listening sockets, opened before the servers start: one per loop, all on one port. Each `HTTPServer` then
// accepts on its own (HTTPServer.swift). The errno of a failed call becomes an `HTTPServerError` here.

/// Creates the listening sockets: one per loop, all on the same port (on Linux SO_REUSEPORT lets the kernel spread
/// new connections over them, so the loops never contend for an accept).
enum ListeningSockets {
    /// Opens `count` nonblocking listening sockets on `host:port`; port 0 picks a free port for all of them.
    /// - Returns: the descriptors (the caller owns them) and the bound port.
    /// - Throws: ``HTTPServerError`` when the host does not resolve or a socket cannot be bound.
    static func open(host: String, port: Int, count: Int, backlog: Int) throws(HTTPServerError)
        -> (descriptors: [Int32], port: Int)
    {
        guard (0...65535).contains(port) else {
            throw HTTPServerError(.invalidArgument, "invalid port \(port): must be in 0...65535")
        }
        guard count >= 1 else { throw HTTPServerError(.invalidArgument, "threads must be at least 1, got \(count)") }
        // SO_REUSEPORT would let us share a port with another server (even another EvServer) that listens on it.
        // A throwaway bind without it fails with EADDRINUSE in that case, so a taken port is an error, not a
        // silent load-balancing surprise.
        if port != 0 { try probe(host: host, port: port) }
        var descriptors: [Int32] = []
        var boundPort = port
        do {
            #if os(Linux)
            for _ in 0..<count {
                let fd = try listeningSocket(host: host, port: boundPort, backlog: backlog)
                descriptors.append(fd)
                if boundPort == 0 { boundPort = try localPort(of: fd, host: host) }
            }
            #else
            // Elsewhere SO_REUSEPORT does not spread connections (the BSDs hand them all to one of the sockets), so
            // the loops share one socket, each through a descriptor of its own: every loop is woken for each new
            // connection and one accepts it (libevent's listener retries on EAGAIN).
            let fd = try listeningSocket(host: host, port: port, backlog: backlog)
            descriptors.append(fd)
            if boundPort == 0 { boundPort = try localPort(of: fd, host: host) }
            for _ in 1..<count {
                let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
                guard copy >= 0 else { throw systemError("fcntl", address: "\(host):\(boundPort)", errno: errno) }
                descriptors.append(copy)
            }
            #endif
        } catch {
            for fd in descriptors { close(fd) }
            throw error
        }
        return (descriptors, boundPort)
    }

    private static func probe(host: String, port: Int) throws(HTTPServerError) {
        let fd = try listeningSocket(host: host, port: port, backlog: nil)
        close(fd)
    }

    /// socket + SO_REUSEADDR (+ SO_REUSEPORT on Linux when listening) + bind (+ listen). `backlog == nil` binds only.
    private static func listeningSocket(host: String, port: Int, backlog: Int?) throws(HTTPServerError) -> Int32 {
        let address = "\(host.contains(":") ? "[\(host)]" : host):\(port)"
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = streamSocketType
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
        guard rc == 0, let info = list else {
            let reason = rc == 0 ? "no address" : String(cString: gai_strerror(rc))
            throw HTTPServerError(.invalidAddress, "cannot listen on \(address): host does not resolve (\(reason))")
        }
        defer { freeaddrinfo(list) }

        let fd = streamSocket(family: info.pointee.ai_family)
        guard fd >= 0 else { throw systemError("socket", address: address, errno: errno) }
        // The error of the `call` that just failed, once the socket is closed (errno read first: close may set it).
        func failed(_ call: String) -> HTTPServerError {
            let error = errno
            close(fd)
            return systemError(call, address: address, errno: error)
        }
        // SO_REUSEADDR; SO_REUSEPORT on Linux only (libevent's _port variant does nothing elsewhere, see `open`).
        guard evutil_make_listen_socket_reuseable(fd) == 0,
              backlog == nil || evutil_make_listen_socket_reuseable_port(fd) == 0
        else { throw failed("setsockopt") }
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { throw failed("bind") }
        if let backlog, listen(fd, Int32(clamping: backlog)) != 0 { throw failed("listen") }
        return fd
    }

    /// A nonblocking, close-on-exec TCP socket, or -1 with errno set.
    private static func streamSocket(family: Int32) -> Int32 {
        #if os(Linux) && canImport(Glibc)
        // Both flags at once: a child spawned by another thread in between (a test's redis-server, say) must not
        // inherit the listening socket.
        return socket(family, streamSocketType | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(family, streamSocketType, 0)
        guard fd >= 0 else { return -1 }
        guard evutil_make_socket_closeonexec(fd) == 0, evutil_make_socket_nonblocking(fd) == 0 else {
            let error = errno
            evutil_closesocket(fd)
            errno = error
            return -1
        }
        return fd
        #endif
    }

    /// SOCK_STREAM as socket(2) takes it: Glibc imports it as an enum case, the other C libraries as an Int32.
    private static var streamSocketType: Int32 {
        #if canImport(Glibc)
        Int32(SOCK_STREAM.rawValue)
        #else
        SOCK_STREAM
        #endif
    }

    private static func localPort(of fd: Int32, host: String) throws(HTTPServerError) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { throw systemError("getsockname", address: host, errno: errno) }
        return withUnsafePointer(to: &storage) { pointer -> Int in
            switch Int32(pointer.pointee.ss_family) {
            case AF_INET:
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6:
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                    Int(UInt16(bigEndian: $0.pointee.sin6_port))
                }
            default: 0
            }
        }
    }

    /// The one place that turns an errno into an ``HTTPServerError``.
    private static func systemError(_ call: String, address: String, errno code: Int32) -> HTTPServerError {
        let reason = String(cString: strerror(code))
        switch code {
        case EADDRINUSE:
            return HTTPServerError(.addressInUse, "cannot listen on \(address): address already in use")
        case EADDRNOTAVAIL, EAFNOSUPPORT:
            return HTTPServerError(.invalidAddress, "cannot listen on \(address): \(reason)")
        case EACCES, EPERM:
            return HTTPServerError(.permissionDenied, "cannot listen on \(address): \(reason)")
        default:
            return HTTPServerError(.systemFailure, "cannot listen on \(address): \(call) failed: \(reason)")
        }
    }

    /// Closes a descriptor that no server took.
    static func close(_ fd: Int32) { evutil_closesocket(fd) }
}
