import CEvent
import Dispatch
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The only file (with Libevent.swift) that calls evhttp. One `HTTPServer` per event loop: it owns an evhttp bound to
// its own listening socket, copies each request out of C memory into a `Request`, runs the application on a task
// that prefers the loop, and writes the `Response` back with evhttp_send_reply.
//
// Some explanation is required here: the lifetime of an `evhttp_request` in libevent 2.1.12's http.c.
//
// - After evhttp_handle_request hands a request to our gencb (it sets `req->userdone = 0`), libevent keeps the
//   request until the user answers with evhttp_send_reply. While we have not answered, libevent 2.1.12 does not read
//   from the connection (checked: a pipelined request and a client that hangs up are only noticed once we reply).
// - If the connection fails while the user still holds the request (read EOF or timeout,
//   evhttp_connection_incoming_fail with `!req->userdone`), libevent unlinks the request from the connection, sets
//   `req->evcon = NULL`, frees the connection and leaves the request alive for the user. evhttp_send then sees
//   `evcon == NULL` and just frees the request. So replying late is always safe and always needed: every request
//   handed to us gets exactly one evhttp_send_reply, even when the client is long gone.
// - A reply to a client that has gone away fails in the write (or in the read evhttp keeps enabled while writing,
//   to notice the close): evhttp_connection_fail_ frees the connection and the request (userdone is 1 by then).
//   A second write after the peer's reset would raise SIGPIPE (evbuffer uses writev, not MSG_NOSIGNAL), so the
//   server ignores SIGPIPE, as libevent's sample http-server.c does.
// - The one place libevent frees a request we have not answered is evhttp_free (each connection takes its queued
//   requests with it). Shutdown therefore waits for the in-flight requests first; when it gives up waiting, it
//   forgets them (their tasks' late replies become no-ops), frees the detached ones itself (no connection will), and
//   only then calls evhttp_free. A handler still awaiting work on the stopped loop then never resumes; what its
//   task holds stays allocated: the price of "stop anyway" after the timeout.
// - We never take ownership (evhttp_request_own): libevent's own rules above already free every request once.
//   We never touch a request after evhttp_send_reply: it may be freed inside the call.
// - For graceful shutdown we also want the replies on the wire, not just queued: evhttp_request_set_on_complete_cb
//   fires once the output is flushed; if the connection dies first, the connection's close callback fires instead.
//   A connection carries one request at a time, so "connections with a reply being written" is a set of connections.

private let logger = Logger(label: "evserver.http")

// MARK: - Configuration

/// Limits and timeouts of the HTTP server. The defaults suit an API that takes small JSON bodies.
public struct HTTPServerConfiguration: Sendable, Equatable {
    /// The largest request line plus header block, in bytes. Larger requests are answered `400 Bad Request` by
    /// libevent, without reaching the application.
    public var maxHeaderSize: Int
    /// The largest request body, in bytes. Larger bodies are answered `413` by libevent, without reaching the
    /// application; the body is read and discarded first so the client sees the answer (lingering close).
    public var maxBodySize: Int
    /// Read and write timeout of a connection; also how long an idle keep-alive connection stays open.
    public var timeout: Duration
    /// The `listen(2)` backlog of each listening socket.
    public var backlog: Int

    /// Creates a configuration.
    /// - Parameters:
    ///   - maxHeaderSize: request line plus headers, in bytes (default 16 KiB).
    ///   - maxBodySize: request body, in bytes (default 64 KiB).
    ///   - timeout: read, write and keep-alive idle timeout (default 30 s).
    ///   - backlog: the listen backlog (default 1024).
    public init(maxHeaderSize: Int = 16384, maxBodySize: Int = 65536, timeout: Duration = .seconds(30),
                backlog: Int = 1024) {
        self.maxHeaderSize = maxHeaderSize
        self.maxBodySize = maxBodySize
        self.timeout = timeout
        self.backlog = backlog
    }
}

// MARK: - Errors

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

// MARK: - Listening sockets

