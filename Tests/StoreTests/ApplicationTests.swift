import Synchronization
import Testing
@testable import EvServer

// Application.respond(to:) without a socket: the middleware chain, error rendering, configuration.

/// A middleware that records when it runs, to check the order of the chain.
private struct Recorder: Middleware {
    let name: String
    let log: Log
    func handle(_ request: Request, _ response: Response, next: Next) async throws {
        log.append("\(name) before")
        try await next()
        log.append("\(name) after")
    }
}

private final class Log: Sendable {
    private let entries = Mutex<[String]>([])
    func append(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}

private struct SessionKey: RequestStorageKey { typealias Value = String }

@Suite("Application")
struct ApplicationTests {
    @Test func middlewareRunsInOrderAroundTheHandler() async {
        let app = Application()
        let log = Log()
        app.use(Recorder(name: "outer", log: log))
        app.use(Recorder(name: "inner", log: log))
        app.get("/") { _, response in
            log.append("handler")
            response.send("ok")
        }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.bodyText == "ok")
        #expect(log.all == ["outer before", "inner before", "handler", "inner after", "outer after"])
    }

    @Test func middlewareCanAnswerWithoutCallingNext() async {
        let app = Application()
        let log = Log()
        app.use { request, response, next in
            guard request.headers["Authorization"] != nil else {
                response.send("login first", status: .unauthorized)
                return
            }
            try await next()
        }
        app.get("/secret") { _, response in
            log.append("handler")
            response.send("secret")
        }
        let denied = await app.respond(to: Request(method: .get, uri: "/secret"))
        #expect(denied.status == .unauthorized)
        #expect(log.all.isEmpty)
        let allowed = await app.respond(to: Request(method: .get, uri: "/secret", headers: ["Authorization": "x"]))
        #expect(allowed.bodyText == "secret")
    }

    @Test func middlewarePassesValuesToTheHandlerThroughStorage() async {
        let app = Application()
        app.use { request, _, next in
            request.storage[SessionKey.self] = "session-1"
            try await next()
        }
        app.get("/") { request, response in response.send(request.storage[SessionKey.self] ?? "none") }
        #expect(await app.respond(to: Request(method: .get, uri: "/")).bodyText == "session-1")
    }

