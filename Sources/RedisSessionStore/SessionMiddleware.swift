#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import Logging
import RedisClient
import Synchronization

// MARK: - Configuration

/// The session cookie's attributes (express-session's `cookie` option).
public struct SessionCookieOptions: Sendable, Equatable {
    /// When the cookie gets the `Secure` attribute, and what the stored session's cookie says about it (express
    /// stores `cookie.secure` as given: absent when the option is left out, `false` when it is given as `false`).
    public enum Secure: Sendable, Equatable {
        /// Never, with the option left out (express's default): the stored cookie has no `secure` member.
        case never
        /// Never, given explicitly (express's `secure: false`): the stored cookie says `"secure":false`.
        case off
        /// Always. Over plain HTTP the cookie is then withheld (express's "do not set a secure cookie over HTTP").
        /// The stored cookie says `"secure":true`.
        case always
        /// When the request is HTTPS (express's `'auto'`); behind a proxy this needs `trustProxy`. The stored
        /// cookie says what the request resolved to: `"secure":true` or `"secure":false`.
        case auto
    }

    public var path: String
    public var domain: String?
    public var httpOnly: Bool
    public var secure: Secure
    public var sameSite: SetCookie.SameSite?
    /// Lifetime in milliseconds; nil makes a browser-session cookie (no `Expires`).
    public var maxAge: Int64?

    public init(path: String = "/", domain: String? = nil, httpOnly: Bool = true, secure: Secure = .never,
                sameSite: SetCookie.SameSite? = .lax, maxAge: Int64? = nil) {
        self.path = path
        self.domain = domain
        self.httpOnly = httpOnly
        self.secure = secure
        self.sameSite = sameSite
        self.maxAge = maxAge
    }
}

/// ``SessionMiddleware``'s options, named and defaulted as express-session's (except `resave` and
/// `saveUninitialized`, whose deprecated `true` defaults become `false`, as every express example sets them).
public struct SessionConfiguration: Sendable {
    /// What happens to the stored session when a handler calls ``Session/unset()`` (express's `unset`).
    public enum Unset: Sendable, Equatable {
        /// Leave it in the store.
        case keep
        /// Destroy it when the request ends.
        case destroy
    }

    /// Cookie secrets: the first signs, all verify (so a secret can be rotated). Must not be empty.
    public var secrets: [String]
    /// The cookie name.
    public var name: String
    public var cookie: SessionCookieOptions
    /// Makes a new session id.
    public var genid: @Sendable () -> String
    /// Send the cookie on every response, restarting its lifetime (`rolling`).
    public var rolling: Bool
    /// Save sessions even when unmodified (`resave`).
    public var resave: Bool
    /// Save (and send the cookie for) new sessions even when nothing was stored in them (`saveUninitialized`).
    public var saveUninitialized: Bool
    public var unset: Unset
    /// The proxies whose `X-Forwarded-Proto` tells HTTPS requests (for `secure: .auto` and for withholding secure
    /// cookies); from any other peer the header is ignored.
    public var trustedProxies: TrustedProxies
    /// `true` trusts every peer (``TrustedProxies/all``), `false` none: express's boolean `trust proxy`.
    public var trustProxy: Bool {
        get { trustedProxies.isEnabled }
        set { trustedProxies = newValue ? .all : .none }
    }
    /// A session dies this long after it was created, however often it is used or `rolling` renews it (nil: no
    /// limit). The creation time is stored in the session as ``Session/createdAtKey``.
    public var absoluteTimeout: Duration?
    /// How many sessions one user may have at once (nil: no limit): a sign-in past it ends the user's oldest
    /// sessions (``Session/signIn(user:client:)``). Needs a ``UserSessionStore``.
    public var maxSessionsPerUser: Int?
    public var logger: Logger
    /// The clock, for tests.
    public var now: @Sendable () -> Date

    public init(secrets: [String], name: String = "connect.sid", cookie: SessionCookieOptions = SessionCookieOptions(),
                genid: @escaping @Sendable () -> String = SessionID.generate, rolling: Bool = false,
                resave: Bool = false, saveUninitialized: Bool = false, unset: Unset = .keep, trustProxy: Bool = false,
                absoluteTimeout: Duration? = nil,
                logger: Logger = Logger(label: "evserver.session"), now: @escaping @Sendable () -> Date = { Date() }) {
        self.absoluteTimeout = absoluteTimeout
        self.secrets = secrets
        self.name = name
        self.cookie = cookie
        self.genid = genid
        self.rolling = rolling
        self.resave = resave
        self.saveUninitialized = saveUninitialized
        self.unset = unset
        self.trustedProxies = trustProxy ? .all : .none
        self.logger = logger
        self.now = now
    }
}

