// Maps a method and a path to a handler. Patterns are made of static segments and `:name` parameters, as in
// express (`/users/:id/posts`). A static segment beats a parameter at the same position; a trailing slash is
// tolerated; HEAD falls back to the GET route; OPTIONS is answered from the registered methods.

/// Routes requests to handlers by method and path.
///
/// Register routes with ``on(_:_:_:)`` before serving; matching never mutates the router, so a configured router
/// is shared freely between loops.
public struct Router: Sendable {
    private struct Route: Sendable {
        let method: HTTPMethod
        let pattern: String
        let parameterNames: [String]
        let handler: Handler
    }

    private struct Node: Sendable {
        var children: [String: Int] = [:]
        var parameterChild: Int?
        var routes: [Route] = []
    }

    /// nodes[0] is the root; children refer to nodes by index, which keeps the tree a plain value.
    private var nodes: [Node] = [Node()]
    /// Patterns without parameters, by normalized path: one dictionary lookup for the common case.
    private var staticPaths: [String: Int] = [:]

    public init() {}

    // MARK: - Registering

    /// Registers `handler` for `method` on `pattern`.
    ///
    /// - Parameters:
    ///   - method: the method; a GET route also answers HEAD (the server drops the body).
    ///   - pattern: a path starting with `/`; segments starting with `:` capture one non-empty segment into
    ///     `request.parameters`. A trailing slash is ignored.
    ///   - handler: the handler.
    /// - Precondition: the pattern starts with `/`, parameter names are not empty, and the same method and pattern
    ///   are not registered twice.
    public mutating func on(_ method: HTTPMethod, _ pattern: String, _ handler: @escaping Handler) {
        precondition(pattern.hasPrefix("/"), "route pattern must start with '/': \(pattern)")
        let segments = Router.segments(of: pattern[...])
        var node = 0
        var names: [String] = []
        var isStatic = true
        for segment in segments {
            if segment.hasPrefix(":") {
                let name = String(segment.dropFirst())
                precondition(!name.isEmpty, "empty parameter name in route pattern \(pattern)")
                precondition(!names.contains(name), "parameter :\(name) appears twice in \(pattern)")
                names.append(name)
                isStatic = false
                if let child = nodes[node].parameterChild {
                    node = child
                } else {
                    nodes.append(Node())
                    nodes[node].parameterChild = nodes.count - 1
                    node = nodes.count - 1
                }
            } else {
                let key = String(segment)
                if let child = nodes[node].children[key] {
                    node = child
                } else {
                    nodes.append(Node())
                    nodes[node].children[key] = nodes.count - 1
                    node = nodes.count - 1
                }
            }
        }
        let normalized = "/" + segments.joined(separator: "/")
        precondition(!nodes[node].routes.contains { $0.method == method },
                     "route \(method) \(normalized) is registered twice")
        nodes[node].routes.append(Route(method: method, pattern: normalized, parameterNames: names, handler: handler))
        if isStatic { staticPaths[normalized] = node }
    }

    // MARK: - Matching

    /// Finds the handler for `request`, filling in `request.parameters` and `request.route`.
    ///
    /// - Returns: the handler to run (for an OPTIONS request without an OPTIONS route, one that answers 204 with an
    ///   `Allow` header).
    /// - Throws: ``HTTPError`` 404 when no pattern matches the path; 405 with an `Allow` header when patterns match
    ///   but none for this method.
    public func route(_ request: Request) throws -> Handler {
        let method = request.method
        let path = Router.rawPath(of: request.uri)

        // Fast path: a path without escapes that is exactly a static pattern.
        if !Router.hasEscape(path), let node = staticPaths[Router.normalizedKey(path)],
           let route = Router.select(nodes[node].routes, for: method) {
            request.route = route.pattern
            return route.handler
        }

        let segments = Router.segments(of: path).map(Router.decode)
        var values: [String] = []
        values.reserveCapacity(4)
        var fallback: Int?
        if let route = search(0, segments, 0, &values, method, &fallback) {
            request.route = route.pattern
            for (name, value) in zip(route.parameterNames, values) { request.parameters[name] = value }
            return route.handler
        }
        guard let node = fallback else { throw HTTPError(.notFound) }
        let allow = Router.allowHeader(for: nodes[node].routes)
        if method == .options {
            request.route = nodes[node].routes[0].pattern
            return { _, response in
                response.status = .noContent
                response.headers.replace("Allow", allow)
            }
        }
        throw HTTPError(.methodNotAllowed, headers: ["Allow": allow])
    }