    @Test func httpErrorKeepsHeadersSetEarlierAndAddsItsOwn() async {
        let app = Application()
        app.use { _, response, next in
            response.headers.replace("X-Instance", "a")
            response.headers.add("Set-Cookie", "connect.sid=s%3Aabc.def; Path=/; HttpOnly; SameSite=Lax")
            response.headers.replace("Retry-After", "1")
            try await next()
        }
        app.get("/") { _, response in
            response.send("partial")   // replaced by the error body
            throw HTTPError(.serviceUnavailable, message: "store down",
                            headers: ["Retry-After": "5", "Set-Cookie": "b=2"])
        }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.status == .serviceUnavailable)
        #expect(response.bodyText == #"{"error":"store down"}"#)
        #expect(response.headers["Content-Type"] == "application/json; charset=utf-8")
        #expect(response.headers.values("Content-Type").count == 1)
        #expect(response.headers["X-Instance"] == "a")
        #expect(response.headers.values("Retry-After") == ["5"])
        #expect(response.headers.values("Set-Cookie")
            == ["connect.sid=s%3Aabc.def; Path=/; HttpOnly; SameSite=Lax", "b=2"])
    }

    /// Input that does not parse or decode is the client's error: 400 with what was wrong and where, never the
    /// input itself; any other error stays a 500 without details.
    @Test func badJSONAndValuesThatDoNotDecodeAre400() async throws {
        struct Item: Decodable { let name: String; let price: Int }
        struct Cart: Decodable { let items: [Item] }
        let app = Application()
        app.post("/cart") { request, response in
            let cart = try JSONValue(parsing: request.body).decode(as: Cart.self)
            response.send("\(cart.items.count) items")
        }
        app.get("/boom") { _, _ in throw CancellationError() }
        func post(_ body: String) async -> Response {
            await app.respond(to: Request(method: .post, uri: "/cart", body: Array(body.utf8)))
        }
        #expect(await post(#"{"items":[{"name":"a","price":1}]}"#).bodyText == "1 items")
        let notJSON = await post(#"{"items":[{"name":"secret-token","price":1}"#)
        #expect(notJSON.status == .badRequest)
        #expect(notJSON.bodyText == #"{"error":"invalid JSON: unexpected end of input at byte 43"}"#)
        #expect(!notJSON.bodyText.contains("secret-token"))
        let wrongType = await post(#"{"items":[{"name":"a","price":"free"}]}"#)
        #expect(wrongType.status == .badRequest)
        #expect(wrongType.bodyText == #"{"error":"value at items[0].price: expected Int"}"#)
        let missing = await post(#"{"items":[{"name":"a"}]}"#)
        #expect(missing.bodyText == #"{"error":"value at items[0]: missing key \"price\""}"#)
        let null = await post(#"{"items":null}"#)
        #expect(null.bodyText == #"{"error":"value at items: expected Array<Any>, found null"}"#)
        let other = await app.respond(to: Request(method: .get, uri: "/boom"))
        #expect(other.status == .internalServerError)
        #expect(other.bodyText == #"{"error":"Internal Server Error"}"#)
    }

    @Test func jsonSendsAnEncodableWithItsContentType() async throws {
        struct Cart: Encodable { let items: [String]; let total: Int }
        let app = Application()
        app.get("/cart") { _, response in try response.json(Cart(items: ["a", "b"], total: 7), status: .created) }
        let response = await app.respond(to: Request(method: .get, uri: "/cart"))
        #expect(response.status == .created)
        #expect(response.bodyText == #"{"items":["a","b"],"total":7}"#)
        #expect(response.headers["Content-Type"] == "application/json; charset=utf-8")
    }

    /// A browser (Accept: text/html) gets an HTML error page, an API client JSON; the message is escaped either way.
    @Test func errorPagesFollowTheAcceptHeader() async {
        let app = Application()
        app.get("/") { _, response in
            response.headers.replace("Content-Type", "application/json")
            throw HTTPError(.forbidden, message: "no <script> & \"quotes\"")
        }
        let browser = await app.respond(to: Request(method: .get, uri: "/", headers: HTTPHeaders([
            ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")])))
        #expect(browser.status == .forbidden)
        #expect(browser.headers["Content-Type"] == "text/html; charset=utf-8")
        #expect(browser.bodyText == "<!doctype html><html><head><meta charset=\"utf-8\"><title>403 Forbidden</title>"
            + "</head><body><h1>403 Forbidden</h1><p>no &lt;script&gt; &amp; &quot;quotes&quot;</p></body></html>")
        let missing = await app.respond(to: Request(method: .get, uri: "/nowhere", headers: HTTPHeaders([
            ("Accept", "text/html")])))
        #expect(missing.status == .notFound && missing.bodyText.contains("<h1>404 Not Found</h1>"))
        for accept in ["application/json", "*/*", nil] {
            let api = await app.respond(to: Request(method: .get, uri: "/",
                                                    headers: HTTPHeaders(accept.map { [("Accept", $0)] } ?? [])))
            #expect(api.headers["Content-Type"] == "application/json; charset=utf-8", "\(accept ?? "none")")
            #expect(api.bodyText == #"{"error":"no <script> & \"quotes\""}"#, "\(accept ?? "none")")
        }
    }

    @Test func errorMessageIsEscapedAsJSON() async {
        let app = Application()
        app.get("/") { _, _ in throw HTTPError(.badRequest, message: "bad \"name\"\n\\ \u{1}") }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.status == .badRequest)
        #expect(response.bodyText == #"{"error":"bad \"name\"\n\\ \u0001"}"#)
    }

    @Test func otherErrorsBecome500WithoutDetails() async {
        let app = Application()
        app.use { _, response, next in
            response.headers.replace("X-Instance", "b")
            try await next()
        }
        app.get("/") { _, _ in throw Boom() }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.status == .internalServerError)
        #expect(response.bodyText == #"{"error":"Internal Server Error"}"#)
        #expect(response.headers["X-Instance"] == "b")
    }

    @Test func errorThrownByMiddlewareIsRendered() async {
        let app = Application()
        app.use { _, _, _ in throw HTTPError(.tooManyRequests) }
        app.get("/") { _, response in response.send("never") }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.status.code == 429)
        #expect(response.bodyText == #"{"error":"Too Many Requests"}"#)
    }

    @Test func middlewareSeesTheErrorOfTheChainBelow() async {
        let app = Application()
        let log = Log()
        app.use { _, _, next in
            do { try await next() } catch { log.append("saw \(error)"); throw error }
        }
        app.get("/") { _, _ in throw HTTPError(.notFound, message: "gone") }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.status == .notFound)
        #expect(log.all == ["saw 404 Not Found: gone"])
    }

    @Test func defaultResponseIsAnEmpty200() async {
        let app = Application()
        app.get("/") { _, _ in }
        let response = await app.respond(to: Request(method: .get, uri: "/"))
        #expect(response.status == .ok)
        #expect(response.body.isEmpty)
        #expect(response.headers.count == 0)
    }

    @Test func routesAddedAfterARespondAreSeen() async {
        let app = Application()
        #expect(await app.respond(to: Request(method: .get, uri: "/late")).status == .notFound)
        app.get("/late") { _, response in response.send("here") }
        #expect(await app.respond(to: Request(method: .get, uri: "/late")).bodyText == "here")
    }

    @Test func requestExposesDecodedPathQueryAndCookies() async {
        let request = Request(method: .get, uri: "/a%20b/c?x=1+2&y=%3D&x=3",
                              headers: ["Cookie": "a=1; b=%22q%22", "cookie": "a=ignored; c=3"])
        #expect(request.path == "/a b/c")
        #expect(request.query == "x=1+2&y=%3D&x=3")
        #expect(request.queryItems == ["x": "1 2", "y": "="])
        #expect(request.cookies == ["a": "1", "b": "\"q\"", "c": "3"])
    }

    @Test func statusHelpersAndJSONQuoting() {
        #expect(jsonQuoted("plain") == #""plain""#)
        #expect(jsonQuoted("tab\there") == #""tab\there""#)
        #expect(jsonQuoted("é ✓") == "\"é ✓\"")
        #expect(HTTPStatus(code: 418).reason == "Status 418")
        #expect(HTTPStatus(code: 503).description == "503 Service Unavailable")
    }
}