// MARK: - Engine

/// What every session of one middleware shares: the store, the options, the signer and the counters. Store calls
/// go through here so that failures are counted, logged and wrapped in one place.
final class SessionEngine: Sendable {
    let store: any SessionStore
    let configuration: SessionConfiguration
    let signer: CookieSigner
    let metrics: SessionMetrics
    /// The store's index of users' sessions, when it keeps one.
    let users: (any UserSessionStore)?
    var logger: Logger { configuration.logger }
    private let lastErrorLog = Mutex<(at: ContinuousClock.Instant, failures: Int)?>(nil)

    init(store: any SessionStore, configuration: SessionConfiguration, metrics: SessionMetrics) throws {
        self.store = store
        self.users = store as? any UserSessionStore
        self.configuration = configuration
        self.signer = try CookieSigner(secrets: configuration.secrets)
        self.metrics = metrics
    }

    /// A new cookie from the options (express's `new Cookie(cookieOptions)` and the `secure: 'auto'` rule).
    func newCookie(now: Date, requestIsSecure: Bool) -> SessionCookie {
        let options = configuration.cookie
        var cookie = SessionCookie(originalMaxAge: nil, expires: nil, httpOnly: options.httpOnly, path: options.path,
                                   domain: options.domain, sameSite: options.sameSite)
        cookie.setMaxAge(options.maxAge, now: now)
        switch options.secure {
        case .never: cookie.secure = nil
        case .off: cookie.secure = false
        case .always: cookie.secure = true
        case .auto: cookie.secure = requestIsSecure
        }
        return cookie
    }

    /// Loads with the version and, in the same round trip where the store can, refreshes the expiry as a touch with
    /// a cookie of the configured options would.
    nonisolated(nonsending) func load(_ id: String, now: Date, requestIsSecure: Bool) async throws -> StoredSession? {
        let touching = newCookie(now: now, requestIsSecure: requestIsSecure)
        let stored = try await perform("get") { try await store.load(id, touchingWith: touching) }
        metrics.recordLoad(found: stored != nil)
        return stored
    }

    nonisolated(nonsending) func commit(_ id: String, _ write: SessionWrite, isNew: Bool) async throws -> SessionCommitResult {
        let result = try await perform("set") { try await store.commit(id, write) }
        if case .saved = result {
            metrics.recordSaved()
            if isNew { metrics.recordCreated() }
        }
        return result
    }

    nonisolated(nonsending) func touch(_ id: String, _ data: SessionData) async throws {
        try await perform("touch") { try await store.touch(id, data) }
        metrics.recordTouched()
    }

    nonisolated(nonsending) func destroy(_ id: String) async throws {
        try await perform("destroy") { try await store.destroy(id) }
        metrics.recordDestroyed()
    }

    /// Destroys a session; a signed-in one (`owner`) through the user index, so its entry goes too.
    /// - Returns: whether the session existed (always true without an owner: a plain destroy does not say).
    @discardableResult
    nonisolated(nonsending) func destroy(_ id: String, owner: String?) async throws -> Bool {
        guard let owner, let users else {
            try await destroy(id)
            return true
        }
        let existed = try await perform("destroy") { try await users.destroy(id, ofUser: owner) }
        metrics.recordDestroyed()
        return existed
    }

    nonisolated(nonsending) func perform<T>(
        _ operation: String, _ body: nonisolated(nonsending) () async throws -> T
    ) async throws -> T {
        do {
            return try await body()
        } catch let error as SessionIncrementError {
            throw error   // the application's data, not a store failure
        } catch {
            let failures = metrics.recordStoreError()
            // The error, never the session id: ids are credentials. During an outage every request fails alike:
            // one error line a second (with the count since the last), the rest at debug level; /metrics counts all.
            let now = ContinuousClock.now
            let loud = lastErrorLog.withLock { last -> Bool in
                guard last.map({ now - $0.at >= .seconds(1) }) ?? true else { return false }
                last = (now, failures)
                return true
            }
            logger.log(level: loud ? .error : .debug, "session store \(operation) failed",
                       metadata: ["error": "\(error)", "failures": "\(failures)"])
            throw SessionStoreError(operation: operation, underlying: error)
        }
    }
}

