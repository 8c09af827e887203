import EvServer

// One connection to a Redis server on an event loop: the name looked up off the loop (Resolver), each address tried
// in turn, the bytes carried by a RedisSocket (a libevent bufferevent, under a bufferevent_openssl filter for TLS:
// the handshake and every record run on the same loop), the replies parsed by hiredis's reader (RESPReader). Swift
// values only: RedisSocket, TLSContext and Hiredis.swift hold the C calls.
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

// The request-path state is `@exclusivity(unchecked)`: loop-thread only (every entry point checks), one access at a
// time, so the dynamic checks could only ever pass.

/// One connection to Redis on one ``EventLoop``: name lookup, TCP, TLS, RESP.
///
/// Loop-confined: create it, send on it and free it on the loop thread only.
final class RedisTransport: RedisSocketDelegate, @unchecked Sendable {
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
    @exclusivity(unchecked) private var state = State.resolving
    @exclusivity(unchecked) private var socket: RedisSocket?
    private var tlsContext: TLSContext?
    private var addresses: [SocketAddress] = []
    private var nextAddress = 0
    /// Why each address tried so far failed.
    private var attemptFailures: [String] = []
    private let reader = RESPReader()
    /// Commands written and not answered yet, oldest first from `head`.
    @exclusivity(unchecked) private var pending: [PendingCommand?] = []
    @exclusivity(unchecked) private var head = 0
    /// Bytes of commands sent before the connection was open, and over TLS those of the current loop turn.
    @exclusivity(unchecked) private var queued: [UInt8] = []
    /// Whether a write of `queued` is scheduled (TLS).
    @exclusivity(unchecked) private var flushScheduled = false
    private var subscribed = false
    /// Whether any byte came from the server (the hints about TLS apply only to a server that said nothing).
    @exclusivity(unchecked) private var receivedAny = false
    /// Nesting of delegate calls made from inside a libevent callback: `free()` waits until they return.
    @exclusivity(unchecked) private var callbackDepth = 0
    private var closeRequested = false
    /// Itself, until closed: the transport stays alive while its socket or the resolver may call back, whoever else
    /// lets it go (a cycle on purpose, broken by finish()).
    private var keepAlive: RedisTransport?
    /// Why the connection was lost or could not be made; nil while it is healthy.
    private(set) var failureReason: String?
    /// TLS handshakes that failed while connecting (certificate refused, the server hung up during the handshake),
    /// over every address tried, not yet taken by ``takeFailedTLSHandshakes()``; for the connection's metrics.
    private var failedTLSHandshakes = 0

    /// The TLS handshakes that failed since the last call (each is counted once).
    func takeFailedTLSHandshakes() -> Int {
        defer { failedTLSHandshakes = 0 }
        return failedTLSHandshakes
    }

    /// Starts looking up the host (off the loop), then connects. Never blocks.
    init(endpoint: RedisEndpoint, loop: EventLoop, delegate: any RedisTransportDelegate) {
        loop.preconditionInLoop()
        self.loop = loop
        self.endpoint = endpoint
        self.delegate = delegate
        keepAlive = self
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
            do {
                socket = try RedisSocket(connectingTo: address, tls: tlsContext.map { ($0, endpoint.host) },
                                         loop: loop, delegate: self)
            } catch {
                if error.isFinal {
                    finish(reason: error.description)
                    return
                }
                attemptFailures.append(error.description)
                continue
            }
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

    private func releaseSocket() {
        socket?.close()
        socket = nil
    }

    // MARK: RedisSocketDelegate

    func socketDidConnect(_ socket: RedisSocket) {
        guard socket === self.socket, state == .connecting else { return }
        state = .open
        if !queued.isEmpty {
            let bytes = queued
            queued = []
            guard socket.write(bytes) else {
                finish(reason: "could not write to the connection")
                return
            }
        }
        callDelegate { $0.transportDidConnect(self) }
    }

    func socketDidFail(_ socket: RedisSocket, endOfFile: Bool, errno: Int32) {
        guard socket === self.socket, state == .connecting || state == .open else { return }
        let reason = failureText(socket, endOfFile: endOfFile, errno: errno)
        if state == .connecting {
            let address = addresses[nextAddress - 1]
            attemptFailures.append(addresses.count > 1 ? "\(address): \(reason)" : reason)
            releaseSocket()
            connectNext()
        } else {
            finish(reason: reason)
        }
    }

    func socketHasInput(_ socket: RedisSocket) {
        guard socket === self.socket, state == .open else { return }
        if !receivedAny, endpoint.tls == nil, let first = socket.firstInputByte, first == 0x15 || first == 0x16 {
            finish(reason: "the server answered with TLS (a TLS port? use rediss://)")
            return
        }
        do {
            if try socket.drainInput(into: reader) { receivedAny = true }
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
        guard state == .open, let socket else {
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
        guard socket.write(command.bytes) else {
            throw HiredisError("could not write to the connection")
        }
    }

    /// Writes the commands gathered while TLS was open (see `write`).
    private func flushQueued() {
        flushScheduled = false
        guard state == .open, let socket, !queued.isEmpty else { return }
        let written = socket.write(queued)
        queued.removeAll(keepingCapacity: true)
        if !written { finish(reason: "could not write to the connection") }
    }

    // MARK: Closing

    /// Closes for good: the socket goes, each outstanding command gets nil, then the delegate hears why.
    private func finish(reason: String?) {
        guard state != .closed else { return }
        state = .closed
        closeRequested = false
        if let reason, failureReason == nil { failureReason = reason }
        releaseSocket()
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
        // Breaks the cycle made in init; callers keep their own reference for the rest of the call.
        keepAlive = nil
    }

    /// One line saying why the connection failed: TLS's verify result and errors, else the socket's error, with a
    /// hint when the server closed before saying anything.
    private func failureText(_ socket: RedisSocket, endOfFile: Bool, errno saved: Int32) -> String {
        let handshaking = state == .connecting
        if let reason = socket.tlsFailure(verifiesPeer: tlsContext?.verifiesPeer ?? true) {
            if handshaking { failedTLSHandshakes += 1 }
            return handshaking ? "TLS handshake failed: \(reason)" : "TLS error: \(reason)"
        }
        let text: String
        if endOfFile || socket.isSilentError(saved: saved) {
            if handshaking, endpoint.tls != nil {
                failedTLSHandshakes += 1
                return "the server closed the connection during the TLS handshake (a plain-text port? use redis://)"
            }
            text = "Server closed the connection"
        } else {
            text = systemErrorText(handshaking ? socket.connectError(saved: saved) : saved)
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
