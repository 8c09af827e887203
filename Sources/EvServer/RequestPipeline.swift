import Logging

// What every request runs through: the middleware chain and the router, frozen when the application starts, and how
// an error thrown on the way becomes a response (400 for bad input, the HTTPError's status, else 500 without
// internals). `Application.use(_:)`'s closures become `ClosureMiddleware`s here.

// MARK: - Pipeline

/// The frozen middleware chain and router. Immutable, so every loop runs it without locks.
@usableFromInline
final class RequestPipeline: Sendable {
    @usableFromInline let middleware: [any Middleware]
    @usableFromInline let router: Router
    let logger: Logger

    init(middleware: [any Middleware], router: Router, logger: Logger) {
        self.middleware = middleware
        self.router = router
        self.logger = logger
    }

    @inline(__always)   // (one executor check fewer per request, as for `run`)
    func respond(to request: Request) async -> Response {
        let response = Response()
        do {
            try await run(0, request, response)
        } catch {
            render(error, for: request, into: response)
        }
        return response
    }

    /// Runs the chain from middleware `index` on (past the last one: the router).
    @inlinable @inline(__always)
    func run(_ index: Int, _ request: Request, _ response: Response) async throws {
        guard index < middleware.count else { return try await router.handle(request, response) }
        try await middleware[index].handle(request, response, next: Next(self, from: index + 1, request, response))
    }

    /// The 400 message for an error that means bad input: JSON that does not parse (`JSONParseError`), or a value
    /// that does not decode into the type asked for (`DecodingError`, e.g. from `JSONValue.decode(as:)` or
    /// `Session.value(_:as:)`); nil for any other error.
    static func badInputMessage(_ error: any Error) -> String? {
        if let error = error as? JSONParseError { return error.description }
        guard let error = error as? DecodingError else { return nil }
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return keys.isEmpty ? "the value" : "value at \(keys.hasPrefix(".") ? String(keys.dropFirst()) : keys)"
        }
        return switch error {
        case .typeMismatch(let type, let context): "\(path(context)): expected \(type)"
        case .valueNotFound(let type, let context): "\(path(context)): expected \(type), found null"
        case .keyNotFound(let key, let context): "\(path(context)): missing key \"\(key.stringValue)\""
        case .dataCorrupted(let context): "\(path(context)): \(context.debugDescription)"
        @unknown default: "a value does not have the expected shape"
        }
    }

    private func render(_ error: any Error, for request: Request, into response: Response) {
        if let error = error as? HTTPError {
            response.status = error.status
            // The error's headers win over same-named ones already set (an `Allow`, say), except Set-Cookie,
            // which accumulates.
            for field in error.headers where !field.name.asciiCaseInsensitiveEquals("Set-Cookie") {
                response.headers.remove(field.name)
            }
            for field in error.headers { response.headers.add(field.name, field.value) }
            Self.sendError(error.message, for: request, into: response)
        } else if let message = Self.badInputMessage(error) {
            // Input the client sent that does not parse or decode is the client's error, as Express's body parser
            // answers it: 400 with what was wrong (the reason and where, never the input itself).
            response.status = .badRequest
            Self.sendError(message, for: request, into: response)
        } else {
            // The request id explicitly too: a logger bootstrapped without RequestID.metadataProvider still gets it.
            var metadata: Logger.Metadata = ["route": "\(request.route ?? "-")"]
            if let id = request.id { metadata["request_id"] = .string(id) }
            logger.error("unhandled error answering \(request.method) \(request.path): \(String(reflecting: error))",
                             metadata: metadata)
            response.status = .internalServerError
            Self.sendError("Internal Server Error", for: request, into: response)
        }
    }

    /// An error body in the form the client asked for: a small HTML page when its `Accept` lists `text/html` (a
    /// browser navigating), else JSON, `{"error":"<message>"}` (API clients, curl, `*/*`).
    static func sendError(_ message: String, for request: Request, into response: Response) {
        guard let accept = request.headers["Accept"], accept.utf8.count >= 9, accept.contains("text/html") else {
            return response.send(json: #"{"error":\#(jsonQuoted(message))}"#)
        }
        let title = "\(response.status.code) \(response.status.reason)"
        let page = "<!doctype html><html><head><meta charset=\"utf-8\"><title>\(htmlEscaped(title))</title></head>"
            + "<body><h1>\(htmlEscaped(title))</h1><p>\(htmlEscaped(message))</p></body></html>"
        response.headers.replace("Content-Type", "text/html; charset=utf-8")
        response.body = Array(page.utf8)
    }
}

/// `text` with the five HTML special characters escaped.
func htmlEscaped(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for character in text.unicodeScalars {
        switch character {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(character)
        }
    }
    return out
}

struct ClosureMiddleware: Middleware {
    let body: @Sendable (Request, Response, Next) async throws -> Void
    func handle(_ request: Request, _ response: Response, next: Next) async throws {
        try await body(request, response, next)
    }
}

/// `text` as a JSON string literal, quotes included (RFC 8259 section 7).
func jsonQuoted(_ text: String) -> String {
    var out = [UInt8]()
    out.reserveCapacity(text.utf8.count + 2)
    out.append(34)
    for byte in text.utf8 {
        switch byte {
        case 34: out += [92, 34]           // \"
        case 92: out += [92, 92]           // \\
        case 10: out += [92, 110]          // \n
        case 13: out += [92, 114]          // \r
        case 9: out += [92, 116]           // \t
        case 0..<32:
            let hex = Array("0123456789abcdef".utf8)
            out += [92, 117, 48, 48, hex[Int(byte >> 4)], hex[Int(byte & 15)]]   // \u00XX
        default: out.append(byte)
        }
    }
    out.append(34)
    return String(decoding: out, as: UTF8.self)
}
