import CoreMetrics
import Logging
import Tracing

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// What one server (one loop) records of each request it answers: metrics through swift-metrics, the access-log line
// through swift-log, the request's id, and its span through swift-distributed-tracing (only with a tracer: without
// one, the request path does not even look at the trace context).
//
// Some explanation is required here: why the handles are cached per loop. swift-metrics hands out a handle per name
// and label set, and a backend (swift-prometheus's registry, say) finds or makes it under its own lock. Asked for
// on every request, that would be one process-wide lock per request again. So each loop keeps the handles of the
// routes it has served in a dictionary only its thread touches: the first request of a route, method and status
// on a loop asks the factory, every later one increments the handle it kept. What a handle costs then is the
// backend's: an atomic add for a swift-prometheus counter, a short lock of that one series for a histogram.

/// The names of the HTTP server's metrics (swift-metrics labels; Prometheus metric names as they are).
public enum HTTPServerMetricNames {
    /// Counter `evserver_http_requests_total{route,method,status}`: requests the application answered. `route` is
    /// the matched pattern (`/users/:id`), or `unmatched` for a 404 or 405 of the router.
    public static let requests = "evserver_http_requests_total"
    /// Timer `evserver_http_request_duration_seconds{route}`: from the request's arrival to its reply.
    public static let duration = "evserver_http_request_duration_seconds"
    /// Counter `evserver_http_refusals_total{status}`: requests the server answered by itself (over a limit,
    /// malformed, too slow, past the connection cap).
    public static let refusals = "evserver_http_refusals_total"
    /// Meter `evserver_http_connections_open`: client connections open, all loops together.
    public static let connectionsOpen = "evserver_http_connections_open"
}

/// The metrics of one ``HTTPServer`` (one loop). Used on the loop thread only.
final class HTTPServerMetrics {
    /// One route's handles: its timer, and a counter per method and status (a few pairs, so a list).
    private final class RouteHandles {
        let timer: CoreMetrics.Timer
        var counters: [(method: HTTPMethod, status: Int, counter: Counter)] = []
        init(timer: CoreMetrics.Timer) { self.timer = timer }
    }

    private let factory: any MetricsFactory
    @exclusivity(unchecked) private var routes: [String: RouteHandles] = [:]
    @exclusivity(unchecked) private var refusals: [Int: Counter] = [:]
    let connections: Meter

    init(factory: any MetricsFactory) {
        self.factory = factory
        connections = Meter(label: HTTPServerMetricNames.connectionsOpen, dimensions: [], factory: factory)
    }

    func recordRequest(route: String, method: HTTPMethod, status: Int, nanoseconds: Int64) {
        let handles: RouteHandles
        if let known = routes[route] {
            handles = known
        } else {
            handles = RouteHandles(timer: CoreMetrics.Timer(label: HTTPServerMetricNames.duration, dimensions: [("route", route)],
                                                            factory: factory))
            routes[route] = handles
        }
        handles.timer.recordNanoseconds(nanoseconds)
        for entry in handles.counters where entry.status == status && entry.method == method {
            return entry.counter.increment()
        }
        let counter = Counter(label: HTTPServerMetricNames.requests,
                              dimensions: [("route", route), ("method", method.rawValue), ("status", String(status))],
                              factory: factory)
        handles.counters.append((method, status, counter))
        counter.increment()
    }

    func recordRefusal(status: Int) {
        if let counter = refusals[status] { return counter.increment() }
        let counter = Counter(label: HTTPServerMetricNames.refusals, dimensions: [("status", String(status))], factory: factory)
        refusals[status] = counter
        counter.increment()
    }

    /// The monotonic clock in nanoseconds: what a request's start and end are read from. Not `ContinuousClock`:
    /// its `Instant` comes from a library built for evolution, so its size is unknown to the compiler, and a
    /// request job holding one would be copied and destroyed through value witnesses (about 250 instructions per
    /// request, measured).
    static func now() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
    }
}

/// The access log's logger.
let accessLogger = Logger(label: "evserver.access")

extension HTTPServer {
    /// The id of `request`: the one in its id field when the peer is a trusted proxy and the value is well formed,
    /// else a new one. (The field is looked for only once the peer is trusted.)
    func requestID(of request: Request, field: String) -> String {
        if trustedProxies.isEnabled, trustedProxies.trusts(request.remoteAddress), let claimed = request.headers[field],
           RequestID.isWellFormed(claimed) {
            return claimed
        }
        return requestIDGenerator.next()
    }

