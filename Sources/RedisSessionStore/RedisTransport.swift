import CEvent
import COpenSSL
import EvServer

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// One connection to a Redis server on an event loop: the name looked up off the loop (Resolver), each address tried
// in turn, the bytes carried by a libevent bufferevent (a socket one, or bufferevent_openssl for TLS: the handshake
// and every record run on the same loop), the replies parsed by hiredis's reader (RESPReader). This file owns the
// bufferevent calls and the C callbacks; TLSContext owns the OpenSSL setup.
//
// The promises RedisConnection and SentinelSubscription build on (they are what hiredis's async context promised):
// - Each command sent gets exactly one `didReceive`: with its reply, in order, or with nil when the connection goes
//   away before the reply (closed by us, lost, or never established).
// - `transportDidClose` comes exactly once, after those nil replies; nothing comes after it.
// - `free()` is allowed from anywhere on the loop, inside any delegate call included: inside one it takes effect when
//   that call returns, otherwise at once (the nil replies and `transportDidClose` run before `free()` returns).

/// Receives what happens on one ``RedisTransport``. Every call comes on the loop thread.
protocol RedisTransportDelegate: AnyObject {
    /// The connection is up (TCP, and TLS when configured); commands queued meanwhile are being written.
    func transportDidConnect(_ transport: RedisTransport)
    /// The reply to `command`, the oldest command still outstanding, or nil when the command is dropped because the
    /// connection is going away. Called exactly once per command sent.
    func transport(_ transport: RedisTransport, didReceive reply: RedisValue?, for command: PendingCommand)
    /// The connection is gone, after every command sent on it got its reply or nil. Called exactly once.
    /// - Parameter reason: why it was lost or could not be made, or nil for a ``RedisTransport/free()`` we asked for.
    func transportDidClose(_ transport: RedisTransport, reason: String?)
}

/// The delegate of a transport that subscribes (``RedisTransport/subscribe(_:)``): it also gets the pushes.
protocol RedisSubscriberDelegate: RedisTransportDelegate {
    /// One push on a subscribed connection, e.g. `["subscribe", channel, count]` when a subscription is confirmed,
    /// then `["message", channel, payload]` for each message. Called on the loop thread.
    func transport(_ transport: RedisTransport, didReceivePush push: RedisValue)
}

/// Where to connect: a host name or IP address, a port, and TLS settings (nil: plain text).
struct RedisEndpoint: Sendable {
    var host: String
    var port: Int
    var tls: RedisTLSConfiguration?
}

/// One connection to Redis on one ``EventLoop``: name lookup, TCP, TLS, RESP.
///
/// Loop-confined: create it, send on it and free it on the loop thread only.
final class RedisTransport: @unchecked Sendable {
    // @unchecked Sendable: all state is touched only on `loop`'s thread (checked with preconditionInLoop); the
    // type crosses threads only inside the resolver's completion, which hops back with loop.execute.

    private enum State {
        /// Waiting for the resolver (and the TLS context, built on its thread).
        case resolving
        /// A bufferevent is connecting to `addresses[nextAddress - 1]` (TCP, then the TLS handshake).
        case connecting
        case open
        case closed
    }

    let loop: EventLoop
    let endpoint: RedisEndpoint
    /// Strong, so a reply can always be delivered; cleared when the transport closes, which breaks the cycle with
    /// the delegate (which holds this transport while it is current).
    private var delegate: (any RedisTransportDelegate)?
    private var state = State.resolving
    private var bufferevent: OpaquePointer?
    /// The socket bufferevent: `bufferevent` itself in plain text, the layer under the TLS filter otherwise (owned by
    /// the filter; kept for its file descriptor).
    private var socketLayer: OpaquePointer?
    private var tlsContext: TLSContext?
    private var addresses: [SocketAddress] = []
    private var nextAddress = 0
    /// Why each address tried so far failed.
    private var attemptFailures: [String] = []
    /// errno right after a connect that failed at once (libevent reports it on a later turn, errno long gone).
    private var immediateConnectError: Int32 = 0
    private let reader = RESPReader()
    /// Commands written and not answered yet, oldest first from `head`.
    private var pending: [PendingCommand?] = []
    private var head = 0
    /// Bytes of commands sent before the connection was open, and over TLS those of the current loop turn.
    private var queued: [UInt8] = []
    /// Whether a write of `queued` is scheduled (TLS).
    private var flushScheduled = false
    private var subscribed = false
    /// Whether any byte came from the server (the hints about TLS apply only to a server that said nothing).
    private var receivedAny = false
    /// Nesting of delegate calls made from inside a libevent callback: `free()` waits until they return.
    private var callbackDepth = 0
    private var closeRequested = false
    /// The +1 that keeps the transport alive while libevent or the resolver may call back; dropped on close.
    private var selfReference: Unmanaged<RedisTransport>?
    /// Why the connection was lost or could not be made; nil while it is healthy.
    private(set) var failureReason: String?

