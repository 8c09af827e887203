import EvServer
import Testing
@testable import RedisSessionStore

/// `SessionData(json:)` reads the cookie member by member while parsing; these pin that it reads exactly what
/// parsing the whole value and then taking `cookie` out of it would (JSON.parse's rules: last value wins).
@Suite struct SessionDataDecodingTests {
    @Test func aRepeatedCookieStartsOver() throws {
        let data = try SessionData(json: #"{"cookie":{"path":"/a","secure":true},"x":1,"cookie":{"httpOnly":false}}"#)
        #expect(data.cookie == SessionCookie(originalMaxAge: nil, expires: nil, secure: nil, httpOnly: false,
                                             path: "/", sameSite: nil))
        #expect(data.values.keys == ["x"])
    }

    @Test func aRepeatedCookieFieldReadsAsItsLastValue() throws {
        let data = try SessionData(json: #"{"cookie":{"path":"/a","path":7,"originalMaxAge":5,"originalMaxAge":"x","sameSite":"lax","sameSite":"no","httpOnly":false,"httpOnly":1,"expires":"2026-12-01T10:00:00.000Z","expires":null}}"#)
        #expect(data.cookie == SessionCookie(originalMaxAge: nil, expires: nil, sameSite: nil))
    }

    @Test(arguments: [("604800000", 604_800_000 as Int64?), ("1.9", 1), ("-1.9", -1), ("1e3", 1000), ("-0", 0),
                      ("8999999999999999", 8_999_999_999_999_999), ("9000000000000000", nil), ("-9e15", nil),
                      ("99999999999999999999", nil), ("1e400", nil), ("null", nil), ("\"5\"", nil)])
    func originalMaxAgeReadsAsJavaScriptTruncatesIt(literal: String, milliseconds: Int64?) throws {
        let data = try SessionData(json: #"{"cookie":{"originalMaxAge":"# + literal + "}}")
        #expect(data.cookie.originalMaxAge == milliseconds)
    }

    @Test func aLaterCookieThatIsNotAnObjectFails() {
        #expect(throws: SessionDecodingError.self) { try SessionData(json: #"{"cookie":{},"cookie":null}"#) }
    }

    @Test func escapedKeysAreTheirDecodedNames() throws {
        let data = try SessionData(json: #"{"c\u006fokie":{"p\u0061th":"/b","domain":"d\u00e9.example"},"\u00e9":1}"#)
        #expect(data.cookie.path == "/b")
        #expect(data.cookie.domain == "dé.example")
        #expect(data.values.keys == ["é"])
    }

    @Test func valuesKeepJavaScriptOrderAroundTheCookie() throws {
        let data = try SessionData(json: #"{"b":1,"cookie":{},"7":2,"a":3,"b":4,"0":5}"#)
        #expect(data.values.keys == ["0", "7", "b", "a"])
        #expect(data.values["b"] == 4)
    }

    @Test(arguments: [#"{"cookie":{"path":"/"},"x":[1,}"#, #"{"cookie":{"path":"/\#u{1}"}}"#, #"{"cookie":{"a":1 "b":2}}"#,
                      #"{"cookie":{}} x"#, #"[{"cookie":{}},"#, #"{"cookie":{"expires":"\ud800\x"}}"#])
    func invalidJSONFailsWhereTheParserFails(text: String) {
        var parseError: JSONParseError?
        do { _ = try JSONValue(parsing: text) } catch { parseError = error }
        #expect(parseError != nil)
        do {
            _ = try SessionData(json: text)
            Issue.record("expected an error")
        } catch {
            #expect("\(error)" == "session value is not JSON (\(parseError!))")
        }
    }

    @Test func invalidUTF8InACookieKeyFails() {
        var bytes = Array(#"{"cookie":{"pa"#.utf8)
        bytes += [0xFF]
        bytes += Array(#"th":"/"}}"#.utf8)
        #expect(throws: SessionDecodingError.self) { try SessionData(json: bytes) }
    }

    @Test func tooDeepInsideTheCookieFails() {
        let text = #"{"cookie":{"x":"# + String(repeating: "[", count: 63) + String(repeating: "]", count: 63) + "}}"
        #expect(throws: SessionDecodingError.self) { try SessionData(json: text) }
        let fits = #"{"cookie":{"x":"# + String(repeating: "[", count: 62) + String(repeating: "]", count: 62) + "}}"
        #expect((try? SessionData(json: fits)) != nil)
    }
}
