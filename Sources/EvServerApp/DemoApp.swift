#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import Logging
import RedisClient
import RedisSessionStore
import Tracing

// The demo application: the express-session tutorial's routes plus the operational ones. The routes are a
// contract that the scale, reliability and benchmark tests drive; change them only with those tests.

/// Builds the demo's store, middleware and routes from a validated configuration.
struct DemoApp: Sendable {
    let configuration: AppConfiguration
    let store: any SessionStore
    let sessions: SessionMiddleware
    let metrics: Metrics
    /// The HTTP server configuration derived from the flags. `X-Instance` is one of its default header fields, so
    /// every response carries it: the handlers', and the answers the server sends before any handler runs (413,
    /// 431, 408, ...), which no middleware sees.
    let serverConfiguration: HTTPServerConfiguration
    /// The tracer of request and Redis command spans; nil: the one `InstrumentationSystem` was bootstrapped with,
    /// if any (`evserver` bootstraps none).
    let tracer: (any Tracer)?

    /// - Throws: ``CookieSignerError`` for an empty secret; ``InvalidHeaderFieldError`` for an instance name that
    ///   cannot be sent as `X-Instance` (``ServerOptions/resolve(environment:)`` refuses both first).
    init(configuration: AppConfiguration, metrics: Metrics = Metrics(), tracer: (any Tracer)? = nil) throws {
        self.configuration = configuration
        self.metrics = metrics
        let bootstrapped = InstrumentationSystem.tracer
        let tracer = tracer ?? (bootstrapped is NoOpTracer ? nil : bootstrapped)
        self.tracer = tracer
        var redis = configuration.redis
        redis.tracer = tracer
        redis.metricsFactory = metrics.factory
        switch configuration.store {
        case .memory:
            store = MemorySessionStore(defaultTTL: configuration.idleTimeout)
        case .redis:
            store = configuration.makeRedisStore(redis: redis)
        }
        var options = SessionConfiguration(secrets: configuration.secrets)
        options.name = configuration.cookieName
        options.rolling = configuration.rolling
        options.resave = configuration.resave
        options.saveUninitialized = configuration.saveUninitialized
        options.trustedProxies = configuration.trustProxy
        options.absoluteTimeout = configuration.absoluteTimeout.map { .seconds($0) }
        options.maxSessionsPerUser = configuration.maxSessionsPerUser
        options.cookie.secure = configuration.cookieSecure
        options.cookie.sameSite = configuration.cookieSameSite
        options.cookie.maxAge = configuration.maxAge.map { Int64($0) * 1000 }
        sessions = try SessionMiddleware(store: store, configuration: options)
        var server = HTTPServerConfiguration()
        server.maxBodySize = configuration.maxBody
        server.shutdownTimeout = .seconds(configuration.shutdownTimeout)
        server.maxConnections = configuration.maxConnections
        server.defaultHeaders = try DefaultHeaders([("X-Instance", configuration.instance)])
        // X-Request-Id on every response; a proxy's own id is kept when --trust-proxy trusts it.
        server.requestIDs = RequestIDConfiguration()
        server.trustedProxies = configuration.trustProxy
        server.accessLog = configuration.accessLog
        serverConfiguration = server
    }

    /// An application with every demo route, ready to start.
    func makeApplication() -> Application {
        // The server records every request's route, status and latency into the metrics itself (the answers it
        // sends before any middleware runs included).
        let app = Application(configuration: serverConfiguration, metricsFactory: metrics.factory, tracer: tracer)
        // Probes and metrics run without a session: a balancer polling /readyz every second must not get (and,
        // with --save-uninitialized, store) a new session each time.
        app.use(SkippingPaths(DemoApp.sessionFreePaths, sessions))
        addSessionRoutes(to: app)
        addUserRoutes(to: app)
        addOperationalRoutes(to: app)
        DemoPage.register(on: app)
        return app
    }

    // MARK: - Session routes