    /// Starts looking up the host (off the loop), then connects. Never blocks.
    init(endpoint: RedisEndpoint, loop: EventLoop, delegate: any RedisTransportDelegate) {
        loop.preconditionInLoop()
        ignoreSIGPIPE()
        self.loop = loop
        self.endpoint = endpoint
        self.delegate = delegate
        // passRetained: held until close (finish()), so libevent's callbacks and the resolver's answer always find
        // the transport alive.
        selfReference = Unmanaged.passRetained(self)
        let endpoint = self.endpoint
        if endpoint.tls == nil, let address = Resolver.numericAddress(endpoint.host, port: endpoint.port) {
            // An IP address and no TLS files to read: nothing that blocks, so no thread. Still on the next turn, so
            // that no delegate call comes from inside init.
            loop.execute { self.resolved(.success(([address], nil))) }
            return
        }
        Resolver.resolve(endpoint.host, port: endpoint.port) { [self] result in
            // On the resolver's worker thread: the TLS context is built (files read) here too, off the loop.
            let prepared: Result<([SocketAddress], TLSContext?), TransportFailure>
            switch result {
            case .failure(let error):
                prepared = .failure(TransportFailure(error.description))
            case .success(let addresses):
                do {
                    let context = try endpoint.tls.map { configuration throws(TLSError) in
                        try TLSContextCache.context(for: configuration)
                    }
                    prepared = .success((addresses, context))
                } catch {
                    prepared = .failure(TransportFailure("\(error)"))
                }
            }
            loop.execute { self.resolved(prepared) }
        }
    }

    /// The address connected to, once open.
    var connectedAddress: SocketAddress? {
        state == .open && nextAddress > 0 && nextAddress <= addresses.count ? addresses[nextAddress - 1] : nil
    }

    /// Whether the attempt is still waiting for the name's addresses.
    var isResolving: Bool { state == .resolving }

    /// What the connection attempt is waiting for, for a timeout message; nil once open.
    var pendingStage: String? {
        switch state {
        case .resolving:
            return "looking up \(endpoint.host)"
        case .connecting:
            let address = nextAddress > 0 && nextAddress <= addresses.count ? "\(addresses[nextAddress - 1])" : "?"
            return endpoint.tls == nil ? "connecting to \(address)"
                : "connecting to \(address) and completing the TLS handshake; if the port is plain text, the server "
                    + "did not answer with TLS (use redis://)"
        case .open, .closed:
            return nil
        }
    }

    /// Queues one command (written once connected); its reply goes to the delegate with `command`.
    /// - Throws: ``HiredisError`` when the transport is closed or closing; the delegate then never hears of
    ///   `command`.
    func send(_ arguments: [[UInt8]], command: PendingCommand) throws(HiredisError) {
        try send(RedisCommand(arguments), command: command)
    }

    /// ``send(_:command:)`` of a command already encoded.
    func send(_ encoded: RedisCommand, command: PendingCommand) throws(HiredisError) {
        loop.preconditionInLoop()
        precondition(encoded.isComplete, "a RedisCommand is sent with fewer arguments than it announced")
        try write(encoded)
        pending.append(command)
    }