// MARK: - Middleware

/// Cookie sessions as express-session 1.17/1.18 keeps them, wire-compatible with it: a signed `connect.sid`
/// cookie holding the id, the data in a ``SessionStore`` as express's JSON.
///
/// Per request: a valid signed cookie loads the session from the store (one `get`); no cookie, a bad signature or
/// an id the store does not know starts a new session without any store call. After the handler returns, the
/// session is saved, touched or left alone, and the cookie set, by express's rules:
/// - save when modified, or when unmodified but `resave` is on, or when new and `saveUninitialized` is on;
/// - otherwise touch (refresh the expiry) when the request carried this session's cookie;
/// - set the cookie for a new session when it is saved (modified, or `saveUninitialized`), and for an existing one
///   when `rolling` is on or it has an expiry and was modified. The cookie carries `Expires`, never `Max-Age`.
///
/// The save or touch completes before `handle` returns, so the response (sent after the chain returns) never
/// races its own session write. A store failure is logged, counted and answered with 503 and `Retry-After: 1`.
public struct SessionMiddleware: Middleware {
    public let configuration: SessionConfiguration
    public let store: any SessionStore
    /// Counters for this middleware.
    public let metrics: SessionMetrics
    let engine: SessionEngine

    /// - Throws: ``CookieSignerError`` when `configuration.secrets` is empty or holds an empty secret.
    public init(store: any SessionStore, configuration: SessionConfiguration) throws {
        let metrics = SessionMetrics()
        self.engine = try SessionEngine(store: store, configuration: configuration, metrics: metrics)
        self.configuration = configuration
        self.store = store
        self.metrics = metrics
        // Say at start whether Redis answers, rather than at the first request.
        (store as? RedisSessionStore)?.connectInBackground()
    }

    /// The express example's shape: `session({ store, secret, resave: false, saveUninitialized: false })`.
    /// - Throws: ``CookieSignerError`` when `secrets` is empty or holds an empty secret.
    public init(store: any SessionStore, secrets: [String], resave: Bool = false, saveUninitialized: Bool = false,
                name: String = "connect.sid", cookie: SessionCookieOptions = SessionCookieOptions(),
                rolling: Bool = false, unset: SessionConfiguration.Unset = .keep, trustProxy: Bool = false) throws {
        try self.init(store: store, configuration: SessionConfiguration(
            secrets: secrets, name: name, cookie: cookie, rolling: rolling, resave: resave,
            saveUninitialized: saveUninitialized, unset: unset, trustProxy: trustProxy))
    }

    public func handle(_ request: Request, _ response: Response, next: Next) async throws {
        // Self-awareness, as express: a second session middleware leaves the first one's session alone.
        if request.sessionIfPresent != nil { return try await next() }
        // One store timeout's worth of Redis time for the whole request (load, save, and the handler's own session
        // calls), so a slow load leaves less time for the save and the request waits on Redis one timeout at most.
        guard let limit = store.requestTimeBudget else { return try await handleSession(request, response, next: next) }
        try await RedisTimeBudget.$current.withValue(RedisTimeBudget(limit: limit)) {
            try await handleSession(request, response, next: next)
        }
    }

