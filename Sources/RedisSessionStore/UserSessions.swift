#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Crypto
import EvServer

// Sessions per user: which sessions belong to whom, so a user (or an administrator) can see them and end them.
//
// The owner travels inside the session's JSON as one top-level member, `evserverUser` (express-session instances
// carry unknown top-level members along untouched, as they do `evserverCreatedAt`):
//   "evserverUser":{"name":"alice","since":<ms>,"indexedUntil":<ms>,"client":{"agent":"Chrome","ip":"10.0.0.7"}}
// and each user has an index: the ids of their sessions, each with an expiry bound (Redis: a sorted set, one key
// per user, scored by the bound). The rules that keep the index right without keyspace notifications, KEYS or
// CONFIG, and without a command on two keys (on a Redis Cluster the index and a session live on different slots):
//
// - An entry's bound is never below its session's real expiry. A session's expiry slides on every request (the
//   load's GETEX), so an entry is written with bound = now + 2 x lifetime + interval, and rewritten when a request
//   finds fewer than 2 x lifetime left (once per `interval`, at most a minute, per session): any request of a live
//   session happens before its expiry, which is below the bound, and moves the expiry to at most a lifetime past
//   that, still below the bound even when that request's own rewrite of the entry fails.
// - Listing reads each indexed session (one GET and one PTTL per entry, sent together) and removes the entries of
//   sessions that are gone, however they went (expired, destroyed by Node or `evserver sessions destroy`); every
//   write of an index also drops the entries whose bound has passed, and moves the index key's own expiry to its
//   largest bound, so an index whose sessions are all gone disappears by itself.
// - A session is written before its index entry (sign-in, regenerate): until the response that carries its cookie
//   goes out nobody can use it, so a crash between the two writes leaves at most an unreachable session, never a
//   usable one the index misses. An indexed id whose key is missing is therefore gone for good, and listing may
//   remove it at once.
// - Ending sessions deletes each session before its index entry, and then reads the index again for entries that
//   appeared meanwhile (a regeneration of one of them), so a session that was live when the call began is never
//   left alive.

/// A store that keeps an index of each user's sessions (both built-in stores do). ``Session/signIn(user:client:)``
/// needs one.
///
/// The contract:
/// - ``index(_:user:until:)`` records a session as the user's, with a bound (JavaScript milliseconds) past which the
///   entry may be dropped; the caller keeps the bound at or above the session's real expiry.
/// - ``sessions(ofUser:)`` returns the user's sessions that exist when it reads them, and forgets the others.
/// - ``destroySessions(ofUser:except:)`` deletes every session of the user (but `except`) that exists when it
///   runs, then their entries.
/// - ``destroy(_:ofUser:)`` deletes one session, then its entry, and says whether the session was there.
public protocol UserSessionStore: SessionStore {
    /// Adds `id` to `user`'s index (or moves its bound), dropping entries whose bound has passed.
    /// - Parameter bound: JavaScript milliseconds; the entry may be dropped after it.
    func index(_ id: String, user: String, until bound: Int64) async throws

    /// The sessions of `user` that exist, oldest sign-in first; entries of sessions that are gone are removed.
    func sessions(ofUser user: String) async throws -> [UserSession]

    /// Deletes every session of `user` except `except`, then their index entries.
    /// - Returns: how many sessions were deleted.
    @discardableResult
    func destroySessions(ofUser user: String, except: String?) async throws -> Int

    /// Deletes the session `id`, then its entry in `user`'s index.
    /// - Returns: whether the session existed.
    @discardableResult
    nonisolated(nonsending) func destroy(_ id: String, ofUser user: String) async throws -> Bool

    /// How long, in milliseconds, the store keeps `session` from `now` when it is written or touched now (its
    /// cookie's remaining life, or the default TTL for a browser-session cookie).
    func lifetime(of session: SessionData, now: Date) -> Int64
}

/// One of a user's sessions, as ``UserSessionStore/sessions(ofUser:)`` lists it.
public struct UserSession: Sendable, Equatable {
    /// The session id. A credential: show it to its own user only (or a hash of it).
    public var id: String
    public var user: String
    /// When the user signed in with it (JavaScript milliseconds precision).
    public var signedInAt: Date?
    /// The last request that refreshed its expiry: the expiry less the session's lifetime (an estimate when the
    /// lifetime changed since; without rolling expiry, the last write).
    public var lastActiveAt: Date?
    /// When the store drops it unless it is used again; nil for a session without expiry.
    public var expiresAt: Date?
    /// The client, when the application asked for it at sign-in.
    public var client: SessionClient?

    public init(id: String, user: String, signedInAt: Date?, lastActiveAt: Date?, expiresAt: Date?,
                client: SessionClient?) {
        self.id = id
        self.user = user
        self.signedInAt = signedInAt
        self.lastActiveAt = lastActiveAt
        self.expiresAt = expiresAt
        self.client = client
    }

    /// A name for the session that is not a credential: the first 16 hex digits of the SHA-256 of its id (what a
    /// page shows, so a script injected into one device cannot read the others' ids).
    public var handle: String { String(sha256Hex(id).prefix(16)) }

    /// The listing as JSON: `{"id":...,"handle":...,"user":...,"signedInAt":ms,"lastActiveAt":ms,"expiresAt":ms,
    /// "client":{...}}` (times in JavaScript milliseconds, null when unknown); `includingId: false` leaves the id out.
    public func jsonValue(includingId: Bool = true) -> JSONValue {
        var object = JSONObject()
        if includingId { object["id"] = .string(id) }
        object["handle"] = .string(handle)
        object["user"] = .string(user)
        object["signedInAt"] = signedInAt.map { .number(String($0.javaScriptMilliseconds)) } ?? .null
        object["lastActiveAt"] = lastActiveAt.map { .number(String($0.javaScriptMilliseconds)) } ?? .null
        object["expiresAt"] = expiresAt.map { .number(String($0.javaScriptMilliseconds)) } ?? .null
        object["client"] = client?.jsonValue ?? .null
        return .object(object)
    }
}