/// Creates the listening sockets: one per loop, all on the same port (SO_REUSEPORT lets the kernel spread new
/// connections over them, so the loops never contend for an accept).
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
            for _ in 0..<count {
                let fd = try bind(host: host, port: boundPort, backlog: backlog)
                descriptors.append(fd)
                if boundPort == 0 { boundPort = try localPort(of: fd, host: host) }
            }
        } catch {
            for fd in descriptors { close(fd) }
            throw error
        }
        return (descriptors, boundPort)
    }

    private static func probe(host: String, port: Int) throws(HTTPServerError) {
        let fd = try bind(host: host, port: port, backlog: nil)
        close(fd)
    }

    /// socket + SO_REUSEADDR (+ SO_REUSEPORT when listening) + bind (+ listen). `backlog == nil` binds only.
    private static func bind(host: String, port: Int, backlog: Int?) throws(HTTPServerError) -> Int32 {
        let address = "\(host.contains(":") ? "[\(host)]" : host):\(port)"
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
        guard rc == 0, let info = list else {
            let reason = rc == 0 ? "no address" : String(cString: gai_strerror(rc))
            throw HTTPServerError(.invalidAddress, "cannot listen on \(address): host does not resolve (\(reason))")
        }
        defer { freeaddrinfo(list) }

        let fd = socket(info.pointee.ai_family,
                        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw systemError("socket", address: address, errno: errno) }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size) == 0,
              backlog == nil || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, size) == 0
        else {
            let error = errno
            close(fd)
            throw systemError("setsockopt", address: address, errno: error)
        }
        guard Glibc.bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let error = errno
            close(fd)
            throw systemError("bind", address: address, errno: error)
        }
        if let backlog, listen(fd, Int32(clamping: backlog)) != 0 {
            let error = errno
            close(fd)
            throw systemError("listen", address: address, errno: error)
        }
        return fd
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
    static func close(_ fd: Int32) { _ = Glibc.close(fd) }
}

/// Makes a write to a connection the peer has reset return EPIPE instead of killing the process.
let ignoreBrokenPipe: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

// MARK: - Server

/// One evhttp on one event loop. Created, used and closed on the loop thread.
final class HTTPServer: @unchecked Sendable {
    // @unchecked Sendable: the lets never change, and every var is read and written only on `loop`'s thread: the
    // initializer and `stopAccepting`/`whenDrained`/`close` run there (they check), and the C callbacks and the
    // request tasks (executor preference `loop`) run there too.

    typealias RequestPointer = UnsafeMutablePointer<evhttp_request>

    let loop: EventLoop
    private let pipeline: RequestPipeline
    private var http: OpaquePointer?
    private var listener: OpaquePointer?

    /// Requests handed to the application and not answered yet, by id. The ids keep a late reply from a task whose
    /// request `close()` already gave up on from touching freed memory.
    private var inFlight: [UInt: RequestPointer] = [:]
    private var nextID: UInt = 1
    /// Connections whose reply is queued but not yet written.
    private var flushing: Set<OpaquePointer> = []
    /// Set once shutdown begins: replies then carry `Connection: close`.
    private var closing = false
    private var drainWaiter: ((Bool) -> Void)?
    private var drainTimer: ScheduledTimer?

    /// Creates the evhttp and starts accepting on `descriptor`. Must be called on the loop thread.
    /// - Parameter descriptor: a listening socket; the server owns it from now on, also when this throws.
    init(loop: EventLoop, pipeline: RequestPipeline, configuration: HTTPServerConfiguration,
         descriptor: Int32) throws(HTTPServerError) {
        self.loop = loop
        self.pipeline = pipeline
        loop.preconditionInLoop()
        guard let http = loop.withUnsafeEventBase({ evhttp_new($0) }) else {
            ListeningSockets.close(descriptor)
            throw HTTPServerError(.systemFailure, "evhttp_new failed")
        }
        // Every method the router knows: anything else would be answered 501 by evhttp before reaching the router
        // (the router answers unknown paths 404 and known paths with a wrong method 405 + Allow).
        let methods = EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_POST.rawValue | EVHTTP_REQ_HEAD.rawValue
            | EVHTTP_REQ_PUT.rawValue | EVHTTP_REQ_DELETE.rawValue | EVHTTP_REQ_OPTIONS.rawValue
            | EVHTTP_REQ_PATCH.rawValue
        evhttp_set_allowed_methods(http, UInt16(methods))
        evhttp_set_max_headers_size(http, max(0, configuration.maxHeaderSize))
        evhttp_set_max_body_size(http, max(0, configuration.maxBodySize))
        var timeout = timeval(configuration.timeout)
        evhttp_set_timeout_tv(http, &timeout)
        // No `Content-Type: text/html; charset=ISO-8859-1` on responses that did not set one.
        evhttp_set_default_content_type(http, nil)
        // Read and discard an oversized body before answering 413, so the client is not reset mid-upload.
        _ = evhttp_set_flags(http, EVHTTP_SERVER_LINGERING_CLOSE)
        // passUnretained: the server outlives its evhttp (close() frees it, and deinit checks that it did), so the
        // callbacks never see a dead server.
        evhttp_set_gencb(http, onRequest, Unmanaged.passUnretained(self).toOpaque())
        guard let bound = evhttp_accept_socket_with_handle(http, descriptor) else {
            evhttp_free(http)
            ListeningSockets.close(descriptor)
            throw HTTPServerError(.systemFailure, "evhttp_accept_socket_with_handle failed")
        }
        self.http = http
        self.listener = bound
    }