    /// Routes `request` and runs the handler.
    /// - Throws: what ``route(_:)`` or the handler throws.
    @inlinable   // into the pipeline step that calls it: one async function entered fewer per request
    public func handle(_ request: Request, _ response: Response) async throws {
        let handler = try route(request)
        try await handler(request, response)
    }

    /// Depth-first, static child before parameter child, so `/users/new` beats `/users/:id` but `/users/new/x`
    /// can still reach `/users/:id/x`. `fallback` records the first node whose path matched without the method.
    private func search(_ node: Int, _ segments: [String], _ depth: Int, _ values: inout [String],
                        _ method: HTTPMethod, _ fallback: inout Int?) -> Route? {
        if depth == segments.count {
            let routes = nodes[node].routes
            if routes.isEmpty { return nil }
            if let route = Router.select(routes, for: method) { return route }
            if fallback == nil { fallback = node }
            return nil
        }
        let segment = segments[depth]
        if let child = nodes[node].children[segment],
           let route = search(child, segments, depth + 1, &values, method, &fallback) {
            return route
        }
        if let child = nodes[node].parameterChild, !segment.isEmpty {
            values.append(segment)
            if let route = search(child, segments, depth + 1, &values, method, &fallback) { return route }
            values.removeLast()
        }
        return nil
    }

    private static func select(_ routes: [Route], for method: HTTPMethod) -> Route? {
        if let route = routes.first(where: { $0.method == method }) { return route }
        if method == .head { return routes.first { $0.method == .get } }
        return nil
    }

    private static let methodOrder: [HTTPMethod] = [.get, .head, .post, .put, .patch, .delete, .options]

    /// `GET, HEAD, POST`: the registered methods in a fixed order, HEAD when GET is there, and OPTIONS (answered
    /// automatically when not registered).
    private static func allowHeader(for routes: [Route]) -> String {
        var methods = Set(routes.map(\.method))
        if methods.contains(.get) { methods.insert(.head) }
        methods.insert(.options)
        let known = methodOrder.filter { methods.contains($0) }
        let others = routes.map(\.method).filter { !methodOrder.contains($0) }
        return (known + others).map(\.rawValue).joined(separator: ", ")
    }

    // MARK: - Paths

    /// The path part of a request target, still percent-encoded: without query or fragment, and without
    /// `scheme://authority` for an absolute-form target (`GET http://host/a HTTP/1.1`).
    static func rawPath(of uri: String) -> Substring {
        var path = uri[...]
        // Over a span of the UTF-8: the view's generic search costs several times more per byte.
        let bytes = uri.utf8.span
        var end = 0
        while end < bytes.count && bytes[end] != 63 && bytes[end] != 35 { end += 1 }   // ? #
        if end < bytes.count {
            path = path[..<uri.utf8.index(uri.utf8.startIndex, offsetBy: end)]
        }
        if path.utf8.first != 47, let schemeEnd = path.firstRange(of: "://") {   // not '/': absolute form
            let authority = path[schemeEnd.upperBound...]
            path = authority.utf8.firstIndex(of: 47).map { authority[$0...] } ?? "/"
        }
        return path
    }

    /// Whether `path` contains a percent escape.
    private static func hasEscape(_ path: Substring) -> Bool {
        let bytes = path.utf8.span
        for index in bytes.indices where bytes[index] == 37 { return true }
        return false
    }

    /// Splits a path into segments, dropping the leading and one trailing slash: `/a/b/` -> `a`, `b`; `/` -> none.
    static func segments(of path: Substring) -> [Substring] {
        var segments = path.split(separator: "/", omittingEmptySubsequences: false)
        if segments.first?.isEmpty == true { segments.removeFirst() }
        if segments.last?.isEmpty == true { segments.removeLast() }
        return segments
    }

    /// The lookup key for ``staticPaths``: the path without one trailing slash (`/` stays `/`).
    private static func normalizedKey(_ path: Substring) -> String {
        // Bytes, not Characters (`count` would walk the path's graphemes): a '/' is always a Character of its own.
        let utf8 = path.utf8
        if utf8.count > 1 && utf8.last == 47 { return String(path[..<utf8.index(before: utf8.endIndex)]) }
        return path.isEmpty ? "/" : String(path)
    }

    /// Percent-decodes a segment; a malformed escape leaves the segment as received.
    private static func decode(_ segment: Substring) -> String {
        let text = String(segment)
        guard text.utf8.contains(37) else { return text }
        return percentDecode(text) ?? text
    }
}