    /// Subscribes to `channels` (`SUBSCRIBE`); the confirmation and every message go to the delegate's
    /// ``RedisSubscriberDelegate/transport(_:didReceivePush:)``, once the replies to the commands sent before have
    /// come. Afterwards the connection accepts no other command. The subscription lasts until the connection closes.
    /// - Throws: ``HiredisError`` when the transport is closed or closing.
    func subscribe(_ channels: [String]) throws(HiredisError) {
        loop.preconditionInLoop()
        precondition(!channels.isEmpty, "SUBSCRIBE needs a channel")
        precondition(delegate is any RedisSubscriberDelegate, "a subscribing transport needs a subscriber delegate")
        try write(RedisCommand([Array("SUBSCRIBE".utf8)] + channels.map { Array($0.utf8) }))
        subscribed = true
    }

    /// Closes the connection: every outstanding command gets a nil reply, then `transportDidClose`. Idempotent, and
    /// safe from inside any delegate call (it then takes effect when that call returns).
    func free() {
        loop.preconditionInLoop()
        guard state != .closed, !closeRequested else { return }
        if callbackDepth > 0 {
            closeRequested = true
            return
        }
        finish(reason: nil)
    }

    // MARK: Connecting

    private func resolved(_ prepared: Result<([SocketAddress], TLSContext?), TransportFailure>) {
        guard state == .resolving, !closeRequested else { return }
        switch prepared {
        case .failure(let failure):
            finish(reason: failure.description)
        case .success(let (addresses, context)):
            self.addresses = addresses
            self.tlsContext = context
            connectNext()
        }
    }

    /// Connects to the next address, or gives up when none is left.
    private func connectNext() {
        while nextAddress < addresses.count {
            let address = addresses[nextAddress]
            nextAddress += 1
            var ssl: OpaquePointer?
            if let tlsContext {
                do {
                    ssl = try tlsContext.makeSSL(host: endpoint.host)
                } catch {
                    finish(reason: error.description)
                    return
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
                attemptFailures.append("\(address): could not allocate a connection")
                continue
            }
            errno = 0
            let status = address.withSockaddr { bufferevent_socket_connect(socketLayer, $0, $1) }
            immediateConnectError = errno
            guard status == 0 else {
                bufferevent_free(socketLayer)
                if let ssl { SSL_free(ssl) }
                attemptFailures.append("\(address): \(String(cString: strerror(immediateConnectError)))")
                continue
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
                    attemptFailures.append("\(address): could not allocate a TLS connection")
                    continue
                }
                // Redis closes TLS connections without close_notify at times (a restart, CLIENT KILL): an EOF, not an
                // error.
                bufferevent_openssl_set_allow_dirty_shutdown(filter, 1)
                created = filter
            }
            // passUnretained: the transport holds its own +1 (selfReference) for as long as this bufferevent exists.
            bufferevent_setcb(created, onRead, nil, onEvent, Unmanaged.passUnretained(self).toOpaque())
            bufferevent_enable(created, Int16(EV_READ | EV_WRITE))
            bufferevent = created
            self.socketLayer = socketLayer
            state = .connecting
            return
        }
        let failures = attemptFailures
        let reason: String
        switch failures.count {
        case 0: reason = "\(endpoint.host) has no address"
        case 1: reason = failures[0]
        default: reason = "all \(failures.count) addresses of \(endpoint.host) failed: " + failures.joined(separator: "; ")
        }
        finish(reason: reason)
    }

    private func releaseBufferevent() {
        guard let bufferevent else { return }
        self.bufferevent = nil
        socketLayer = nil
        bufferevent_setcb(bufferevent, nil, nil, nil, nil)
        bufferevent_free(bufferevent)
    }

    // MARK: From the C callbacks

    fileprivate func handleEvents(_ events: Int16) {
        let savedErrno = errno
        guard let bufferevent, state == .connecting || state == .open else { return }
        if events & Int16(BEV_EVENT_CONNECTED) != 0 {
            guard state == .connecting else { return }
            state = .open
            if !queued.isEmpty {
                let bytes = queued
                queued = []
                guard append(bytes, to: bufferevent) else {
                    finish(reason: "could not write to the connection")
                    return
                }
            }
            callDelegate { $0.transportDidConnect(self) }
            return
        }
        guard events & Int16(BEV_EVENT_ERROR | BEV_EVENT_EOF) != 0 else { return }
        let reason = failureText(events, bufferevent: bufferevent, errno: savedErrno)
        if state == .connecting {
            let address = addresses[nextAddress - 1]
            attemptFailures.append(addresses.count > 1 ? "\(address): \(reason)" : reason)
            releaseBufferevent()
            connectNext()
        } else {
            finish(reason: reason)
        }
    }

