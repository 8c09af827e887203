import Testing
@testable import EvServer

// The router on its own and through Application.respond(to:), without a socket.

/// Runs `method uri` through `app` and returns the response.
private func send(_ app: Application, _ method: HTTPMethod, _ uri: String) async -> Response {
    await app.respond(to: Request(method: method, uri: uri))
}

/// A handler that answers with a fixed text, to tell routes apart.
private func answer(_ text: String) -> Handler {
    { request, response in
        let parameters = request.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        response.send(parameters.isEmpty ? text : "\(text) \(parameters.joined(separator: ","))")
    }
}

@Suite("Router")
struct RouterTests {
    private func routes() -> Application {
        let app = Application()
        app.get("/", answer("root"))
        app.get("/users", answer("list"))
        app.post("/users", answer("create"))
        app.get("/users/new", answer("new form"))
        app.get("/users/:id", answer("show"))
        app.delete("/users/:id", answer("destroy"))
        app.get("/users/:id/posts/:post", answer("post"))
        app.get("/a/b/c", answer("static abc"))
        app.get("/a/:x/d", answer("param d"))
        app.put("/files/:name", answer("put file"))
        app.patch("/files/:name", answer("patch file"))
        return app
    }

    @Test func staticSegmentBeatsParameter() async {
        let app = routes()
        #expect(await send(app, .get, "/users/new").bodyText == "new form")
        #expect(await send(app, .get, "/users/42").bodyText == "show id=42")
    }

    @Test func parameterRouteStillMatchesWhenTheStaticOneLacksTheMethod() async {
        // DELETE /users/new: the static node has no DELETE, the parameter route does.
        #expect(await send(routes(), .delete, "/users/new").bodyText == "destroy id=new")
    }

    @Test func searchBacktracksFromAStaticDeadEnd() async {
        let app = routes()
        #expect(await send(app, .get, "/a/b/c").bodyText == "static abc")
        #expect(await send(app, .get, "/a/b/d").bodyText == "param d x=b")
    }

    @Test func severalParametersAreCaptured() async {
        #expect(await send(routes(), .get, "/users/7/posts/hello").bodyText == "post id=7,post=hello")
    }

    @Test func trailingSlashIsTolerated() async {
        let app = routes()
        #expect(await send(app, .get, "/users/").bodyText == "list")
        #expect(await send(app, .get, "/users/9/").bodyText == "show id=9")
        #expect(await send(app, .get, "/").bodyText == "root")
        #expect(await send(app, .get, "/a/b/c/").bodyText == "static abc")
    }

    @Test func emptySegmentDoesNotMatchAParameter() async {
        let app = routes()
        #expect(await send(app, .get, "/users//").status == .notFound)
        #expect(await send(app, .get, "/users//posts/x").status == .notFound)
    }

    @Test func parameterValuesArePercentDecoded() async {
        let app = routes()
        #expect(await send(app, .get, "/users/a%20b").bodyText == "show id=a b")
        #expect(await send(app, .get, "/users/a%2Fb").bodyText == "show id=a/b")   // one segment, then decoded
        #expect(await send(app, .get, "/users/caf%C3%A9").bodyText == "show id=café")
        #expect(await send(app, .get, "/users/100%").bodyText == "show id=100%")   // malformed: kept raw
        #expect(await send(app, .get, "/users/%FF").bodyText == "show id=%FF")     // not UTF-8: kept raw
    }

    @Test func queryAndFragmentDoNotAffectRouting() async {
        let app = routes()
        #expect(await send(app, .get, "/users/3?x=1").bodyText == "show id=3")
        #expect(await send(app, .get, "/users?x=/y").bodyText == "list")
        #expect(await send(app, .get, "/users#top").bodyText == "list")
    }

    @Test func absoluteFormTargetIsRoutedByItsPath() async {
        let app = routes()
        #expect(await send(app, .get, "http://example.com/users/5").bodyText == "show id=5")
        #expect(await send(app, .get, "http://example.com").bodyText == "root")
    }

    @Test func headFallsBackToGetUnlessRegistered() async {
        let app = routes()
        app.head("/users/:id", answer("explicit head"))
        #expect(await send(app, .head, "/users").bodyText == "list")
        #expect(await send(app, .head, "/users/1").bodyText == "explicit head id=1")
        #expect(await send(app, .head, "/files/x").status == .methodNotAllowed)   // only PUT and PATCH there
    }

    @Test func unknownPathIs404AndLeavesRouteNil() async throws {
        let request = Request(method: .get, uri: "/nowhere")
        let response = await routes().respond(to: request)
        #expect(response.status == .notFound)
        #expect(response.bodyText == #"{"error":"Not Found"}"#)
        #expect(request.route == nil)
    }

    @Test func knownPathWithWrongMethodIs405WithAllow() async {
        let app = routes()
        let response = await send(app, .post, "/users/1")
        #expect(response.status == .methodNotAllowed)
        #expect(response.headers["Allow"] == "GET, HEAD, DELETE, OPTIONS")
        #expect(await send(app, .get, "/files/a").headers["Allow"] == "PUT, PATCH, OPTIONS")
    }

    @Test func optionsIsAnsweredFromTheRegisteredMethods() async {
        let app = routes()
        let response = await send(app, .options, "/users")
        #expect(response.status == .noContent)
        #expect(response.headers["Allow"] == "GET, HEAD, POST, OPTIONS")
        #expect(response.body.isEmpty)
        app.on(.options, "/files/:name", answer("custom options"))
        #expect(await send(app, .options, "/files/z").bodyText == "custom options name=z")
    }

    @Test func matchedPatternIsRecordedForMetrics() async throws {
        let app = routes()
        let request = Request(method: .get, uri: "/users/12/posts/9")
        _ = await app.respond(to: request)
        #expect(request.route == "/users/:id/posts/:post")
        let plain = Request(method: .get, uri: "/users/")
        _ = await app.respond(to: plain)
        #expect(plain.route == "/users")
    }

    @Test func customMethodsAreRouted() async {
        let app = Application()
        let purge = HTTPMethod(rawValue: "PURGE")
        app.on(purge, "/cache", answer("purged"))
        #expect(await send(app, purge, "/cache").bodyText == "purged")
        #expect(await send(app, .get, "/cache").headers["Allow"] == "OPTIONS, PURGE")
    }

    @Test func routerWorksWithoutAnApplication() async throws {
        var router = Router()
        router.on(.get, "/items/:id/", answer("item"))
        let request = Request(method: .get, uri: "/items/x")
        let response = Response()
        try await router.handle(request, response)
        #expect(response.bodyText == "item id=x")
        #expect(request.route == "/items/:id")
        #expect(throws: HTTPError.self) { try router.route(Request(method: .get, uri: "/items")) }
    }

    @Test func rawPathStripsQueryFragmentAndAuthority() {
        #expect(Router.rawPath(of: "/a/b?c=d") == "/a/b")
        #expect(Router.rawPath(of: "/a#x") == "/a")
        #expect(Router.rawPath(of: "https://h:8080/p/q?x") == "/p/q")
        #expect(Router.rawPath(of: "*") == "*")
        #expect(Router.segments(of: "/") == [])
        #expect(Router.segments(of: "/a//b/") == ["a", "", "b"])
    }
}

extension Response {
    var bodyText: String { String(decoding: body, as: UTF8.self) }
}
