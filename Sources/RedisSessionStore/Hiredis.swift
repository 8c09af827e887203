import CHiredis
import EvServer

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The only file that imports CHiredis. Everything above it works with `HiredisConnection` (one async context on
// one loop), `PendingCommand` boxes and `RedisValue`s; every C pointer, `Unmanaged` and C callback lives here, and
// this is the one place that copies out of hiredis's memory.
//
// What hiredis 0.14's async.c does, which the code below relies on:
// - Each reply callback runs exactly once: with the reply, or with NULL when the context is freed or dropped
//   after an error (`__redisAsyncFree` flushes every pending callback with NULL before anything else).
// - `onDisconnect` runs only for a context that had connected, after those NULL callbacks, just before the
//   context's memory is freed. A context that never connected gets `onConnect(REDIS_ERR)` instead, and is freed
//   right after that callback returns (its pending callbacks get NULL then).
// - `redisAsyncFree` inside a reply callback (REDIS_IN_CALLBACK) only sets REDIS_FREEING; the free happens when
//   the callback returns. In 0.14 the connect callback is NOT run under REDIS_IN_CALLBACK and the context is
//   used after it returns, so it must never be freed from there.
// - The reply object is freed as soon as the reply callback returns: copy first.

/// A failure reported by hiredis itself (a NULL, `REDIS_ERR`, or `ac->err`).
struct HiredisError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Receives what happens on one ``HiredisConnection``. Every call comes on the loop thread, from inside hiredis.
protocol HiredisConnectionDelegate: AnyObject {
    /// The TCP connection is up; commands queued while connecting are being written.
    func hiredisDidConnect(_ connection: HiredisConnection)
    /// The reply to `command`, the oldest command still outstanding, or nil when hiredis drops the command because
    /// the connection is going away. Called exactly once per command sent.
    func hiredis(_ connection: HiredisConnection, didReceive reply: RedisValue?, for command: PendingCommand)
    /// The context is gone, after every command sent on it got its reply or nil. Called exactly once.
    /// - Parameter reason: why hiredis dropped the connection (its `errstr`), or nil for a free we asked for.
    func hiredisDidClose(_ connection: HiredisConnection, reason: String?)
}

/// One hiredis async connection (`redisAsyncContext`) attached to an ``EventLoop``'s event_base.
///
/// Loop-confined: create it, send on it and free it on the loop thread only.
final class HiredisConnection: @unchecked Sendable {
    // @unchecked Sendable: all state is touched only on `loop`'s thread (checked with preconditionInLoop); the
    // type crosses threads only inside `loop.execute` closures that run on that same thread.

    let loop: EventLoop
    /// Strong, so a reply can always be delivered; cleared when the context is gone, which breaks the cycle with
    /// the delegate (which holds this connection while it is current).
    private var delegate: (any HiredisConnectionDelegate)?
    /// nil once hiredis has freed the context or is about to (never touch it then).
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    private var inConnectCallback = false
    private var isFinished = false
    /// Why hiredis dropped the connection, from its `errstr` (e.g. "Connection refused", "Server closed the
    /// connection"); nil while it is healthy.
    private(set) var failureReason: String?

    /// Starts a non-blocking connect and attaches the context to the loop.
    ///
    /// A host name is resolved here, synchronously (hiredis 0.14 calls getaddrinfo in `redisAsyncConnect`); use an
    /// IP address or a name the resolver answers from /etc/hosts when that matters.
    /// - Throws: ``HiredisError`` when hiredis fails at once (out of memory, unresolvable host, refused at once).
    init(host: String, port: Int, loop: EventLoop, delegate: any HiredisConnectionDelegate) throws(HiredisError) {
        loop.preconditionInLoop()
        ignoreSIGPIPE()
        self.loop = loop
        self.delegate = delegate
        guard let context = redisAsyncConnect(host, Int32(clamping: port)) else {
            throw HiredisError("hiredis could not allocate a connection")
        }
        if context.pointee.err != 0 {
            let message = errorText(of: context.pointee.c)
            redisAsyncFree(context)   // never connected, nothing attached: frees at once, no callbacks
            throw HiredisError(message)
        }
        // TCP keepalive (15 s interval): an idle connection whose peer vanished (failover, partition) is noticed
        // without waiting for the next command to time out. A failure sets `c->err`, which would fail every
        // later write anyway, so it fails the attempt here.
        guard redisEnableKeepAlive(&context.pointee.c) == REDIS_OK else {
            let message = errorText(of: context.pointee.c)
            redisAsyncFree(context)
            throw HiredisError("could not enable TCP keepalive: \(message)")
        }
        let attached = loop.withUnsafeEventBase { base in redisLibeventAttach(context, base) }
        guard attached == REDIS_OK else {
            redisAsyncFree(context)
            throw HiredisError("could not attach the hiredis connection to the event loop")
        }
        redisAsyncSetConnectCallback(context, onConnect)
        redisAsyncSetDisconnectCallback(context, onDisconnect)
        // passRetained: the context holds a +1 on its connection, so every callback finds it alive; finish()
        // drops it once hiredis has run the context's last callback.
        context.pointee.data = Unmanaged.passRetained(self).toOpaque()
        self.context = context
    }

    /// Queues one command (written once connected); its reply goes to the delegate with `command`.
    /// - Throws: ``HiredisError`` when the context is gone or closing; the delegate then never hears of `command`.
    func send(_ arguments: [[UInt8]], command: PendingCommand) throws(HiredisError) {
        try send(RedisCommand(arguments), command: command)
    }

    /// ``send(_:command:)`` of a command already encoded.
    func send(_ encoded: RedisCommand, command: PendingCommand) throws(HiredisError) {
        loop.preconditionInLoop()
        precondition(encoded.isComplete, "a RedisCommand is sent with fewer arguments than it announced")
        guard let context else { throw HiredisError("the connection is closed") }
        // passRetained: hiredis holds the +1 on the box until onReply takes it back, exactly once.
        let box = Unmanaged.passRetained(command).toOpaque()
        let status = queue(encoded) { bytes, length in
            redisAsyncFormattedCommand(context, onReply, box, bytes, length)
        }
        guard status == REDIS_OK else {
            Unmanaged<PendingCommand>.fromOpaque(box).release()   // no callback will come: drop our +1
            throw notQueued(context)
        }
    }

    /// Closes the connection at once: every outstanding command gets a nil reply, then `hiredisDidClose`.
    /// Idempotent, and safe from inside any callback of this connection.
    func free() {
        loop.preconditionInLoop()
        guard let context else { return }
        let flags = context.pointee.c.flags
        // hiredis is already tearing the context down (after an error, or an earlier free): nothing to add.
        if flags & (REDIS_FREEING | REDIS_DISCONNECTING) != 0 { return }
        if inConnectCallback {
            // hiredis 0.14 goes on using the context after the connect callback returns: free it next turn.
            loop.execute { self.free() }
            return
        }
        if flags & REDIS_IN_CALLBACK != 0 {
            // Inside a reply callback (so the context is connected): hiredis frees it when the callback
            // returns, runs the remaining callbacks with NULL, then onDisconnect, which finishes us.
            redisAsyncFree(context)
            return
        }
        self.context = nil
        redisAsyncFree(context)   // NULL to every callback, then onDisconnect if it had connected
        finish()                  // no-op when onDisconnect already did it
    }

    // MARK: From the C callbacks

    fileprivate func connected(status: Int32, message: String) {
        guard status == REDIS_OK else {
            // hiredis frees the context as soon as we return, first running each pending callback with NULL:
            // finish on the next loop turn, when those have run.
            failureReason = message
            context = nil
            loop.execute { self.finish() }
            return
        }
        inConnectCallback = true
        defer { inConnectCallback = false }
        delegate?.hiredisDidConnect(self)
    }

    fileprivate func received(_ reply: RedisValue?, for command: PendingCommand, error: String?) {
        if reply == nil, failureReason == nil { failureReason = error }
        guard let delegate else {
            // Cannot happen (callbacks all come before finish()), but a caller must never hang.
            command.abandon()
            return
        }
        delegate.hiredis(self, didReceive: reply, for: command)
    }

    fileprivate func disconnected(status: Int32, message: String) {
        context = nil
        if status != REDIS_OK, failureReason == nil { failureReason = message }
        finish()
    }

    private func finish() {
        guard !isFinished else { return }
        isFinished = true
        context = nil
        let delegate = self.delegate
        self.delegate = nil
        delegate?.hiredisDidClose(self, reason: failureReason)
        // Drops the +1 the context held (taken in init). Callers keep their own reference for the rest of the call.
        Unmanaged.passUnretained(self).release()
    }
}

// MARK: - C callbacks

private func onConnect(_ context: UnsafePointer<redisAsyncContext>?, _ status: Int32) {
    guard let context, let data = context.pointee.data else { return }
    let connection = Unmanaged<HiredisConnection>.fromOpaque(data).takeUnretainedValue()
    let message = status == REDIS_OK ? "" : errorText(of: context.pointee.c)
    withExtendedLifetime(connection) {
        connection.connected(status: status, message: message.isEmpty ? "connection failed" : message)
    }
}

private func onDisconnect(_ context: UnsafePointer<redisAsyncContext>?, _ status: Int32) {
    guard let context, let data = context.pointee.data else { return }
    let connection = Unmanaged<HiredisConnection>.fromOpaque(data).takeUnretainedValue()
    let message = errorText(of: context.pointee.c)
    // The context is freed right after we return; `connection` stays alive until this scope ends even though
    // disconnected() drops the context's +1.
    withExtendedLifetime(connection) {
        connection.disconnected(status: status, message: message.isEmpty ? "connection closed" : message)
    }
}

private func onReply(_ context: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?,
                     _ privdata: UnsafeMutableRawPointer?) {
    guard let privdata else { return }
    // Takes back the +1 passed in send(): this is the one callback this command gets.
    let command = Unmanaged<PendingCommand>.fromOpaque(privdata).takeRetainedValue()
    // Copy now: hiredis frees the reply as soon as we return.
    let value = reply.map { copyReply($0.assumingMemoryBound(to: redisReply.self)) }
    guard let context, let data = context.pointee.data else {
        command.abandon()
        return
    }
    let error = value == nil && context.pointee.c.err != 0 ? errorText(of: context.pointee.c) : nil
    let connection = Unmanaged<HiredisConnection>.fromOpaque(data).takeUnretainedValue()
    withExtendedLifetime(connection) {
        connection.received(value, for: command, error: error)
    }
}

// MARK: - Copying out of C memory

/// Copies a hiredis reply tree into a ``RedisValue`` (bulk strings as bytes: values may be binary).
private func copyReply(_ reply: UnsafePointer<redisReply>) -> RedisValue {
    let node = reply.pointee
    switch node.type {
    case REDIS_REPLY_STRING:
        return .bulkString(copyBytes(node.str, node.len))
    case REDIS_REPLY_STATUS:
        return .simpleString(String(decoding: copyBytes(node.str, node.len), as: UTF8.self))
    case REDIS_REPLY_ERROR:
        return .error(String(decoding: copyBytes(node.str, node.len), as: UTF8.self))
    case REDIS_REPLY_INTEGER:
        return .integer(Int(truncatingIfNeeded: node.integer))
    case REDIS_REPLY_NIL:
        return .null
    case REDIS_REPLY_ARRAY:
        guard let elements = node.element, node.elements > 0 else { return .array([]) }
        // hiredis's reader caps nesting at 7 levels, so this recursion is shallow.
        var values: [RedisValue] = []
        values.reserveCapacity(node.elements)
        for index in 0..<node.elements {
            values.append(elements[index].map { copyReply($0) } ?? .null)
        }
        return .array(values)
    default:
        return .error("unsupported reply type \(node.type) from hiredis")
    }
}

private func copyBytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
    guard let pointer, count > 0 else { return [] }
    return [UInt8](UnsafeRawBufferPointer(start: pointer, count: count))
}