    fileprivate func readable() {
        guard let bufferevent, state == .open else { return }
        let input = bufferevent_get_input(bufferevent)
        var chunk = iovec()
        do {
            while evbuffer_get_length(input) > 0, evbuffer_peek(input, -1, nil, &chunk, 1) > 0 {
                let bytes = UnsafeRawBufferPointer(start: chunk.iov_base, count: chunk.iov_len)
                if !receivedAny, endpoint.tls == nil, let first = bytes.first, first == 0x15 || first == 0x16 {
                    finish(reason: "the server answered with TLS (a TLS port? use rediss://)")
                    return
                }
                try reader.feed(bytes)
                receivedAny = true
                evbuffer_drain(input, chunk.iov_len)
            }
            callbackDepth += 1
            defer { callbackDepth -= 1 }
            while state == .open, !closeRequested, let reply = try reader.next() {
                deliver(reply)
            }
        } catch {
            finish(reason: "Redis sent something that is not a RESP reply (\(error))")
            return
        }
        if closeRequested, callbackDepth == 0 { finish(reason: nil) }
    }

    private func deliver(_ reply: RedisValue) {
        if head < pending.count, let command = pending[head] {
            pending[head] = nil
            head += 1
            compactTakenPrefix(&pending, head: &head)
            delegate?.transport(self, didReceive: reply, for: command)
        } else if subscribed, let subscriber = delegate as? any RedisSubscriberDelegate {
            subscriber.transport(self, didReceivePush: reply)
        } else {
            closeRequested = true
            if failureReason == nil { failureReason = "Redis sent a reply no command was waiting for" }
        }
    }

    /// Runs a delegate call made from a libevent callback, then a close it asked for.
    private func callDelegate(_ body: (any RedisTransportDelegate) -> Void) {
        guard let delegate else { return }
        callbackDepth += 1
        body(delegate)
        callbackDepth -= 1
        if closeRequested, callbackDepth == 0 { finish(reason: nil) }
    }

    // MARK: Writing

    private func write(_ command: RedisCommand) throws(HiredisError) {
        guard state != .closed, !closeRequested else {
            throw HiredisError(failureReason.map { "the connection is closed (\($0))" } ?? "the connection is closed")
        }
        guard state == .open, let bufferevent else {
            queued.append(contentsOf: command.bytes)
            return
        }
        if endpoint.tls != nil {
            // The TLS filter encrypts whatever is added to it at once, one record per write: the commands of one loop
            // turn are gathered and handed over together (one record, one decryption for Redis), on the next turn.
            queued.append(contentsOf: command.bytes)
            if !flushScheduled {
                flushScheduled = true
                loop.execute { self.flushQueued() }
            }
            return
        }
        guard append(command.bytes, to: bufferevent) else {
            throw HiredisError("could not write to the connection")
        }
    }

    /// Writes the commands gathered while TLS was open (see `write`).
    private func flushQueued() {
        flushScheduled = false
        guard state == .open, let bufferevent, !queued.isEmpty else { return }
        let written = append(queued, to: bufferevent)
        queued.removeAll(keepingCapacity: true)
        if !written { finish(reason: "could not write to the connection") }
    }

    private func append(_ bytes: [UInt8], to bufferevent: OpaquePointer) -> Bool {
        bytes.withUnsafeBytes { raw in bufferevent_write(bufferevent, raw.baseAddress, raw.count) == 0 }
    }

    // MARK: Closing

