#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CFuzzerDriver
import EvServer
import RedisClient
import RedisSessionStore

// One libFuzzer target over everything the server reads from clients or from Redis before it trusts it: the Cookie
// header parser, percent-decoding, the cookie signature check, JSON and the stored session format. The first byte
// of an input picks the harness (`c` cookie, `p` percent, `s` signer, `j` JSON, `S` session, `r` Redis and proxy
// configuration; any other byte picks by its value mod 6), the rest is the harness's input. Besides "never traps, never leaks" (ASan), each harness
// checks invariants; a broken invariant aborts, so libFuzzer saves the input like any crash.
//
// Built with -sanitize=fuzzer,address -parse-as-library (libFuzzer supplies main); see scripts/fuzz.sh.

/// The program's entry point. SwiftPM links an executable target with `--defsym main=EvServerFuzz_main` (so that
/// tests can link it), and with -parse-as-library nothing defines that symbol; this does, and runs libFuzzer's driver
/// with the command line, exactly as libFuzzer's own main would.
@_cdecl("EvServerFuzz_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzTestOneInput)
}

/// One input. Also exported under libFuzzer's name, for a build that links libFuzzer's own main.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    let payload = Array(input.dropFirst())
    switch Harness(selector: input[0]) {
    case .cookie: fuzzCookieParser(payload)
    case .percent: fuzzPercentDecoding(payload)
    case .signer: fuzzSigner(payload)
    case .json: fuzzJSON(payload)
    case .session: fuzzSession(payload)
    case .configuration: fuzzConfiguration(payload)
    }
    return 0
}

enum Harness: CaseIterable {
    case cookie, percent, signer, json, session, configuration

    init(selector: UInt8) {
        switch selector {
        case UInt8(ascii: "c"): self = .cookie
        case UInt8(ascii: "p"): self = .percent
        case UInt8(ascii: "s"): self = .signer
        case UInt8(ascii: "j"): self = .json
        case UInt8(ascii: "S"): self = .session
        case UInt8(ascii: "r"): self = .configuration
        default: self = Harness.allCases[Int(selector) % Harness.allCases.count]
        }
    }
}

/// Aborts with `message` when `condition` is false (libFuzzer records the input as a crash).
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    guard !condition() else { return }
    let text = Array("invariant failed: \(message())\n".utf8)
    text.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    abort()
}

/// A readable rendering of a string for messages (escapes, so that control characters show).
func show(_ text: String?) -> String {
    guard let text else { return "nil" }
    return "\"" + text.unicodeScalars.map { $0.escaped(asASCII: true) }.joined() + "\""
}

// MARK: - Cookie header

func fuzzCookieParser(_ payload: [UInt8]) {
    let text = String(decoding: payload, as: UTF8.self)
    _ = CookieParser.parse(text)

    // Several Cookie headers: the first occurrence of a name wins across all of them.
    let parts = payload.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false)
    let first = String(decoding: parts[0], as: UTF8.self)
    let second = parts.count > 1 ? String(decoding: parts[1], as: UTF8.self) : ""
    let a = CookieParser.parse(first), b = CookieParser.parse(second)
    let both = CookieParser.parse([first, second])
    check(both == a.merging(b) { earlier, _ in earlier },
          "parse([h1, h2]) is not parse(h1) then parse(h2) for \(show(first)), \(show(second))")
    // The single-cookie lookup (the session middleware's) agrees with the dictionary for every name.
    for (name, value) in both {
        check(CookieParser.value(named: name, in: [first, second]) == value,
              "value(named: \(show(name))) differs from parse()[name] for \(show(first)), \(show(second))")
    }

    // Any value, encoded as the cookie package's serialize does, comes back as it was, among other cookies too.
    let encoded = CookieSigner.encodeURIComponent(text)
    check(CookieParser.parse("k=" + encoded)["k"] == text, "k=encodeURIComponent(v) does not parse to v for \(show(text))")
    let among = CookieParser.parse("a=1; k=\(encoded) ;b=\"2\"")
    check(among["k"] == text && among["a"] == "1" && among["b"] == "2",
          "the value \(show(text)) among other cookies parsed as \(among.mapValues { show($0) })")
}

// MARK: - Percent-decoding

func fuzzPercentDecoding(_ payload: [UInt8]) {
    let text = String(decoding: payload, as: UTF8.self)
    let decoded = percentDecode(text)
    let withPlus = percentDecode(text, plusAsSpace: true)
    let (_, query) = URIParts.split(text)
    _ = URIParts.parseQuery(query)
    _ = URIParts.parseQuery(text)

    check(percentDecode(CookieSigner.encodeURIComponent(text)) == text,
          "percentDecode(encodeURIComponent(s)) != s for \(show(text))")
    if !text.utf8.contains(UInt8(ascii: "%")) {
        check(decoded == text, "text without % changed by decoding: \(show(text)) -> \(show(decoded))")
    }
    if let decoded {
        check(decoded.utf8.count <= text.utf8.count, "decoding grew \(show(text)) into \(show(decoded))")
    }
    if !text.utf8.contains(UInt8(ascii: "+")) {
        check(withPlus == decoded, "plusAsSpace changed a text without + : \(show(text))")
    }
}

// MARK: - Cookie signatures

let currentSigner = try! CookieSigner(secrets: ["fuzz secret, the new one"])
let oldSigner = try! CookieSigner(secrets: ["fuzz secret, the old one"])
let rotatingSigner = try! CookieSigner(secrets: ["fuzz secret, the new one", "fuzz secret, the old one"])

