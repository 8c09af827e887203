import CEvent
import COpenSSL
import EvServer

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The socket layer of a Redis connection: the one file that calls libevent's bufferevents (a socket bufferevent,
// under a bufferevent_openssl filter for TLS), the socket options and the system resolver (getaddrinfo), and that
// holds their C callbacks and pointers. RedisTransport above it works with Swift values only: it asks a RedisSocket
// to connect, write and hand its input to the reply reader, and hears back through RedisSocketDelegate.

/// What a ``RedisSocket`` reports. Every call comes on the loop thread, from a libevent callback.
protocol RedisSocketDelegate: AnyObject {
    /// TCP is up, and with TLS the handshake is done.
    func socketDidConnect(_ socket: RedisSocket)
    /// Bytes arrived: read them with ``RedisSocket/drainInput(into:)``.
    func socketHasInput(_ socket: RedisSocket)
    /// The connection failed or the peer closed it (`endOfFile`); errno as it was when libevent reported it.
    func socketDidFail(_ socket: RedisSocket, endOfFile: Bool, errno: Int32)
}

/// One connection attempt, then connection, to one address. Loop-confined; ``close()`` before letting it go.
final class RedisSocket {
    private let bufferevent: OpaquePointer
    /// The socket bufferevent: `bufferevent` itself in plain text, the layer under the TLS filter otherwise (owned
    /// by the filter; kept for its file descriptor).
    private let socketLayer: OpaquePointer
    let isTLS: Bool
    /// errno right after a connect that failed at once (libevent reports it on a later turn, errno long gone).
    private let immediateConnectError: Int32
    /// Weak: the transport owns this socket.
    private weak var delegate: (any RedisSocketDelegate)?
    private var isClosed = false