    /// Closes for good: the bufferevent goes, each outstanding command gets nil, then the delegate hears why.
    private func finish(reason: String?) {
        guard state != .closed else { return }
        state = .closed
        closeRequested = false
        if let reason, failureReason == nil { failureReason = reason }
        releaseBufferevent()
        queued = []
        let dropped = pending[head...].compactMap { $0 }
        pending = []
        head = 0
        let delegate = self.delegate
        for command in dropped {
            delegate?.transport(self, didReceive: nil, for: command)
        }
        self.delegate = nil
        delegate?.transportDidClose(self, reason: failureReason)
        // Drops the +1 taken in init; callers keep their own reference for the rest of the call.
        selfReference?.release()
        selfReference = nil
    }

    /// One line saying why the connection failed, from TLS's verify result and errors, then the socket's error.
    private func failureText(_ events: Int16, bufferevent: OpaquePointer, errno saved: Int32) -> String {
        let handshaking = state == .connecting
        if endpoint.tls != nil {
            var errors: [UInt] = []
            for _ in 0..<16 {
                let code = bufferevent_get_openssl_error(bufferevent)
                if code == 0 { break }
                // libevent puts SSL_get_error's small result (SSL_ERROR_SSL, SSL_ERROR_SYSCALL) in the same list as
                // OpenSSL's packed error codes: only the latter name a reason.
                if code > 255 { errors.append(code) }
            }
            let ssl = bufferevent_openssl_get_ssl(bufferevent)
            if let reason = tlsFailure(ssl: ssl, errors: errors, verifiesPeer: tlsContext?.verifiesPeer ?? true) {
                return handshaking ? "TLS handshake failed: \(reason)" : "TLS error: \(reason)"
            }
        }
        let text: String
        if events & Int16(BEV_EVENT_EOF) != 0 || (events & Int16(BEV_EVENT_ERROR) != 0 && saved == 0
                                                  && immediateConnectError == 0) {
            if handshaking, endpoint.tls != nil {
                return "the server closed the connection during the TLS handshake (a plain-text port? use redis://)"
            }
            text = "Server closed the connection"
        } else {
            var code = saved
            if handshaking, let fd = Optional(bufferevent_getfd(socketLayer ?? bufferevent)), fd >= 0 {
                var socketError: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                if getsockopt(fd, SOL_SOCKET, SO_ERROR, &socketError, &length) == 0, socketError != 0 {
                    code = socketError
                }
            }
            if handshaking, code == 0 || code == EAGAIN || code == EINPROGRESS { code = immediateConnectError }
            text = code == 0 ? "connection failed" : String(cString: strerror(code))
        }
        guard !handshaking, !receivedAny else { return text }
        // Closed right after connecting, before any reply. A TLS port resets a connection that spoke plain text to
        // it; with TLS 1.3 the client's handshake is over before the server checks the client's certificate, so a
        // server that requires one (tls-auth-clients yes) closes here, its alert often lost with the reset.
        if endpoint.tls == nil { return text + " before answering (a TLS port? use rediss://)" }
        if endpoint.tls?.certificateFile == nil {
            return text + " right after the TLS handshake (does the server require a client certificate? "
                + "set the TLS certificate and key)"
        }
        return text + " right after the TLS handshake (is the client certificate trusted by the server?)"
    }
}

/// A failure before any socket exists (name lookup, TLS configuration), carried back to the loop.
private struct TransportFailure: Error, Sendable, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - C callbacks

private func onRead(_ bufferevent: OpaquePointer?, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    let transport = Unmanaged<RedisTransport>.fromOpaque(context).takeUnretainedValue()
    // finish() may drop the transport's own +1 inside: keep it alive until this callback returns.
    withExtendedLifetime(transport) { transport.readable() }
}

private func onEvent(_ bufferevent: OpaquePointer?, _ events: Int16, _ context: UnsafeMutableRawPointer?) {
    guard let context else { return }
    let transport = Unmanaged<RedisTransport>.fromOpaque(context).takeUnretainedValue()
    withExtendedLifetime(transport) { transport.handleEvents(events) }
}

// MARK: - SIGPIPE

/// libevent writes with writev(2) and OpenSSL with write(2), which raise SIGPIPE when Redis has closed the socket;
/// the default action kills the process. Ignore it (once, and only if nobody installed a handler), so a dead peer is
/// an EPIPE error that closes the connection.
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
