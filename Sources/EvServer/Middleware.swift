/// A route handler: reads the request and fills in the response. It may await (a Redis call, say) before
/// returning; the response is sent once it and every middleware around it have returned.
public typealias Handler = @Sendable (Request, Response) async throws -> Void

/// Calls the rest of the chain (the next middleware, or the route's handler).
public struct Next {
    private let body: () async throws -> Void
    public init(_ body: @escaping () async throws -> Void) { self.body = body }
    public func callAsFunction() async throws { try await body() }
}

/// Code that runs around every request, like express's `app.use`.
///
/// A middleware calls `try await next()` to run the rest of the chain, and may act before and after it.
/// Throwing an ``HTTPError`` answers with its status.
public protocol Middleware: Sendable {
    func handle(_ request: Request, _ response: Response, next: Next) async throws
}