    /// The access-log line of a request the application answered.
    func logAccess(_ request: Request, status: Int, bytes: Int, nanoseconds: Int64) {
        accessLogger.info("\(request.method.rawValue) \(Self.pathWithoutQuery(request.uri)) \(status)", metadata: [
            "method": .string(request.method.rawValue),
            "path": .string(Self.pathWithoutQuery(request.uri)),
            "route": .string(request.route ?? "unmatched"),
            "status": .stringConvertible(status),
            "bytes": .stringConvertible(bytes),
            "duration_ms": .string(Self.milliseconds(nanoseconds)),
            "request_id": .string(request.id ?? "-"),
        ])
    }

    /// The access-log line of a request the server refused by itself (it never parsed its method or path).
    func logRefusal(status: Int, bytes: Int, requestID: String?) {
        accessLogger.info("- - \(status)", metadata: [
            "method": "-", "path": "-", "route": "-",
            "status": .stringConvertible(status),
            "bytes": .stringConvertible(bytes),
            "duration_ms": "-",
            "request_id": .string(requestID ?? "-"),
        ])
    }

    /// The request target up to its query or fragment, as received (still percent-encoded: a decoded `%0A` would
    /// split a text log line). The query is never logged: tokens and personal data travel there.
    static func pathWithoutQuery(_ uri: String) -> String {
        guard let end = uri.utf8.firstIndex(where: { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }) else {
            return uri
        }
        return String(uri[..<end])
    }

    /// `nanoseconds` in milliseconds with three decimals (`0.184`).
    static func milliseconds(_ nanoseconds: Int64) -> String {
        let micros = max(0, nanoseconds) / 1000
        let fraction = String(micros % 1000)
        return "\(micros / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }
}

// MARK: - Request ids and spans around the application

extension HTTPServer {
    /// The application's response, with `id` as ``RequestID/current`` meanwhile, so that every log line written
    /// while it runs carries it (through ``RequestID/metadataProvider``).
    func respond(to request: Request, id: String) async -> Response {
        await RequestID.$current.withValue(id) { await pipeline.respond(to: request) }
    }

    /// The application's response inside a server span: named `METHOD route` once the route is known (the pattern,
    /// `/users/:id`, never the path with its ids), with the method, route, status and request id as attributes, and
    /// an error status for a 5xx. The trace context comes from the request's headers (the tracer reads them:
    /// `traceparent` for OpenTelemetry) only when the peer is a trusted proxy; otherwise the span starts a trace.
    /// The span's context is `ServiceContext.current` while the application runs, so that the spans made below (each
    /// Redis command's) are its children.
    @inline(never)   // off the untraced path: its frame and generic calls cost nothing there
    func respondTraced(to request: Request, tracer: any Tracer) async -> Response {
        var context = ServiceContext.topLevel
        if trustedProxies.trusts(request.remoteAddress) {
            tracer.extract(request.headers, into: &context, using: HTTPHeadersExtractor())
        }
        let span = tracer.startSpan(request.method.rawValue, context: context, ofKind: .server)
        span.attributes["http.request.method"] = request.method.rawValue
        span.attributes["url.path"] = Self.pathWithoutQuery(request.uri)
        if let id = request.id { span.attributes["http.request.header.x_request_id"] = id }
        let response = await ServiceContext.$current.withValue(span.context) {
            if let id = request.id { return await respond(to: request, id: id) }
            return await pipeline.respond(to: request)
        }
        let route = request.route ?? "unmatched"
        let status = response.status.code
        span.operationName = "\(request.method.rawValue) \(route)"
        span.attributes["http.route"] = route
        span.attributes["http.response.status_code"] = status
        if status >= 500 { span.setStatus(SpanStatus(code: .error)) }
        span.end()
        return response
    }
}

/// Reads trace context fields (`traceparent`, `tracestate`, ...) out of a request's header fields, by name,
/// ignoring case.
struct HTTPHeadersExtractor: Extractor {
    func extract(key: String, from carrier: HTTPHeaders) -> String? { carrier[key] }
}