/// Why `redisAsyncCommandArgv` refused a command: the context's error, or (none set) that it is closing.
private func notQueued(_ context: UnsafeMutablePointer<redisAsyncContext>) -> HiredisError {
    HiredisError(context.pointee.c.err != 0 ? errorText(of: context.pointee.c) : "the connection is closing")
}

/// `redisContext.errstr` (a NUL-terminated `char[128]`) as a String.
private func errorText(of context: redisContext) -> String {
    withUnsafeBytes(of: context.errstr) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
}

// MARK: - Arguments

/// Calls `body` with the RESP bytes of `command` as hiredis takes a formatted command (`const char *`, length).
/// hiredis copies them into its output buffer before returning (and finds the command's name in them, as it does
/// in what it formats itself), so the pointer is not kept.
private func queue(_ command: RedisCommand, _ body: (UnsafePointer<CChar>, Int) -> Int32) -> Int32 {
    command.bytes.withUnsafeBufferPointer { bytes in
        // Never empty: the header alone is "*<count>\r\n".
        bytes.withMemoryRebound(to: CChar.self) { body($0.baseAddress!, $0.count) }
    }
}

// MARK: - SIGPIPE

/// hiredis 0.14 writes with write(2), which raises SIGPIPE when Redis has closed the socket; the default action
/// kills the process. Ignore it (once, and only if nobody installed a handler), so a dead peer is an EPIPE error
/// that hiredis turns into a disconnect.
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