    /// Starts connecting to `address`, with TLS when `tls` is given (the SSL is made from its context, with the name
    /// checks for `host`).
    /// - Throws: ``RedisSocketError`` when the attempt fails at once; nothing is left behind then.
    init(connectingTo address: SocketAddress, tls: (context: TLSContext, host: String)?, loop: EventLoop,
         delegate: any RedisSocketDelegate) throws(RedisSocketError) {
        loop.preconditionInLoop()
        ignoreSIGPIPE()
        var ssl: OpaquePointer?
        if let tls {
            do {
                ssl = try tls.context.makeSSL(host: tls.host)
            } catch {
                throw RedisSocketError(description: error.description, isFinal: true)
            }
        }
        // Plain text: a socket bufferevent. TLS: the same socket bufferevent under a bufferevent_openssl filter,
        // rather than an OpenSSL socket bufferevent, which reads each record with two read(2) calls (its header,
        // then its body) and writes each piece of its buffer with its own write(2); through the filter the socket
        // layer reads whatever has arrived in one call and writes a loop turn's records in one writev(2), and
        // OpenSSL reads records from memory (libevent 2.1's socket mode cannot read ahead safely).
        guard let socketLayer = loop.withUnsafeEventBase({ base in
            bufferevent_socket_new(base, -1, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue))
        }) else {
            if let ssl { SSL_free(ssl) }
            throw RedisSocketError(description: "\(address): could not allocate a connection")
        }
        errno = 0
        let status = address.withSockaddr { bufferevent_socket_connect(socketLayer, $0, $1) }
        immediateConnectError = errno
        guard status == 0 else {
            bufferevent_free(socketLayer)
            if let ssl { SSL_free(ssl) }
            throw RedisSocketError(description: "\(address): \(String(cString: strerror(immediateConnectError)))")
        }
        let fd = bufferevent_getfd(socketLayer)
        if fd >= 0 { evserver_tune_redis_socket(fd) }
        var created = socketLayer
        if let ssl {
            // The filter owns the SSL and the socket layer from here (both freed with it: BEV_OPT_CLOSE_ON_FREE).
            guard let filter = loop.withUnsafeEventBase({ base in
                bufferevent_openssl_filter_new(base, socketLayer, ssl, BUFFEREVENT_SSL_CONNECTING,
                                               Int32(BEV_OPT_CLOSE_ON_FREE.rawValue))
            }) else {
                bufferevent_free(socketLayer)
                SSL_free(ssl)
                throw RedisSocketError(description: "\(address): could not allocate a TLS connection")
            }
            // Redis closes TLS connections without close_notify at times (a restart, CLIENT KILL): an EOF, not an
            // error.
            bufferevent_openssl_set_allow_dirty_shutdown(filter, 1)
            created = filter
        }
        self.bufferevent = created
        self.socketLayer = socketLayer
        self.isTLS = ssl != nil
        self.delegate = delegate
        // passUnretained: the owner keeps this socket until close(), which clears the callbacks before the free.
        bufferevent_setcb(created, onRead, nil, onEvent, Unmanaged.passUnretained(self).toOpaque())
        bufferevent_enable(created, Int16(EV_READ | EV_WRITE))
    }

    deinit {
        close()
    }

    /// Queues `bytes` for writing. False when libevent could not take them (out of memory) or the socket is closed.
    func write(_ bytes: [UInt8]) -> Bool {
        guard !isClosed else { return false }
        return bytes.withUnsafeBytes { raw in bufferevent_write(bufferevent, raw.baseAddress, raw.count) == 0 }
    }

    /// The first byte waiting to be read, without taking it.
    var firstInputByte: UInt8? {
        guard !isClosed else { return nil }
        var byte: UInt8 = 0
        return evbuffer_copyout(bufferevent_get_input(bufferevent), &byte, 1) == 1 ? byte : nil
    }

    /// Hands every byte read so far to `reader` (chunk by chunk, without a copy of ours), and drops them here.
    /// - Returns: whether there were any.
    /// - Throws: what the reader throws for bytes that are not RESP.
    @discardableResult
    func drainInput(into reader: RESPReader) throws(HiredisError) -> Bool {
        guard !isClosed else { return false }
        let input = bufferevent_get_input(bufferevent)
        var chunk = iovec()
        var any = false
        while evbuffer_get_length(input) > 0, evbuffer_peek(input, -1, nil, &chunk, 1) > 0 {
            try reader.feed(UnsafeRawBufferPointer(start: chunk.iov_base, count: chunk.iov_len))
            evbuffer_drain(input, chunk.iov_len)
            any = true
        }
        return any
    }

    /// Why TLS failed, from the SSL's verify result and the errors libevent collected; nil when TLS reported nothing
    /// (the failure was the socket's).
    func tlsFailure(verifiesPeer: Bool) -> String? {
        guard isTLS, !isClosed else { return nil }
        var errors: [UInt] = []
        for _ in 0..<16 {
            let code = bufferevent_get_openssl_error(bufferevent)
            if code == 0 { break }
            // libevent puts SSL_get_error's small result (SSL_ERROR_SSL, SSL_ERROR_SYSCALL) in the same list as
            // OpenSSL's packed error codes: only the latter name a reason.
            if code > 255 { errors.append(code) }
        }
        return describeTLSFailure(ssl: bufferevent_openssl_get_ssl(bufferevent), errors: errors,
                                   verifiesPeer: verifiesPeer)
    }

    /// The error of a connect that failed: the socket's pending error, else `saved` (errno when libevent reported
    /// it), else the error of a connect that failed at once; 0 when none is known.
    func connectError(saved: Int32) -> Int32 {
        var code = saved
        let fd = isClosed ? -1 : bufferevent_getfd(socketLayer)
        if fd >= 0 {
            var socketError: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ERROR, &socketError, &length) == 0, socketError != 0 {
                code = socketError
            }
        }
        if code == 0 || code == EAGAIN || code == EINPROGRESS { code = immediateConnectError }
        return code
    }

    /// Whether libevent reported an error with no errno at all (a peer that closed, seen as an error).
    func isSilentError(saved: Int32) -> Bool { saved == 0 && immediateConnectError == 0 }

    /// Closes the connection at once; no callback comes afterwards. Idempotent.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        bufferevent_setcb(bufferevent, nil, nil, nil, nil)
        bufferevent_free(bufferevent)
    }

    // MARK: From the C callbacks

    fileprivate func handle(_ events: Int16, errno saved: Int32) {
        guard !isClosed, let delegate else { return }
        if events & Int16(BEV_EVENT_CONNECTED) != 0 {
            delegate.socketDidConnect(self)
        } else if events & Int16(BEV_EVENT_ERROR | BEV_EVENT_EOF) != 0 {
            delegate.socketDidFail(self, endOfFile: events & Int16(BEV_EVENT_EOF) != 0, errno: saved)
        }
    }

    fileprivate func readable() {
        guard !isClosed else { return }
        delegate?.socketHasInput(self)
    }
}