/// A short description of a session's client, stored only when the application asks for it at sign-in: the user
/// agent's family ("Chrome", "Firefox", "curl"...), never the whole header, and the address as seen through the
/// trusted proxies.
public struct SessionClient: Sendable, Equatable {
    public var agent: String?
    public var address: String?

    public init(agent: String?, address: String?) {
        self.agent = agent.map { Self.clipped($0) }
        self.address = address.map { Self.clipped($0) }
    }

    /// The client of `request`: the `User-Agent`'s family and the address `proxies` let through (express's
    /// `req.ip`).
    public init(request: Request, trusting proxies: TrustedProxies) {
        self.init(agent: request.headers["User-Agent"].map(Self.family(ofUserAgent:)),
                  address: request.clientAddress(trusting: proxies))
    }

    /// The browser or tool a `User-Agent` names, from its best-known tokens; "other" when none is known.
    public static func family(ofUserAgent agent: String) -> String {
        // Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari", and so on.
        let known: [(token: String, family: String)] = [
            ("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("HeadlessChrome/", "Chrome (headless)"),
            ("Chrome/", "Chrome"), ("Chromium/", "Chromium"), ("Safari/", "Safari"), ("curl/", "curl"),
            ("Wget/", "Wget"), ("python-requests/", "python-requests"), ("okhttp/", "okhttp"), ("node", "Node"),
        ]
        for (token, family) in known where agent.contains(token) { return family }
        return "other"
    }

    var jsonValue: JSONValue {
        var object = JSONObject()
        if let agent { object["agent"] = .string(agent) }
        if let address { object["ip"] = .string(address) }
        return .object(object)
    }

    init?(json: JSONValue?) {
        guard case .object(let object)? = json else { return nil }
        self.init(agent: object["agent"]?.stringValue, address: object["ip"]?.stringValue)
    }

    /// At most 64 characters: what is stored is a description, not an echo of whatever a client sends.
    private static func clipped(_ text: String) -> String {
        text.count <= 64 ? text : String(text.prefix(64))
    }
}

/// A sign-in that cannot be done: a user name that cannot own sessions, or a store without a user index. Out of a
/// handler, ``SessionMiddleware`` answers it with 400 and the description (it never contains the name).
public struct SessionUserError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String

    /// The store keeps no user index (it is not a ``UserSessionStore``).
    public static let unsupportedStore = SessionUserError(
        description: "the session store keeps no index of users' sessions (it is not a UserSessionStore)")

    /// Checks a user name: 1 to 256 bytes of UTF-8, no control characters.
    public static func validate(_ user: String) throws(SessionUserError) {
        guard !user.isEmpty else { throw SessionUserError(description: "invalid user name: empty") }
        guard user.utf8.count <= 256 else {
            throw SessionUserError(description: "invalid user name: longer than 256 bytes")
        }
        guard !user.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw SessionUserError(description: "invalid user name: contains a control character")
        }
    }
}

/// The owner member of a session's JSON (see the file comment).
struct SessionOwner: Equatable {
    static let key = "evserverUser"

    var name: String
    var since: Int64?
    var indexedUntil: Int64?
    var client: SessionClient?

    init(name: String, since: Int64?, indexedUntil: Int64?, client: SessionClient?) {
        self.name = name
        self.since = since
        self.indexedUntil = indexedUntil
        self.client = client
    }

    /// The owner in `values`, or nil when the member is absent or malformed.
    init?(_ values: JSONObject) {
        guard case .object(let object)? = values[Self.key], let name = object["name"]?.stringValue,
              (try? SessionUserError.validate(name)) != nil else { return nil }
        self.name = name
        since = object["since"].flatMap(Self.milliseconds)
        indexedUntil = object["indexedUntil"].flatMap(Self.milliseconds)
        client = SessionClient(json: object["client"])
    }

    var jsonValue: JSONValue {
        var object = JSONObject()
        object["name"] = .string(name)
        if let since { object["since"] = .number(String(since)) }
        if let indexedUntil { object["indexedUntil"] = .number(String(indexedUntil)) }
        if let client { object["client"] = client.jsonValue }
        return .object(object)
    }

    private static func milliseconds(_ value: JSONValue) -> Int64? {
        guard case .number(let text) = value else { return nil }
        return Int64(text) ?? value.doubleValue.flatMap { $0.isFinite ? Int64(exactly: $0.rounded(.down)) : nil }
    }
}

/// When an index entry is written and what bound it gets (see the file comment).
enum UserIndexTiming {
    /// How often, at most, a session's entry is rewritten: a tenth of its lifetime, at most a minute.
    static func interval(lifetime: Int64) -> Int64 {
        min(60_000, max(1, lifetime / 10))
    }

    /// The bound an entry written `now` gets: two lifetimes and the interval ahead.
    static func bound(now: Int64, lifetime: Int64) -> Int64 {
        now + 2 * lifetime + interval(lifetime: lifetime)
    }

    /// Whether an entry written with `bound` must be rewritten `now`: less than two lifetimes left.
    static func isDue(bound: Int64?, now: Int64, lifetime: Int64) -> Bool {
        guard let bound else { return true }
        return bound - now < 2 * lifetime
    }
}

/// The SHA-256 of `text`'s UTF-8, as 64 lowercase hex digits.
func sha256Hex(_ text: String) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(64)
    for byte in SHA256.hash(data: Array(text.utf8)) {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}