// MARK: - Pub/sub

/// The delegate of a connection that subscribes (``HiredisConnection/subscribe(_:)``): it also gets the pushes.
protocol HiredisSubscriberDelegate: HiredisConnectionDelegate {
    /// One push on a subscribed connection, e.g. `["subscribe", channel, count]` when a subscription is confirmed,
    /// then `["message", channel, payload]` for each message. Called on the loop thread, from inside hiredis.
    func hiredis(_ connection: HiredisConnection, didReceivePush push: RedisValue)
}

extension HiredisConnection {
    /// Subscribes to `channels` (`SUBSCRIBE`); the confirmation and every message go to the delegate's
    /// ``HiredisSubscriberDelegate/hiredis(_:didReceivePush:)``. Afterwards the connection accepts no other command
    /// (Redis answers only pub/sub commands there). The subscription lasts until the connection closes.
    /// - Throws: ``HiredisError`` when the context is gone or closing.
    func subscribe(_ channels: [String]) throws(HiredisError) {
        loop.preconditionInLoop()
        precondition(!channels.isEmpty, "SUBSCRIBE needs a channel")
        precondition(delegate is any HiredisSubscriberDelegate, "a subscribing connection needs a subscriber delegate")
        guard let context else { throw HiredisError("the connection is closed") }
        // No privdata box here, unlike send(): hiredis 0.14 keeps a SUBSCRIBE callback in its channel table and
        // calls it for the confirmation and for every message, then once more with NULL when the context is freed,
        // so "one +1 per callback" does not hold. onPush finds the connection through `context.data` instead,
        // which holds its +1 until onDisconnect (the NULL calls come before that).
        let arguments = [Array("SUBSCRIBE".utf8)] + channels.map { Array($0.utf8) }
        let status = queue(RedisCommand(arguments)) { bytes, length in
            redisAsyncFormattedCommand(context, onPush, nil, bytes, length)
        }
        guard status == REDIS_OK else { throw notQueued(context) }
    }

    fileprivate func receivedPush(_ push: RedisValue) {
        (delegate as? any HiredisSubscriberDelegate)?.hiredis(self, didReceivePush: push)
    }
}

private func onPush(_ context: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?,
                    _ privdata: UnsafeMutableRawPointer?) {
    // A NULL reply: the context is being freed; hiredisDidClose follows and says why.
    guard let context, let reply, let data = context.pointee.data else { return }
    // Copy now: hiredis frees the reply as soon as we return.
    let value = copyReply(reply.assumingMemoryBound(to: redisReply.self))
    let connection = Unmanaged<HiredisConnection>.fromOpaque(data).takeUnretainedValue()
    withExtendedLifetime(connection) {
        connection.receivedPush(value)
    }
}