/// A connection attempt that failed before any callback: `isFinal` when no other address can do better (a TLS
/// setup problem).
struct RedisSocketError: Error, Sendable, CustomStringConvertible {
    let description: String
    var isFinal = false
}

/// `strerror` as a String.
func systemErrorText(_ code: Int32) -> String {
    code == 0 ? "connection failed" : String(cString: strerror(code))
}

// MARK: - C callbacks

private func onRead(_ bufferevent: OpaquePointer?, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    let socket = Unmanaged<RedisSocket>.fromOpaque(context).takeUnretainedValue()
    // The delegate may close and drop the socket inside: keep it alive until this callback returns.
    withExtendedLifetime(socket) { socket.readable() }
}

private func onEvent(_ bufferevent: OpaquePointer?, _ events: Int16, _ context: UnsafeMutableRawPointer?) {
    let saved = errno
    guard let context else { return }
    let socket = Unmanaged<RedisSocket>.fromOpaque(context).takeUnretainedValue()
    withExtendedLifetime(socket) { socket.handle(events, errno: saved) }
}

// MARK: - SIGPIPE

/// libevent writes with writev(2), which raises SIGPIPE when Redis has closed the socket; the default action kills
/// the process. Ignore it (once, and only if nobody installed a handler), so a dead peer is an EPIPE error that
/// closes the connection.
private func ignoreSIGPIPE() {
    _ = sigpipeIgnored
}

private let sigpipeIgnored: Bool = {
    var current = sigaction()
    guard sigaction(SIGPIPE, nil, &current) == 0 else { return false }
    #if canImport(Glibc)
    let isDefault = current.__sigaction_handler.sa_handler == nil
    #else
    let isDefault = current.__sigaction_u.__sa_handler == nil
    #endif
    guard isDefault else { return false }
    signal(SIGPIPE, SIG_IGN)
    return true
}()

// MARK: - Addresses and the system resolver

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

extension Resolver {
    /// The address of `host` when it is an IP literal, else nil. Parsing only (inet_pton): no lookup, no file read,
    /// nothing that blocks, so fine on a loop. (getaddrinfo with AI_NUMERICHOST would do, but may read
    /// /etc/gai.conf.) A scoped IPv6 address (`fe80::1%eth0`) goes to the resolver instead.
    static func numericAddress(_ host: String, port: Int) -> SocketAddress? {
        var v4 = sockaddr_in()
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(clamping: port).bigEndian)
            return SocketAddress(storage: withUnsafeBytes(of: v4) { Array($0) })
        }
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(clamping: port).bigEndian)
            return SocketAddress(storage: withUnsafeBytes(of: v6) { Array($0) })
        }
        return nil
    }

    /// getaddrinfo, blocking: resolver threads only.
    static func lookUp(_ host: String, port: Int) -> Result<[SocketAddress], ResolverError> {
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

// MARK: - Threads

/// Runs `body` on a new detached thread; false when no thread could be made (then `body` never runs). Lookups are
/// rare (one per connection attempt, shared by overlapping attempts for the same name), so a thread each costs
/// little and never waits behind another lookup.
func runDetached(_ body: @escaping @Sendable () -> Void) -> Bool {
    // passRetained: the new thread holds the +1 on the box until it has taken the closure.
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    #if canImport(Darwin)
    var thread: pthread_t? = nil
    #else
    var thread = pthread_t()
    #endif
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    defer { pthread_attr_destroy(&attributes) }
    let status = pthread_create(&thread, &attributes, { raw in
        Unmanaged<ThreadBody>.fromOpaque((raw as UnsafeMutableRawPointer?)!).takeRetainedValue().body()
        return nil
    }, box)
    guard status == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(box).release()   // no thread took it: drop our +1
        return false
    }
    return true
}

private final class ThreadBody: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}