func fuzzSigner(_ payload: [UInt8]) {
    let text = String(decoding: payload, as: UTF8.self)

    // Arbitrary input verifies only when it is exactly a signature made with one of the secrets.
    if let id = rotatingSigner.unsign(text) {
        check(text == currentSigner.sign(id) || text == oldSigner.sign(id), "forged value accepted: \(show(text))")
    }
    if let id = currentSigner.unsign(text) {
        check(text == currentSigner.sign(id), "forged value accepted by one secret: \(show(text))")
    }

    // Any id survives sign -> unsign, under each secret of a rotation, and nothing else verifies.
    let signed = currentSigner.sign(text)
    check(currentSigner.unsign(signed) == text, "unsign(sign(id)) != id for \(show(text))")
    check(rotatingSigner.unsign(signed) == text, "rotation lost the current secret for \(show(text))")
    check(rotatingSigner.unsign(oldSigner.sign(text)) == text, "rotation lost the old secret for \(show(text))")
    check(currentSigner.unsign(oldSigner.sign(text)) == nil, "a retired secret verified for \(show(text))")
    check(currentSigner.unsign(signed + "A") == nil, "trailing bytes after the signature accepted")
    check(currentSigner.unsign(String(signed.dropLast())) == nil, "a truncated signature accepted")

    // The cookie as it travels: Set-Cookie value -> Cookie header -> parser -> unsign.
    let header = "connect.sid=" + currentSigner.cookieValue(for: text)
    check(CookieParser.parse(header)["connect.sid"].flatMap(currentSigner.unsign) == text,
          "the cookie for id \(show(text)) does not come back through the parser")
}

// MARK: - JSON

func fuzzJSON(_ payload: [UInt8]) {
    guard let value = try? JSONValue(parsing: payload) else { return }
    let once = value.serialized()
    let again: JSONValue
    do {
        again = try JSONValue(parsing: once)
    } catch {
        check(false, "serialized JSON does not parse (\(error)): \(show(String(decoding: once, as: UTF8.self)))")
        return
    }
    check(again == value, "parse(serialize(x)) != x for \(show(String(decoding: payload, as: UTF8.self)))")
    check(again.serialized() == once, "serialization is not stable for \(show(String(decoding: once, as: UTF8.self)))")
}

// MARK: - Stored sessions

func fuzzSession(_ payload: [UInt8]) {
    guard let session = try? SessionData(json: payload) else { return }
    let once = session.jsonBytes()
    let again: SessionData
    do {
        again = try SessionData(json: once)
    } catch {
        check(false, "a session's own JSON does not load (\(error)): \(show(String(decoding: once, as: UTF8.self)))")
        return
    }
    check(again == session, "load(save(x)) != x: \(show(String(decoding: payload, as: UTF8.self))) saved as "
          + show(String(decoding: once, as: UTF8.self)))
    check(again.jsonBytes() == once, "saving is not stable: \(show(String(decoding: once, as: UTF8.self)))")

    // What the middleware does with a loaded session's cookie: refresh it and write its Set-Cookie header.
    let cookie = session.cookie
    _ = SetCookie(name: "connect.sid", value: "s%3Aid.sig", path: cookie.path, domain: cookie.domain,
                  expires: cookie.expires, httpOnly: cookie.httpOnly, secure: cookie.secure ?? false,
                  sameSite: cookie.sameSite).headerValue
    var touched = session
    touched.cookie.resetMaxAge(now: Date(timeIntervalSince1970: 1_764_583_200))
    _ = touched.cookie.maxAge(now: Date(timeIntervalSince1970: 1_764_583_200))
    _ = touched.jsonBytes()
}

// MARK: - Configuration (Redis URL, addresses and seed lists, trusted proxies) and cluster slots

func fuzzConfiguration(_ payload: [UInt8]) {
    let text = String(decoding: payload, as: UTF8.self)
    if let configuration = try? RedisConfiguration(url: text) {
        check((0...65535).contains(configuration.port), "port \(configuration.port) accepted from \(show(text))")
        check(configuration.database >= 0, "database \(configuration.database) accepted from \(show(text))")
        let redacted = configuration.redactedURL
        if let password = configuration.password, password.utf8.count >= 6, !configuration.host.contains(password),
           !(configuration.username ?? "").contains(password) {
            check(!redacted.contains(password), "the password shows in \(show(redacted))")
        }
    }
    if let address = try? RedisAddress(parsing: text) {
        check((0...65535).contains(address.port), "port \(address.port) accepted from \(show(text))")
        check((try? RedisAddress(parsing: address.description)) == address,
              "\(show(address.description)) does not parse back to itself (from \(show(text)))")
    }
    if let list = try? RedisAddress.list(parsing: text) {
        check(!list.isEmpty, "an empty seed list accepted from \(show(text))")
    }
    _ = try? TrustedProxies(parsing: text)

    // Cluster slots: always in range, and a key with a non-empty {hash tag} maps where the tag alone does.
    let slot = RedisClusterSlot.slot(forKey: payload)
    check((0..<16384).contains(slot), "slot \(slot) for \(show(text))")
    if let open = payload.firstIndex(of: UInt8(ascii: "{")),
       let close = payload[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
        let tag = payload[(open + 1)..<close]
        check(slot == RedisClusterSlot.slot(forKey: tag), "the hash tag of \(show(text)) is not what decides its slot")
    }
}
