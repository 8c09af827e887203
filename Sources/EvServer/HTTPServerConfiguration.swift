// `HTTPServerConfiguration`: the public limits, timeouts, capacity and default header fields of the HTTP server
// (enforced by `HTTPServer` and its request scanner, HTTPLimits+Scanner.swift).

/// Limits and timeouts of the HTTP server. The defaults suit an API that takes small JSON bodies.
///
/// A request over a limit never reaches the application: the server answers it with a short JSON body
/// (`{"error":"…"}`) and `Connection: close`, then closes the connection, so that no byte after the refused
/// request is ever read as a request. Malformed or ambiguous framing (the shapes of request smuggling: two
/// `Content-Length` fields, `Content-Length` with `Transfer-Encoding`, a `Transfer-Encoding` other than `chunked`,
/// folded header lines, bare LF line ends, a non-numeric `Content-Length`) is answered `400 Bad Request` the same way.
/// These answers, like every other response, carry the ``defaultHeaders``.
public struct HTTPServerConfiguration: Sendable, Equatable {
    /// The largest request line plus header fields, in bytes, line ends included (trailer fields of a chunked body
    /// count too). Larger requests are answered `431 Request Header Fields Too Large`.
    public var maxHeaderSize: Int
    /// The largest request body, in bytes. Larger bodies are answered `413 Payload Too Large` as soon as the
    /// `Content-Length` (or the chunk that crosses the limit) is seen; the rest of the body is read and dropped for a
    /// moment so the client sees the answer.
    public var maxBodySize: Int
    /// The longest request target (path and query) of the request line, in bytes. Longer ones are answered
    /// `414 URI Too Long`.
    public var maxURILength: Int
    /// The most header fields a request may have (trailer fields included). More are answered
    /// `431 Request Header Fields Too Large`.
    public var maxHeaderCount: Int
    /// Read and write timeout of a connection while a request body is read or a response written: a client that
    /// sends nothing (or reads nothing) for this long is disconnected.
    public var timeout: Duration
    /// How long an idle keep-alive connection stays open between requests (at most ``timeout``).
    public var idleTimeout: Duration
    /// How long a client has to send a whole request line and header block, counted from the connection's start for
    /// its first request and from the first byte for later ones. A slower client (slowloris) is answered
    /// `408 Request Timeout` and disconnected; one that sent nothing at all is just disconnected.
    public var headerTimeout: Duration
    /// The most connections each event loop keeps open. Past it, a new connection is answered
    /// `503 Service Unavailable` (with `Retry-After: 1`) without reading its request, and closed at once.
    public var maxConnections: Int
    /// The `listen(2)` backlog of each listening socket.
    public var backlog: Int
    /// How long a graceful shutdown (SIGTERM, ``RunningServer/shutdown(timeout:)``) waits for requests in flight
    /// before dropping them.
    public var shutdownTimeout: Duration
    /// Header fields sent on every response: on the application's unless the handler (or a middleware, or an
    /// ``HTTPError``) set a field of the same name, and on the answers the server sends by itself (the refusals
    /// above, `408`, the `503` past ``maxConnections``, libevent's own error pages) unless the answer has a field
    /// of that name already (`Content-Type`, `Retry-After`). evhttp's interim `100 Continue` does not get them.
    public var defaultHeaders: DefaultHeaders
    /// Request ids: nil (the default) gives none. Set, every request gets an id (a ``trustedProxies`` peer's, or
    /// one the server makes), sent back in the configured field on every response, the server's own answers
    /// included, set as ``RequestID/current`` while the application serves the request, and written in the access
    /// log.
    public var requestIDs: RequestIDConfiguration?
    /// The peers whose request id and trace context (`traceparent`, read by the tracer) are believed; from any
    /// other peer those fields are ignored. Default: nobody.
    public var trustedProxies: TrustedProxies
    /// Writes one line per request at `info` through swift-log (label `evserver.access`): method, path without the
    /// query, status, response body bytes, duration, route and request id; never a header, cookie or query.
    /// Requests the server refuses by itself get a line too (method and path `-`: it never parsed them). Off by
    /// default.
    public var accessLog: Bool

    /// Creates a configuration.
    /// - Parameters:
    ///   - maxHeaderSize: request line plus headers, in bytes (default 16 KiB).
    ///   - maxBodySize: request body, in bytes (default 64 KiB).
    ///   - maxURILength: request target, in bytes (default 8 KiB).
    ///   - maxHeaderCount: header fields per request (default 100).
    ///   - timeout: read and write timeout while a request or response is in transit (default 30 s).
    ///   - idleTimeout: keep-alive idle timeout between requests (default 15 s).
    ///   - headerTimeout: time allowed for a whole header block (default 10 s).
    ///   - maxConnections: open connections per event loop (default 10,000).
    ///   - backlog: the listen backlog (default 1024).
    ///   - shutdownTimeout: the longest graceful shutdown (default 10 s).
    ///   - defaultHeaders: header fields sent on every response (default none).
    ///   - requestIDs: request ids (default none).
    ///   - trustedProxies: whose request ids and trace context are believed (default nobody's).
    ///   - accessLog: one log line per request (default off).
    public init(maxHeaderSize: Int = 16384, maxBodySize: Int = 65536, maxURILength: Int = 8192,
                maxHeaderCount: Int = 100, timeout: Duration = .seconds(30), idleTimeout: Duration = .seconds(15),
                headerTimeout: Duration = .seconds(10), maxConnections: Int = 10_000, backlog: Int = 1024,
                shutdownTimeout: Duration = .seconds(10), defaultHeaders: DefaultHeaders = DefaultHeaders(),
                requestIDs: RequestIDConfiguration? = nil, trustedProxies: TrustedProxies = .none,
                accessLog: Bool = false) {
        self.maxHeaderSize = maxHeaderSize
        self.maxBodySize = maxBodySize
        self.maxURILength = maxURILength
        self.maxHeaderCount = maxHeaderCount
        self.timeout = timeout
        self.idleTimeout = idleTimeout
        self.headerTimeout = headerTimeout
        self.maxConnections = maxConnections
        self.backlog = backlog
        self.shutdownTimeout = shutdownTimeout
        self.defaultHeaders = defaultHeaders
        self.requestIDs = requestIDs
        self.trustedProxies = trustedProxies
        self.accessLog = accessLog
    }

    /// The size limits, as the request scanner uses them.
    var limits: HTTPLimits {
        HTTPLimits(maxHeaderSize: maxHeaderSize, maxURILength: maxURILength, maxHeaderCount: maxHeaderCount,
                   maxBodySize: maxBodySize)
    }
}
