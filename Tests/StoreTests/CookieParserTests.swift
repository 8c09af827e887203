#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Testing
@testable import EvServer

// CookieParser against the rules of the `cookie` npm package 0.5 (the cases of its test/parse.js), SetCookie against
// express's exact output, Date.httpDate against known dates, and the URI helpers.

@Suite("CookieParser")
struct CookieParserTests {
    @Test func simplePairs() {
        #expect(CookieParser.parse("foo=bar") == ["foo": "bar"])
        #expect(CookieParser.parse("foo=123") == ["foo": "123"])
        #expect(CookieParser.parse("a=1; b=2;c=3") == ["a": "1", "b": "2", "c": "3"])
    }

    @Test func spacesAndTabsAroundNamesAndValuesAreTrimmed() {
        #expect(CookieParser.parse("FOO    = bar;   baz  =   raz") == ["FOO": "bar", "baz": "raz"])
        #expect(CookieParser.parse("\ta\t=\t1\t;\tb=2 ") == ["a": "1", "b": "2"])
        #expect(CookieParser.parse("a=in side") == ["a": "in side"])   // inner spaces stay
    }

    @Test func onePairOfSurroundingQuotesIsRemoved() {
        #expect(CookieParser.parse(#"foo="bar=123456789&name=Magic+Mouse""#)
            == ["foo": "bar=123456789&name=Magic+Mouse"])
        #expect(CookieParser.parse(#"a="""#) == ["a": ""])
        #expect(CookieParser.parse(#"a=""x"""#) == ["a": "\"x\""])
        #expect(CookieParser.parse(#"a=""#) == ["a": "\""])
        #expect(CookieParser.parse(#"a="x"#) == ["a": "\"x"])   // unbalanced: kept as sent
        #expect(CookieParser.parse(#"a= "q" "#) == ["a": "q"])  // trimmed first, then unquoted
    }

    @Test func valuesArePercentDecoded() {
        #expect(CookieParser.parse("email=%20%22%2c%3b%2f") == ["email": " \",;/"])
        #expect(CookieParser.parse("sid=s%3Aabc.def") == ["sid": "s:abc.def"])
        #expect(CookieParser.parse("check=%E2%9C%93") == ["check": "✓"])
        #expect(CookieParser.parse("plus=1+2") == ["plus": "1+2"])   // decodeURIComponent leaves '+'
    }

    @Test func valueThatFailsToDecodeIsKeptRaw() {
        #expect(CookieParser.parse("foo=%1;bar=bar") == ["foo": "%1", "bar": "bar"])
        #expect(CookieParser.parse("a=%zz") == ["a": "%zz"])
        #expect(CookieParser.parse("a=%ff") == ["a": "%ff"])      // decodes to a byte that is not UTF-8
        #expect(CookieParser.parse("a=100%") == ["a": "100%"])
    }

    @Test func firstOccurrenceWins() {
        #expect(CookieParser.parse("foo=%1;bar=bar;foo=boo") == ["foo": "%1", "bar": "bar"])
        #expect(CookieParser.parse("foo=false;bar=bar;foo=true") == ["foo": "false", "bar": "bar"])
        #expect(CookieParser.parse("foo=;bar=bar;foo=boo") == ["foo": "", "bar": "bar"])
        #expect(CookieParser.parse(["a=1", "a=2; b=3"]) == ["a": "1", "b": "3"])   // across headers too
    }

    @Test func pairsWithoutEqualsAreSkipped() {
        #expect(CookieParser.parse("foo=bar;fizz  ;  buzz") == ["foo": "bar"])
        #expect(CookieParser.parse("  fizz; foo=  bar") == ["foo": "bar"])
        #expect(CookieParser.parse("a; b; c=1; d") == ["c": "1"])
        #expect(CookieParser.parse("") == [:])
        #expect(CookieParser.parse(";;;") == [:])
        #expect(CookieParser.parse("novalue") == [:])
    }

    @Test func oddButLegalShapes() {
        #expect(CookieParser.parse("a=b=c") == ["a": "b=c"])
        #expect(CookieParser.parse("=abc") == ["": "abc"])        // as the package does
        #expect(CookieParser.parse("ü=ö; 名=値") == ["ü": "ö", "名": "値"])
        #expect(CookieParser.parse("a=1;") == ["a": "1"])
    }

    @Test func anyInputParsesWithoutTrapping() {
        var random = SplitMix64(seed: 0xC00C1E)
        let alphabet: [[UInt8]] = [[59], [61], [34], [37], [32], [9], [97], [90], [48], [70], [0], [0xC3, 0xA9],
                                   [0xFF], [0xE2, 0x9C], [37, 50, 70], [37, 70, 70]]
        for round in 0..<20_000 {
            var bytes: [UInt8] = []
            for _ in 0..<random.next(below: 48) {
                bytes += round % 4 == 0 ? [UInt8(truncatingIfNeeded: random.next())]
                    : alphabet[random.next(below: alphabet.count)]
            }
            let header = String(decoding: bytes, as: UTF8.self)
            let cookies = CookieParser.parse([header, header])
            for name in cookies.keys {
                // A name is the trimmed text before the first '=' of its pair.
                #expect(!name.contains(";") && !name.contains("="), "name \(name.debugDescription)")
                #expect(name.first != " " && name.last != " " && name.first != "\t" && name.last != "\t")
            }
        }
    }

    @Test func valueNamedAgreesWithTheParsedDictionary() {
        // The single-cookie lookup must give what parse(...)[name] gives, for every name in every header list,
        // and nil for a name that is not there; random headers from the same alphabet as above.
        var random = SplitMix64(seed: 0x5E55_1011)
        let alphabet: [[UInt8]] = [[59], [61], [34], [37], [32], [9], [97], [98], [48], [70], [0xC3, 0xA9],
                                   [37, 50, 70], [37, 70, 70], [37, 51, 65]]
        for _ in 0..<5_000 {
            var headers: [String] = []
            for _ in 0..<(1 + random.next(below: 2)) {
                var bytes: [UInt8] = []
                for _ in 0..<random.next(below: 40) { bytes += alphabet[random.next(below: alphabet.count)] }
                headers.append(String(decoding: bytes, as: UTF8.self))
            }
            let parsed = CookieParser.parse(headers)
            for (name, value) in parsed {
                #expect(CookieParser.value(named: name, in: headers) == value, "\(name.debugDescription) in \(headers)")
            }
            #expect(CookieParser.value(named: "absent-name", in: headers) == nil)
        }
        #expect(CookieParser.value(named: "connect.sid", in: ["a=1; connect.sid=s%3Aid.sig", "connect.sid=later"])
                == "s:id.sig")
    }

    @Test func requestCookieNamedMatchesCookies() {
        let request = Request(method: .get, uri: "/", headers: ["Cookie": "a=1; b=%C3%A9", "cookie": "a=2; c=\"3\""])
        #expect(request.cookie(named: "a") == "1")
        #expect(request.cookie(named: "b") == "é")
        #expect(request.cookie(named: "c") == "3")
        #expect(request.cookie(named: "d") == nil)
        #expect(request.cookies == ["a": "1", "b": "é", "c": "3"])
        // Once the dictionary exists (or was replaced), lookups use it.
        request.cookies["a"] = "replaced"
        #expect(request.cookie(named: "a") == "replaced")
    }

    // MARK: - SetCookie

    @Test func setCookieMatchesExpressOutput() {
        let cleared = SetCookie(name: "connect.sid", value: "s%3Aabc.def", expires: Date(timeIntervalSince1970: 0))
        #expect(cleared.headerValue
            == "connect.sid=s%3Aabc.def; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax")

        let session = SetCookie(name: "connect.sid", value: "s%3AnR2GZpd5v0dLr0cO6tsF0Jxq.Zz1hdDmDFi8",
                                expires: Date(timeIntervalSince1970: 1_798_761_600), sameSite: nil)
        #expect(session.headerValue == "connect.sid=s%3AnR2GZpd5v0dLr0cO6tsF0Jxq.Zz1hdDmDFi8; Path=/; "
            + "Expires=Fri, 01 Jan 2027 00:00:00 GMT; HttpOnly")
    }

    @Test func setCookieAttributesFollowTheCookiePackageOrder() {
        let cookie = SetCookie(name: "a", value: "b", path: "/app", domain: "example.com",
                               expires: Date(timeIntervalSince1970: 1_700_000_000), maxAge: 3600,
                               httpOnly: true, secure: true, sameSite: .strict)
        #expect(cookie.headerValue == "a=b; Max-Age=3600; Domain=example.com; Path=/app; "
            + "Expires=Tue, 14 Nov 2023 22:13:20 GMT; HttpOnly; Secure; SameSite=Strict")
        let bare = SetCookie(name: "x", value: "1", path: nil, httpOnly: false, sameSite: SetCookie.SameSite.none)
        #expect(bare.headerValue == "x=1; SameSite=None")
    }

    @Test func responseSetCookieAppendsHeaders() {
        let response = Response()
        response.setCookie(SetCookie(name: "a", value: "1"))
        response.setCookie(SetCookie(name: "b", value: "2", sameSite: nil))
        #expect(response.headers.values("Set-Cookie") == ["a=1; Path=/; HttpOnly; SameSite=Lax", "b=2; Path=/; HttpOnly"])
    }

    // MARK: - Dates

    @Test func httpDateMatchesKnownDates() {
        let cases: [(Double, String)] = [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 GMT"),
            (1_700_000_000.999, "Tue, 14 Nov 2023 22:13:20 GMT"),   // fractions round down
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),          // leap day of a century leap year
            (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 GMT"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
            (-86_400_000, "Fri, 07 Apr 1967 00:00:00 GMT"),
            // Years padded to four digits, signed before 1 BC, as Node's toUTCString writes them:
            (-30_610_224_000, "Wed, 01 Jan 1000 00:00:00 GMT"),
            (-30_610_224_001, "Tue, 31 Dec 0999 23:59:59 GMT"),
            (-62_009_366_400, "Sat, 01 Jan 0005 00:00:00 GMT"),
            (-62_167_219_200, "Sat, 01 Jan 0000 00:00:00 GMT"),
            (-62_198_755_200, "Fri, 01 Jan -0001 00:00:00 GMT"),
            (-451_737_734_400, "Fri, 01 Jan -12345 00:00:00 GMT"),
            (253_402_300_800, "Sat, 01 Jan 10000 00:00:00 GMT"),
        ]
        for (seconds, expected) in cases {
            #expect(Date(timeIntervalSince1970: seconds).httpDate == expected, "\(seconds)")
        }
    }

    // MARK: - URI helpers

    @Test func percentDecodeRules() {
        #expect(percentDecode("a%20b") == "a b")
        #expect(percentDecode("a+b") == "a+b")
        #expect(percentDecode("a+b", plusAsSpace: true) == "a b")
        #expect(percentDecode("%C3%A9%c3%a9") == "éé")
        #expect(percentDecode("%") == nil)
        #expect(percentDecode("%4") == nil)
        #expect(percentDecode("%G0") == nil)
        #expect(percentDecode("%C3") == nil)   // truncated UTF-8
        #expect(percentDecode("plain") == "plain")
        #expect(percentDecode("") == "")
    }

    @Test func uriSplitsIntoDecodedPathAndRawQuery() {
        #expect(URIParts.split("/a%20b?x=%20") == ("/a b", "x=%20"))
        #expect(URIParts.split("/p?") == ("/p", ""))
        #expect(URIParts.split("/bad%zz") == ("/bad%zz", nil))
        #expect(URIParts.parseQuery("a=1&b=x+y&a=2&c&=v&d=%ZZ")
            == ["a": "1", "b": "x y", "c": "", "": "v", "d": "%ZZ"])
        #expect(URIParts.parseQuery(nil) == [:])
        #expect(URIParts.parseQuery("") == [:])
    }
}

/// A small deterministic generator, so a failing fuzz case can be replayed.
struct SplitMix64 {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func next(below bound: Int) -> Int { Int(next() % UInt64(bound)) }
}