    deinit {
        precondition(http == nil, "HTTPServer released without close()")
    }

    private var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    // MARK: Requests

    fileprivate func handle(_ req: RequestPointer) {
        let id = nextID
        nextID = nextID == .max ? 1 : nextID + 1
        inFlight[id] = req
        let connection = evhttp_request_get_connection(req)
        if let connection { evhttp_connection_set_closecb(connection, onConnectionClose, context) }
        let head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD
        let request = makeRequest(req, connection: connection)
        let pipeline = self.pipeline
        Task(executorPreference: loop) { [self] in
            let response = await pipeline.respond(to: request)
            // Nonisolated code of a task that prefers the loop runs on the loop, so this is the common path.
            if loop.inLoop {
                reply(id, response, head: head)
            } else {
                let box = ResponseBox(response)
                loop.execute { [self] in reply(id, box.response, head: head) }
            }
        }
    }

    private func makeRequest(_ req: RequestPointer, connection: OpaquePointer?) -> sending Request {
        let method: HTTPMethod = switch evhttp_request_get_command(req) {
        case EVHTTP_REQ_GET: .get
        case EVHTTP_REQ_POST: .post
        case EVHTTP_REQ_HEAD: .head
        case EVHTTP_REQ_PUT: .put
        case EVHTTP_REQ_DELETE: .delete
        case EVHTTP_REQ_OPTIONS: .options
        case EVHTTP_REQ_PATCH: .patch
        case EVHTTP_REQ_TRACE: HTTPMethod(rawValue: "TRACE")
        case EVHTTP_REQ_CONNECT: HTTPMethod(rawValue: "CONNECT")
        default: HTTPMethod(rawValue: "UNKNOWN")
        }
        // String(cString:) repairs invalid UTF-8, so no byte sequence a client sends can trap here.
        let uri = evhttp_request_get_uri(req).map { String(cString: $0) } ?? "/"
        var fields: [(name: String, value: String)] = []
        if let headers = evhttp_request_get_input_headers(req) {
            var item = headers.pointee.tqh_first
            while let field = item {
                if let key = field.pointee.key, let value = field.pointee.value {
                    fields.append((name: String(cString: key), value: String(cString: value)))
                }
                item = field.pointee.next.tqe_next
            }
        }
        var body: [UInt8] = []
        if let input = evhttp_request_get_input_buffer(req) {
            let length = evbuffer_get_length(input)
            if length > 0 {
                body = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                    count = max(0, evbuffer_copyout(input, buffer.baseAddress, length))
                }
            }
        }
        var remoteAddress = ""
        if let connection {
            var host: UnsafeMutablePointer<CChar>?
            var port: UInt16 = 0
            evhttp_connection_get_peer(connection, &host, &port)
            if let host { remoteAddress = String(cString: host) }
        }
        return Request(method: method, uri: uri, headers: HTTPHeaders(fields: fields), body: body,
                       remoteAddress: remoteAddress, loop: loop)
    }

    /// Writes `response` as the one reply to request `id`; does nothing if `close()` has given up on it.
    private func reply(_ id: UInt, _ response: Response, head: Bool) {
        guard let req = inFlight.removeValue(forKey: id) else { return }
        var code = response.status.code
        var reason = response.status.reason
        if !(100...999).contains(code) {
            logger.error("handler set an invalid status \(code); answering 500")
            code = 500
            reason = HTTPStatus.standardReason(500)
        } else if reason.utf8.contains(where: { $0 == 13 || $0 == 10 }) {
            reason = HTTPStatus.standardReason(code)   // CR/LF in the status line would split the response
        }
        // RFC 9110 6.4.1: no body in 1xx, 204 and 304 responses (evhttp would send one if we gave it).
        let bodyAllowed = code >= 200 && code != 204 && code != 304

        let output = evhttp_request_get_output_headers(req)
        var hasLength = false
        for field in response.headers.fields {
            if field.name.asciiCaseInsensitiveEquals("Content-Length") {
                // evhttp computes the length of what it sends; only a HEAD answer may state its own.
                guard head else { continue }
                hasLength = true
            } else if field.name.asciiCaseInsensitiveEquals("Transfer-Encoding") {
                continue   // the body always goes out whole, with a Content-Length
            }
            if evhttp_add_header(output, field.name, field.value) != 0 {
                logger.warning("dropped response header \(field.name): a name or value must not contain CR or LF")
            }
        }
        if closing {
            evhttp_remove_header(output, "Connection")
            evhttp_add_header(output, "Connection", "close")
        }
        if head {
            // The GET route answered; tell the client how long the body it did not ask for would be.
            if bodyAllowed && !hasLength { evhttp_add_header(output, "Content-Length", String(response.body.count)) }
        } else if bodyAllowed && !response.body.isEmpty {
            let buffer = evhttp_request_get_output_buffer(req)
            response.body.withUnsafeBytes { _ = evbuffer_add(buffer, $0.baseAddress, $0.count) }
        }

        if let connection = evhttp_request_get_connection(req) {
            flushing.insert(connection)
            evhttp_request_set_on_complete_cb(req, onResponseWritten, context)
        }
        // A detached request (its client went away while we worked) is freed inside this call.
        evhttp_send_reply(req, Int32(code), reason, nil)
        checkDrained()
    }

    fileprivate func responseWritten(_ req: RequestPointer) {
        if let connection = evhttp_request_get_connection(req) { flushing.remove(connection) }
        checkDrained()
    }

    fileprivate func connectionClosed(_ connection: OpaquePointer) {
        // A reply still queued on a closing connection will never be written: stop waiting for it.
        if flushing.remove(connection) != nil { checkDrained() }
    }

    // MARK: Shutdown

    /// Requests answered and replies being written.
    var pendingCount: Int { inFlight.count + flushing.count }

    /// Stops accepting connections; requests on open connections are still served, with `Connection: close`.
    func stopAccepting() {
        loop.preconditionInLoop()
        closing = true
        if let http, let listener {
            evhttp_del_accept_socket(http, listener)   // frees the listener, which closes the socket
            self.listener = nil
        }
    }

    /// Calls `done(true)` once no request is in flight and every reply is written, or `done(false)` after
    /// `timeout`. Must be called on the loop thread, at most once at a time.
    func whenDrained(within timeout: Duration, _ done: @escaping (Bool) -> Void) {
        loop.preconditionInLoop()
        precondition(drainWaiter == nil, "whenDrained called twice")
        if pendingCount == 0 { return done(true) }
        drainWaiter = done
        drainTimer = loop.schedule(after: timeout) { [self] in finishDrain(false) }
    }

    private func checkDrained() {
        if drainWaiter != nil && pendingCount == 0 { finishDrain(true) }
    }

    private func finishDrain(_ drained: Bool) {
        drainTimer?.cancel()
        drainTimer = nil
        let waiter = drainWaiter
        drainWaiter = nil
        waiter?(drained)
    }

    /// Frees the evhttp: closes every connection and forgets the requests still in flight (their replies become
    /// no-ops). Must be called on the loop thread; idempotent.
    func close() {
        stopAccepting()
        guard let http else { return }
        // Requests libevent detached from their dead connection belong to nobody but us now; the others go with
        // their connection in evhttp_free.
        let detached = inFlight.values.filter { evhttp_request_get_connection($0) == nil }
        if !inFlight.isEmpty { logger.warning("closing with \(inFlight.count) request(s) unanswered") }
        inFlight.removeAll()
        flushing.removeAll()
        for req in detached { evhttp_request_free(req) }
        self.http = nil
        evhttp_free(http)
        finishDrain(false)
    }
}

