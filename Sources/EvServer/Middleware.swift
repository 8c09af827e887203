/// A route handler: reads the request and fills in the response. It may await (a Redis call, say) before
/// returning; the response is sent once it and every middleware around it have returned.
public typealias Handler = @Sendable (Request, Response) async throws -> Void

/// Calls the rest of the chain (the next middleware, or the route's handler).
public struct Next {
    @usableFromInline
    enum Rest {
        case body(() async throws -> Void)
        /// The server's own chain: the pipeline's middleware from `index` on. Held as values rather than as a
        /// closure over them, which would be one more allocation and one more async frame per middleware and
        /// request.
        case pipeline(RequestPipeline, index: Int, Request, Response)
    }

    @usableFromInline let rest: Rest
    public init(_ body: @escaping () async throws -> Void) { rest = .body(body) }
    @usableFromInline
    init(_ pipeline: RequestPipeline, from index: Int, _ request: Request, _ response: Response) {
        rest = .pipeline(pipeline, index: index, request, response)
    }

    // Inlined into each middleware (with the pipeline step below): every async function entered costs an executor
    // check, and a middleware's `next()` would otherwise enter two before reaching the next middleware.
    @inlinable @inline(__always)
    public func callAsFunction() async throws {
        switch rest {
        case .body(let body): try await body()
        case .pipeline(let pipeline, let index, let request, let response):
            try await pipeline.run(index, request, response)
        }
    }
}

/// Code that runs around every request, like express's `app.use`.
///
/// A middleware calls `try await next()` to run the rest of the chain, and may act before and after it.
/// Throwing an ``HTTPError`` answers with its status.
public protocol Middleware: Sendable {
    func handle(_ request: Request, _ response: Response, next: Next) async throws
}