    private func handleSession(_ request: Request, _ response: Response, next: Next) async throws {
        let now = configuration.now()
        let requestIsSecure = isSecure(request)

        // express skips requests outside the cookie's path: their browser would not send the cookie.
        guard isInCookiePath(request.uri) else {
            request.storage[SessionStorageKey.self] = Session(newWith: engine, requestIsSecure: requestIsSecure,
                                                              now: now, detached: true)
            return try await next()
        }

        let cookieId = sessionId(from: request)
        let session: Session
        if let cookieId {
            let stored: StoredSession?
            do {
                stored = try await engine.load(cookieId, now: now, requestIsSecure: requestIsSecure)
            } catch {
                throw SessionMiddleware.unavailable
            }
            if let stored, Session.isPastAbsoluteTimeout(stored.data, configuration: configuration) {
                // Past its absolute lifetime: gone for good, whatever its TTL says.
                do {
                    try await engine.destroy(cookieId, owner: SessionOwner(stored.data.values)?.name)
                } catch {
                    throw SessionMiddleware.unavailable
                }
                session = Session(newWith: engine, requestIsSecure: requestIsSecure, now: now)
            } else if let stored {
                session = Session(id: cookieId, loaded: stored, engine: engine, requestIsSecure: requestIsSecure)
            } else {
                session = Session(newWith: engine, requestIsSecure: requestIsSecure, now: now)
            }
        } else {
            session = Session(newWith: engine, requestIsSecure: requestIsSecure, now: now)
        }
        request.storage[SessionStorageKey.self] = session

        // As in express, the session is committed even when the handler fails (its error page ends the response
        // too); a store failure inside the handler is answered with 503 at once.
        var handlerError: (any Error)?
        do {
            try await next()
        } catch is SessionStoreError {
            throw SessionMiddleware.unavailable
        } catch let error as SessionIncrementError {
            handlerError = HTTPError(.conflict, message: error.description)
        } catch let error as SessionUserError {
            handlerError = HTTPError(.badRequest, message: error.description)
        } catch {
            handlerError = error
        }

        let setCookie: String?
        do {
            setCookie = try await commit(session, cookieId: cookieId)
        } catch {
            if let handlerError { throw handlerError }   // already logged and counted; the handler's error wins
            throw SessionMiddleware.unavailable
        }

        guard let handlerError else {
            if let setCookie { response.headers.add("Set-Cookie", setCookie) }
            return
        }
        // The server renders an HTTPError from its own headers, so the cookie must travel with it.
        if var httpError = handlerError as? HTTPError, let setCookie {
            httpError.headers.add("Set-Cookie", setCookie)
            throw httpError
        }
        throw handlerError
    }

    /// What a store failure looks like to the client: retry in a second; nothing was half-written.
    static var unavailable: HTTPError {
        HTTPError(.serviceUnavailable, message: "session store unavailable", headers: ["Retry-After": "1"])
    }

    // MARK: - End of request (express's res.end wrapper and onHeaders listener)

    /// Saves, touches or destroys as express decides, then returns the `Set-Cookie` value to send, if any.
    nonisolated(nonsending) private func commit(_ session: Session, cookieId: String?) async throws -> String? {
        guard !session.isDetached else { return nil }
        switch session.state {
        case .unset:
            // shouldDestroy: `req.sessionID && unsetDestroy && req.session == null`.
            if configuration.unset == .destroy, let id = session.existingId { try await engine.destroy(id) }
            return nil
        case .destroyed:
            // destroy() already removed it from the store (express would send a second destroy with
            // `unset: 'destroy'`; it changes nothing). No session, so no cookie.
            return nil
        case .active:
            break
        }

        // express touches before deciding; the comparison ignores the cookie, so this never counts as a change.
        session.cookie.resetMaxAge(now: configuration.now())
        // A signed-in session's index entry, when it is due (at most once per interval): a change the save below
        // writes.
        if engine.users != nil, session.mayBeSignedIn { try await session.refreshIndexIfDue() }

        if shouldSave(session, cookieId: cookieId) {
            try await session.save()
            // Destroyed by another request meanwhile: it stays destroyed, and this response sets no cookie.
            if session.state != .active { return nil }
        } else if shouldTouch(session, cookieId: cookieId) {
            if session.expiryRefreshedAtLoad(configuredMaxAge: configuration.cookie.maxAge) {
                metrics.recordTouched()   // the load (GETEX) already did it: no second round trip
            } else {
                try await engine.touch(session.id, session.storedData)
            }
        }

        guard shouldSetCookie(session, cookieId: cookieId) else { return nil }
        if session.cookie.secure == true && !session.requestIsSecure {
            // express: "only send secure cookies via https". The session is saved; the browser just never gets it.
            // A misconfiguration repeats on every request: warn once, then count (metrics) and debug-log.
            let level: Logger.Level = metrics.recordSecureCookieWithheld() == 1 ? .warning : .debug
            configuration.logger.log(level: level, "secure session cookie withheld on a plain HTTP request",
                                     metadata: ["hint": "serve over HTTPS, or set trustProxy behind a TLS proxy"])
            return nil
        }
        let cookie = session.cookie
        return SetCookie(name: configuration.name, value: engine.signer.cookieValue(for: session.id),
                         path: cookie.path, domain: cookie.domain, expires: cookie.expires, maxAge: nil,
                         httpOnly: cookie.httpOnly, secure: cookie.secure ?? false, sameSite: cookie.sameSite)
            .headerValue
    }