/// Carries a finished response to the loop thread in the (unexpected) case the task ended elsewhere.
private struct ResponseBox: @unchecked Sendable {
    // @unchecked Sendable: the task that built the response hands it over and never touches it again.
    let response: Response
    init(_ response: Response) { self.response = response }
}

// MARK: - C callbacks

private func onRequest(_ req: UnsafeMutablePointer<evhttp_request>?, _ context: UnsafeMutableRawPointer?) {
    guard let req, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().handle(req)
}

private func onResponseWritten(_ req: UnsafeMutablePointer<evhttp_request>?, _ context: UnsafeMutableRawPointer?) {
    guard let req, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().responseWritten(req)
}

private func onConnectionClose(_ connection: OpaquePointer?, _ context: UnsafeMutableRawPointer?) {
    guard let connection, let context else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().connectionClosed(connection)
}

// MARK: - Helpers

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(max(0, seconds)), tv_usec: Int(max(0, attoseconds) / 1_000_000_000_000))
    }
}

extension EventLoop {
    /// Runs `body` on the loop thread and blocks the caller until it returns. Must not be called on this loop.
    func performAndWait<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) throws -> Result {
        precondition(!inLoop, "performAndWait called on its own loop")
        let box = WaitBox<Result>()
        execute {
            let result = Swift.Result { try body() }
            box.result.withLock { $0 = result }
            box.done.signal()
        }
        box.done.wait()
        return try box.result.withLock { $0! }.get()
    }

    /// Runs `body` on the loop thread and returns its result. The loop must be running.
    func perform<Result: Sendable>(_ body: @escaping @Sendable () -> Result) async -> Result {
        await withCheckedContinuation { continuation in
            execute { continuation.resume(returning: body()) }
        }
    }
}

private final class WaitBox<Value: Sendable>: Sendable {
    let result = Mutex<Result<Value, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
}
