import Foundation
import Testing
@testable import EvServer

// MARK: - Node, the reference implementation

/// Runs a Node.js script and returns its standard output. Cross-checks compare against the real thing, so a
/// missing `node` is a failure with a clear message, never a silent skip.
enum Node {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func run(_ script: String, arguments: [String] = []) throws -> String {
        let searchPath = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/bin:/usr/local/bin"
        guard let node = searchPath.split(separator: ":").map({ "\($0)/node" })
            .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw Failure(description: "node is not installed: these tests cross-check against Node.js "
                + "(apt-get install nodejs node-cookie-signature)")
        }
        // Through the tests' own posix_spawn (ChildProcess), not Foundation's Process, whose run() crashed once in
        // a memcpy while the suite's other tests were starting processes on other threads.
        let result = try ChildProcess.run(node, ["-e", script, "--"] + arguments, timeout: .seconds(60))
        guard result.status == .exited(0) else {
            throw Failure(description: "node failed (\(result.status)): " + result.error)
        }
        return result.output
    }

    /// One output line per argument.
    static func lines(_ script: String, arguments: [String]) throws -> [String] {
        let text = try run(script, arguments: arguments)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return lines
    }
}

private func parse(_ text: String) throws -> JSONValue { try JSONValue(parsing: text) }

private func reason(of text: String) -> JSONParseError? {
    reason(ofBytes: Array(text.utf8))
}

private func reason(ofBytes bytes: [UInt8]) -> JSONParseError? {
    do {
        _ = try JSONValue(parsing: bytes)
        return nil
    } catch {
        return error
    }
}

@Suite struct JSONValueTests {
    // MARK: Exactness

    @Test func bigAndTinyNumbersReserializeIdentically() throws {
        let text = #"{"n":12345678901234567890,"f":0.1,"e":1e400}"#
        let value = try parse(text)
        #expect(value.jsonString == text)
        #expect(value["n"] == .number("12345678901234567890"))
        #expect(value["e"]?.doubleValue == .infinity)
        #expect(value["f"]?.doubleValue == 0.1)
    }

    @Test func numberLiteralsAreKeptAsWritten() throws {
        for literal in ["0", "-0", "1.50", "1E5", "2e-3", "-12.5e+10", "0.000001", "123456789012345678901234567890"] {
            let value = try parse("[\(literal)]")
            #expect(value.jsonString == "[\(literal)]")
            #expect(value[0] == .number(literal))
        }
    }

    @Test func whitespaceAroundTokensIsAccepted() throws {
        let value = try parse(" \t\n\r{ \"a\" : [ 1 , 2 ] , \"b\":{ } ,\"c\":[ ]} \n")
        #expect(value.jsonString == #"{"a":[1,2],"b":{},"c":[]}"#)
    }