    private func addSessionRoutes(to app: Application) {
        let instance = configuration.instance

        app.get("/") { request, response in
            request.session["userName"] = "Aditya@123"
            response.send("Thanks for visiting")
        }

        app.get("/login") { request, response in
            response.send("Welcome \(request.session["userName"] ?? "guest")")
        }

        // An exact counter: every answered request adds one, however many run at once on however many instances.
        app.get("/views") { request, response in
            let views = try await request.session.increment("views")
            response.send(json: ["views": .number(String(views)), "instance": .string(instance)])
        }

        // `id` is express's `req.sessionID` for every session that is or will be in the store when this response
        // goes out: a loaded one, or a new one the middleware saves after the handler (with --save-uninitialized,
        // or once modified), whose id is the one in this response's Set-Cookie. Only a new session that will not be
        // saved (nothing stored, no --save-uninitialized) answers null: its id would name nothing.
        // `ttl` goes with `id` (null when it is): the seconds the store keeps the session from now. Every request
        // refreshes the store's expiry, and a new session is saved with the full lifetime, so it is the cookie's
        // remaining life, or the idle TTL when the cookie lasts for the browser session.
        let idleTTL = configuration.idleTimeout
        let savesUninitialized = configuration.saveUninitialized
        app.get("/session") { request, response in
            let session = request.session
            let isStored = !session.isNew || savesUninitialized || session.status == .modified
            let body: JSONValue = [
                "id": isStored ? .string(session.id) : .null,
                "data": .object(session.data),
                "cookie": session.cookie.jsonValue,
                "ttl": isStored ? .number(String(Self.remainingSeconds(session.cookie, idleTTL: idleTTL))) : .null,
                "instance": .string(instance),
            ]
            response.send(json: body)
        }

        app.post("/session") { request, response in
            let parsed: JSONValue
            do {
                parsed = try JSONValue(parsing: request.body)
            } catch {
                throw HTTPError(.badRequest, message: "body is not valid JSON: \(error)")
            }
            guard case .object(let object) = parsed else {
                throw HTTPError(.badRequest, message: "body must be a JSON object")
            }
            for key in object.keys where key != "cookie" {
                request.session[key] = object[key]
            }
            response.send(json: ["data": .object(request.session.data), "instance": .string(instance)])
        }

        app.post("/session/regenerate") { request, response in
            try await request.session.regenerate()
            response.send(json: ["id": .string(request.session.id)])
        }

        let cookieName = configuration.cookieName
        let cookieSameSite = configuration.cookieSameSite
        app.post("/logout") { request, response in
            try await request.session.destroy()
            // express-session leaves the cookie alone on destroy; the browser should forget it too.
            response.setCookie(SetCookie(name: cookieName, value: "", path: "/", expires: Date(timeIntervalSince1970: 0),
                                         sameSite: cookieSameSite))
            response.send(json: #"{"loggedOut":true}"#)
        }
    }

    // MARK: - Users and devices

    /// `POST /signin`, `GET /devices`, `POST /signout-everywhere`, `POST /signout`: a user's sessions (see the
    /// README's "Users and devices"). The demo has no passwords: any user name signs in.
    private func addUserRoutes(to app: Application) {
        let instance = configuration.instance
        let proxies = configuration.trustProxy
        let users = store as? any UserSessionStore

        app.post("/signin") { request, response in
            let parsed: JSONValue
            do {
                parsed = try JSONValue(parsing: request.body)
            } catch {
                throw HTTPError(.badRequest, message: "body is not valid JSON: \(error)")
            }
            guard case .string(let user)? = parsed["user"] else {
                throw HTTPError(.badRequest, message: #"body must be a JSON object with a string "user""#)
            }
            // The client's description (user agent family, address through --trust-proxy) is stored because this
            // application asks for it, to show it in the list of devices.
            try await request.session.signIn(user: user, client: SessionClient(request: request, trusting: proxies))
            response.send(json: ["user": .string(user), "instance": .string(instance)])
        }

        app.get("/devices") { request, response in
            guard let users else { throw HTTPError(.notImplemented, message: "this store keeps no index of users") }
            guard let user = request.session.user else { throw HTTPError(.unauthorized, message: "not signed in") }
            let current = request.session.id
            let sessions: [UserSession]
            do {
                sessions = try await users.sessions(ofUser: user)
            } catch {
                throw DemoApp.storeUnavailable
            }
            // Never the other sessions' ids (credentials): a handle each, and which one is this device.
            let devices: [JSONValue] = sessions.map { session in
                guard case .object(var object) = session.jsonValue(includingId: false) else { return .null }
                object["current"] = .bool(session.id == current)
                return .object(object)
            }
            response.send(json: ["user": .string(user), "devices": .array(devices), "instance": .string(instance)])
        }

        app.post("/signout-everywhere") { request, response in
            guard let users else { throw HTTPError(.notImplemented, message: "this store keeps no index of users") }
            guard let user = request.session.user else { throw HTTPError(.unauthorized, message: "not signed in") }
            let ended: Int
            do {
                ended = try await users.destroySessions(ofUser: user, except: request.session.id)
            } catch {
                throw DemoApp.storeUnavailable
            }
            response.send(json: ["ended": .number(String(ended)), "instance": .string(instance)])
        }

        app.post("/signout") { request, response in
            try await request.session.signOut()
            response.send(json: ["signedOut": true, "instance": .string(instance)])
        }
    }

    /// A store failure in a route's own store call: retry in a second, as the middleware answers its own.
    static var storeUnavailable: HTTPError {
        HTTPError(.serviceUnavailable, message: "session store unavailable", headers: ["Retry-After": "1"])
    }

    static func remainingSeconds(_ cookie: SessionCookie, idleTTL: Int) -> Int {
        guard let expires = cookie.expires else { return idleTTL }
        return max(0, Int((expires.timeIntervalSinceNow).rounded(.up)))
    }

    // MARK: - Operational routes

    private func addOperationalRoutes(to app: Application) {
        let store = store
        let metrics = metrics
        let sessionMetrics = sessions.metrics

        // The Content-Type first: send(_:) then keeps it instead of adding text/html for replace to take out again.
        app.get("/hello") { _, response in
            response.headers.replace("Content-Type", "text/plain; charset=utf-8")
            response.send("ok", status: .ok)
        }

        app.get("/healthz") { _, response in
            response.headers.replace("Content-Type", "text/plain; charset=utf-8")
            response.send("ok")
        }

        app.get("/readyz") { [weak app] _, response in
            response.headers.replace("Content-Type", "text/plain; charset=utf-8")
            // Draining: not ready, at once, so the balancer stops sending new requests here.
            if app?.isShuttingDown == true {
                response.send("shutting down", status: .serviceUnavailable)
                return
            }
            do {
                try await store.ping()
                response.send("ready")
            } catch {
                response.send("store unavailable", status: .serviceUnavailable)
                response.headers.replace("Retry-After", "1")
            }
        }

        app.get("/metrics") { _, response in
            response.headers.replace("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            response.send(metrics.render(extra: [
                ("evserver_sessions_created_total", "Sessions created.", sessionMetrics.created),
                ("evserver_sessions_saved_total", "Sessions written to the store.", sessionMetrics.saved),
                ("evserver_sessions_touched_total", "Session expiries refreshed.", sessionMetrics.touched),
                ("evserver_sessions_destroyed_total", "Sessions destroyed.", sessionMetrics.destroyed),
                ("evserver_session_hits_total", "Signed session cookies whose session was found in the store.",
                 sessionMetrics.hits),
                ("evserver_session_misses_total", "Signed session cookies whose session was not in the store.",
                 sessionMetrics.misses),
                ("evserver_session_store_errors_total", "Session store failures (answered 503).", sessionMetrics.storeErrors),
                ("evserver_secure_cookie_withheld_total", "Secure cookies not sent over plain HTTP.",
                 sessionMetrics.secureCookieWithheld),
            ]))
        }
    }
}

extension DemoApp {
    /// The routes that never touch a session.
    static let sessionFreePaths: Set<String> = ["/hello", "/healthz", "/readyz", "/metrics"]
}

/// Runs `middleware` for every request except those to `paths` (exact paths).
struct SkippingPaths<Wrapped: Middleware>: Middleware {
    let paths: Set<String>
    let middleware: Wrapped

    init(_ paths: Set<String>, _ middleware: Wrapped) {
        self.paths = paths
        self.middleware = middleware
    }

    func handle(_ request: Request, _ response: Response, next: Next) async throws {
        if paths.contains(request.path) { return try await next() }
        try await middleware.handle(request, response, next: next)
    }
}