    /// express: `!saveUninitialized && !savedHash && cookieId !== req.sessionID ? isModified : !isSaved`.
    func shouldSave(_ session: Session, cookieId: String?) -> Bool {
        if !configuration.saveUninitialized && session.savedValues == nil && !session.hasId(cookieId) {
            return session.isModified
        }
        return !session.isSaved
    }

    /// express: `cookieId === req.sessionID && !shouldSave(req)` (asked only when not saving).
    func shouldTouch(_ session: Session, cookieId: String?) -> Bool {
        session.hasId(cookieId)
    }

    /// express: `cookieId !== req.sessionID ? saveUninitialized || isModified
    ///                                      : rolling || cookie.expires != null && isModified`.
    func shouldSetCookie(_ session: Session, cookieId: String?) -> Bool {
        if !session.hasId(cookieId) {
            return configuration.saveUninitialized || session.isModified
        }
        return configuration.rolling || (session.cookie.expires != nil && session.isModified)
    }

    // MARK: - Request inspection

    /// The id from a validly signed cookie, else nil (missing, unsigned, tampered or signed with an unknown secret:
    /// all mean "new session", never an error).
    private func sessionId(from request: Request) -> String? {
        guard let raw = request.cookie(named: configuration.name), !raw.isEmpty else { return nil }
        guard raw.utf8.starts(with: "s:".utf8) else {
            configuration.logger.debug("session cookie unsigned")
            return nil
        }
        guard let id = engine.signer.unsign(raw), !id.isEmpty else {
            configuration.logger.debug("session cookie signature invalid")
            return nil
        }
        return id
    }

    /// express's `issecure`: there is no TLS in this server, so a request is HTTPS only per a trusted proxy's
    /// `X-Forwarded-Proto` (its first value, case-insensitively).
    private func isSecure(_ request: Request) -> Bool {
        // (The proxy check first: with no trusted proxy, the default, that is all there is to do.)
        guard configuration.trustedProxies.isEnabled, let header = request.headers["X-Forwarded-Proto"],
              configuration.trustedProxies.trusts(request.remoteAddress) else { return false }
        let first = header.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return first.trimmingSpaces().lowercased() == "https"
    }

    /// The undecoded path of a request target (`parseUrl.original(req).pathname`), for the cookie-path check.
    /// Whether the request target's path starts with the cookie's path. With the default path `/`, an origin-form
    /// target (`/...`, in practice every request) always does, and needs no parsing.
    private func isInCookiePath(_ uri: String) -> Bool {
        let path = configuration.cookie.path
        if uri.utf8.first == UInt8(ascii: "/") && path.utf8.count == 1 && path.utf8.first == UInt8(ascii: "/") {
            return true
        }
        return SessionMiddleware.rawPath(of: uri).utf8.starts(with: path.utf8)
    }

    static func rawPath(of uri: String) -> Substring {
        // Bytes when the target is ASCII (in practice always): the same answer as the Character walk below, which
        // costs several times more.
        let bytes = uri.utf8.span
        var ascii = true
        for index in bytes.indices where bytes[index] >= 0x80 {
            ascii = false
            break
        }
        if ascii {
            let utf8 = uri.utf8
            var start = utf8.startIndex
            if utf8.first != UInt8(ascii: "/"), let colon = utf8.firstIndex(of: UInt8(ascii: ":")),
               utf8[colon...].starts(with: "://".utf8) {
                guard let slash = utf8[utf8.index(colon, offsetBy: 3)...].firstIndex(of: UInt8(ascii: "/")) else {
                    return "/"
                }
                start = slash
            }
            let end = utf8[start...].firstIndex { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? utf8.endIndex
            return start == end ? "/" : uri[start..<end]
        }
        var target = Substring(uri)
        if !target.hasPrefix("/"), let colon = target.firstIndex(of: ":"),
           target[colon...].hasPrefix("://") {
            // absolute-form (`http://host/path`): the path starts at the first slash after the authority
            let afterAuthority = target[target.index(colon, offsetBy: 3)...]
            target = afterAuthority.firstIndex(of: "/").map { afterAuthority[$0...] } ?? "/"
        }
        if let end = target.firstIndex(where: { $0 == "?" || $0 == "#" }) { target = target[..<end] }
        return target.isEmpty ? "/" : target
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\t" { result.removeLast() }
        return result
    }
}