    @Test func stringsDecodeEscapes() throws {
        let value = try parse(#""q\" b\\ s\/ \b\f\n\r\t \u0041\u00e9\u20AC \ud83d\ude00""#)
        #expect(value.stringValue == "q\" b\\ s/ \u{8}\u{c}\n\r\t Aé€ 😀")
    }

    @Test func rawUnicodeInStringsIsKept() throws {
        let value = try parse("\"é€😀 \u{2028}\"")
        #expect(value.stringValue == "é€😀 \u{2028}")
        #expect(value.jsonString == "\"é€😀 \u{2028}\"")
    }

    @Test func loneSurrogateEscapesBecomeReplacementCharacters() throws {
        #expect(try parse(#""\ud800""#).stringValue == "\u{FFFD}")
        #expect(try parse(#""\udc00x""#).stringValue == "\u{FFFD}x")
        #expect(try parse(#""\ud800\u0041""#).stringValue == "\u{FFFD}A")
        #expect(try parse(#""a\ud83d""#).stringValue == "a\u{FFFD}")
        #expect(try parse(#""\ud83d\ud83d\ude00""#).stringValue == "\u{FFFD}😀")
    }

    @Test func duplicateKeysKeepFirstPositionAndLastValue() throws {
        let value = try parse(#"{"a":1,"b":2,"a":3}"#)
        #expect(value.objectValue?.keys == ["a", "b"])
        #expect(value.jsonString == #"{"a":3,"b":2}"#)
    }

    @Test func keysFollowJavaScriptEnumerationOrder() throws {
        let text = #"{"b":1,"2":2,"a":3,"1":4,"01":5,"4294967295":6,"4294967294":7,"-1":8,"0":9}"#
        let ours = try parse(text).jsonString
        let node = try Node.run("process.stdout.write(JSON.stringify(JSON.parse(process.argv[1])))",
                                arguments: [text])
        #expect(ours == node)
        #expect(ours == #"{"0":9,"1":4,"2":2,"4294967294":7,"b":1,"a":3,"01":5,"4294967295":6,"-1":8}"#)
    }

    @Test func keysCompareByBytesNotByCanonicalEquivalence() {
        var object = JSONObject()
        object["é"] = 1           // U+00E9
        object["e\u{301}"] = 2    // e + combining acute: another key in JavaScript
        #expect(object.count == 2)
        #expect(object["é"] == 1)
        #expect(object["e\u{301}"] == 2)
    }

    @Test func largeObjectsKeepOrderThroughInsertAndRemove() {
        var object = JSONObject()
        for index in 0..<100 { object["k\(index)"] = JSONValue(index) }
        object["50"] = "index"
        object["k10"] = nil
        object["k20"] = "replaced"
        #expect(object.count == 100)
        #expect(object.keys.first == "50")
        #expect(object.keys.contains("k10") == false)
        #expect(object["k20"] == "replaced")
        #expect(object.keys[20] == "k20")   // "50", k0...k9, k11...k20: kept its place
        #expect(object["k99"] == 99)
        object["k10"] = 10
        #expect(object.keys.last == "k10")
    }

    // MARK: Serializing like JSON.stringify

    @Test func escapingMatchesJSONStringify() throws {
        var samples = [
            "plain", "", "quote \" backslash \\ slash /", "tab\tnewline\ncr\rbackspace\u{8}formfeed\u{c}",
            "del \u{7f}", "line sep \u{2028} para sep \u{2029}", "é€😀", "nul \u{0} end", "</script>",
            "mixed \u{1}\u{1f} \"x\" \\n",
        ]
        samples.append(String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) }))
        let encoded = samples.map { Data($0.utf8).base64EncodedString() }
        let expected = try Node.lines("""
            for (const a of process.argv.slice(1)) console.log(JSON.stringify(Buffer.from(a, 'base64').toString('utf8')))
            """, arguments: encoded)
        #expect(expected.count == samples.count)
        for (sample, node) in zip(samples, expected) {
            #expect(JSONValue.string(sample).jsonString == node, "for \(sample.debugDescription)")
        }
    }

    @Test func doublesPrintAsJavaScriptPrintsThem() throws {
        var doubles: [Double] = [
            0, -0.0, 1, -1, 0.1, 0.1 + 0.2, 1.5, 100, 1e20, 1e21, 1.5e21, 1e-6, 1e-7, 1.234e-7, 123456789.123,
            Double.leastNonzeroMagnitude, 1.7976931348623157e308, 2.5e-5, 9007199254740992, 123e-20, 0.000001234, 4.35, 1 / 3,
        ]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let bits = generator.next() as UInt64
            let value = Double(bitPattern: bits)
            if value.isFinite { doubles.append(value) }
            doubles.append(Double(Int64.random(in: -1_000_000...1_000_000, using: &generator)) / 1000)
        }
        let hex = doubles.map { String($0.bitPattern, radix: 16) }
        let expected = try Node.lines("""
            for (const h of process.argv.slice(1)) {
              const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt('0x' + h)); console.log(JSON.stringify(b.readDoubleBE()))
            }
            """, arguments: hex)
        #expect(expected.count == doubles.count)
        for (value, node) in zip(doubles, expected) {
            #expect(JSONValue(value).jsonString == node, "for \(value)")
        }
        #expect(JSONValue(Double.nan) == .null)
        #expect(JSONValue(-Double.infinity) == .null)
    }

    // MARK: Rejections

    @Test(arguments: [
        ("", JSONParseError.Reason.unexpectedEnd),
        ("{", .unexpectedEnd),
        ("[1,]", .unexpectedCharacter),
        (#"{"a":1,}"#, .unexpectedCharacter),
        ("01", .trailingCharacters),
        ("1.", .invalidNumber),
        (".5", .unexpectedCharacter),
        ("+1", .unexpectedCharacter),
        ("1e", .invalidNumber),
        ("-", .invalidNumber),
        ("-a", .invalidNumber),
        (#""\x""#, .invalidEscape),
        (#""\u12""#, .invalidEscape),
        (#""\u12"#, .unexpectedEnd),
        ("\"a\u{1}b\"", .controlCharacter),
        ("\"a\nb\"", .controlCharacter),
        ("tru", .unexpectedEnd),
        ("nul", .unexpectedEnd),
        ("trUe", .unexpectedCharacter),
        ("[1] x", .trailingCharacters),
        ("\u{FEFF}{}", .unexpectedCharacter),
        ("{'a':1}", .unexpectedCharacter),
        ("{a:1}", .unexpectedCharacter),
        (#"{"a" 1}"#, .unexpectedCharacter),
        ("NaN", .unexpectedCharacter),
        ("Infinity", .unexpectedCharacter),
        ("[1 2]", .unexpectedCharacter),
        (#""abc"#, .unexpectedEnd),
        ("/* c */ 1", .unexpectedCharacter),
    ])
    func malformedTextIsRejected(text: String, expected: JSONParseError.Reason) {
        #expect(reason(of: text)?.reason == expected, "for \(text.debugDescription)")
    }

    @Test func invalidUTF8IsRejected() {
        #expect(reason(ofBytes: [0x22, 0xFF, 0x22])?.reason == .invalidUTF8)
        #expect(reason(ofBytes: [0x22, 0xC0, 0xAF, 0x22])?.reason == .invalidUTF8)          // overlong "/"
        #expect(reason(ofBytes: [0x22, 0xED, 0xA0, 0x80, 0x22])?.reason == .invalidUTF8)    // raw surrogate
        #expect(reason(ofBytes: [0x22, 0x5C, 0x6E, 0xE2, 0x82, 0x22])?.reason == .invalidUTF8)  // truncated, slow path
        #expect(reason(ofBytes: [0x5B, 0xC3, 0xA9, 0x5D])?.reason == .unexpectedCharacter)   // outside a string
    }

    @Test func errorsCarryTheByteOffset() {
        #expect(reason(of: "[1,2,x]")?.offset == 5)
        #expect(reason(of: #"{"a":tru}"#)?.offset == 8)
        #expect(reason(of: "[1] x")?.offset == 4)
        #expect(reason(of: "[1] x").map { "\($0)" } == "invalid JSON: unexpected characters after the value at byte 4")
    }

    @Test func nestingIsLimitedTo64Levels() throws {
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(try parse(ok).jsonString == ok)
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(reason(of: deep)?.reason == .tooDeep)
        let deepObject = String(repeating: #"{"a":"#, count: 65) + "1" + String(repeating: "}", count: 65)
        #expect(reason(of: deepObject)?.reason == .tooDeep)
        let hostile = String(repeating: "[", count: 100_000)
        #expect(reason(of: hostile)?.reason == .tooDeep)
    }

    // MARK: Literals, accessors, description

    @Test func literalsBuildValues() {
        let value: JSONValue = ["name": "Aditya", "age": 30, "ratio": 0.5, "admin": false, "nick": nil,
                                "tags": ["a", 1, 2.25, true]]
        #expect(value.jsonString == #"{"name":"Aditya","age":30,"ratio":0.5,"admin":false,"nick":null,"tags":["a",1,2.25,true]}"#)
        let name = "x"
        let interpolated: JSONValue = "hi \(name)"
        #expect(interpolated == .string("hi x"))
        #expect(JSONValue(UInt8(7)) == .number("7"))
        #expect(JSONValue(1.0) == .number("1"))
    }

    @Test func stringsPrintTheirRawText() {
        let stored: JSONValue? = "Aditya@123"
        #expect("Welcome \(stored ?? "guest")" == "Welcome Aditya@123")
        let missing: JSONValue? = nil
        #expect("Welcome \(missing ?? "guest")" == "Welcome guest")
        #expect("\(JSONValue.number("42"))" == "42")
        #expect("\(JSONValue.object(["a": [1, "b"]]))" == #"{"a":[1,"b"]}"#)
        #expect("\(JSONValue.null)" == "null")
    }

    @Test func accessorsReadTheirOwnCaseOnly() {
        #expect(JSONValue.string("s").stringValue == "s")
        #expect(JSONValue.number("1").stringValue == nil)
        #expect(JSONValue.number("42").intValue == 42)
        #expect(JSONValue.number("4.2e1").intValue == 42)
        #expect(JSONValue.number("42.5").intValue == nil)
        #expect(JSONValue.number("1e400").intValue == nil)
        #expect(JSONValue.number("12345678901234567890").intValue == nil)
        #expect(JSONValue.number("-9223372036854775808").intValue == Int.min)
        #expect(JSONValue.number("2.5").doubleValue == 2.5)
        #expect(JSONValue.bool(true).boolValue == true)
        #expect(JSONValue.number("1").boolValue == nil)
        #expect(JSONValue.array([1]).arrayValue == [1])
        #expect(JSONValue.object(["a": 1]).objectValue?["a"] == 1)
        #expect(JSONValue.null.isNull)
        #expect(JSONValue.array([1])[3] == nil)
    }

    // MARK: Codable bridge

    private struct User: Codable, Equatable {
        var name: String
        var age: Int
        var tags: [String]
        var score: Double?
    }

    @Test func codableValuesRoundTrip() throws {
        let user = User(name: "Ann \"A\" / é", age: 41, tags: ["x", "y"], score: 0.25)
        let value = try JSONValue(encoding: user)
        #expect(value["name"] == "Ann \"A\" / é")
        #expect(value["age"] == 41)
        #expect(try value.decode(as: User.self) == user)
        #expect(try JSONValue(encoding: "just a string") == "just a string")
        #expect(throws: (any Error).self) { try JSONValue.string("x").decode(as: User.self) }
    }

    @Test func encodedObjectsHaveAStableKeyOrder() throws {
        // JSONEncoder's own order changes from process to process; the bridge sorts, so equal values encode equally.
        let value = try JSONValue(encoding: User(name: "n", age: 1, tags: [], score: nil))
        #expect(value.objectValue?.keys == ["age", "name", "tags"])
        #expect(value.jsonString == #"{"age":1,"name":"n","tags":[]}"#)
    }
}
