import Testing
@testable import RedisSessionStore

@Suite struct RedisConfigurationTests {
    struct Valid: Sendable, CustomStringConvertible {
        let url: String
        let host: String
        var port = 6379
        var username: String?
        var password: String?
        var database = 0
        var tls: RedisTLSConfiguration?
        var description: String { url }
    }

    static let validURLs: [Valid] = [
        Valid(url: "redis://localhost", host: "localhost"),
        Valid(url: "redis://127.0.0.1:6380", host: "127.0.0.1", port: 6380),
        Valid(url: "redis://:pw@redis", host: "redis", password: "pw"),
        Valid(url: "redis://user:pw@cache.internal:6380/2", host: "cache.internal", port: 6380, username: "user",
              password: "pw", database: 2),
        Valid(url: "redis://[::1]", host: "::1"),
        Valid(url: "redis://[::1]:6380/3", host: "::1", port: 6380, database: 3),
        Valid(url: "redis://:p%40ss%3Aw%2Frd@host", host: "host", password: "p@ss:w/rd"),
        Valid(url: "redis://u%20ser:pw@host", host: "host", username: "u ser", password: "pw"),
        Valid(url: "redis://user:p@ss@host", host: "host", username: "user", password: "p@ss"),
        Valid(url: "REDIS://Host:1/0", host: "Host", port: 1),
        Valid(url: "redis://host/", host: "host"),
        Valid(url: "redis://:@host:65535", host: "host", port: 65535),
        Valid(url: "redis://host/15", host: "host", database: 15),
        Valid(url: "rediss://:pw@my-cache.xxxxxx.use1.cache.amazonaws.com:6379",
              host: "my-cache.xxxxxx.use1.cache.amazonaws.com", password: "pw", tls: RedisTLSConfiguration()),
        Valid(url: "rediss://default:pw@[::1]:6380/3", host: "::1", port: 6380, username: "default", password: "pw",
              database: 3, tls: RedisTLSConfiguration()),
        Valid(url: "REDISS://Host", host: "Host", tls: RedisTLSConfiguration()),
    ]

    @Test(arguments: validURLs)
    func validURLParses(_ expected: Valid) throws {
        let configuration = try RedisConfiguration(url: expected.url)
        #expect(configuration.host == expected.host)
        #expect(configuration.port == expected.port)
        #expect(configuration.username == expected.username)
        #expect(configuration.password == expected.password)
        #expect(configuration.database == expected.database)
        #expect(configuration.tls == expected.tls)
        #expect(configuration.tls?.verifiesPeer ?? true)
        #expect(configuration.commandTimeout == .seconds(1))
    }

    struct Invalid: Sendable, CustomStringConvertible {
        let url: String
        /// A part of the error's description naming the problem.
        let problem: String
        var description: String { url }
    }

    static let invalidURLs: [Invalid] = [
        Invalid(url: "", problem: "empty"),
        Invalid(url: "localhost:6379", problem: "missing scheme"),
        Invalid(url: "http://host", problem: "unsupported scheme \"http\" (expected redis:// or rediss:// for TLS)"),
        Invalid(url: "redis+tls://host", problem: "unsupported scheme \"redis+tls\""),
        Invalid(url: "rediss://host:0", problem: "port 0 is out of range (1-65535)"),
        Invalid(url: "rediss://user@host", problem: "user name without a password"),
        Invalid(url: "unix:///tmp/redis.sock", problem: "Unix sockets are not supported"),
        Invalid(url: "redis://host:0", problem: "port 0 is out of range (1-65535)"),
        Invalid(url: "redis://host:70000", problem: "port 70000 is out of range (1-65535)"),
        Invalid(url: "redis://host:abc", problem: "invalid port \"abc\""),
        Invalid(url: "redis://host:", problem: "invalid port \"\""),
        Invalid(url: "redis://host:-1", problem: "invalid port \"-1\""),
        Invalid(url: "redis://host:99999999999999999999", problem: "invalid port"),
        Invalid(url: "redis://host/abc", problem: "invalid database \"abc\""),
        Invalid(url: "redis://host/-1", problem: "invalid database \"-1\""),
        Invalid(url: "redis://host/1/2", problem: "invalid database \"1/2\""),
        Invalid(url: "redis://:pw@", problem: "missing host"),
        Invalid(url: "redis://", problem: "missing host"),
        Invalid(url: "redis://user@host", problem: "user name without a password"),
        Invalid(url: "redis://user:@host", problem: "with an empty password"),
        Invalid(url: "redis://::1:6379", problem: "several \":\""),
        Invalid(url: "redis://[::1", problem: "without a closing \"]\""),
        Invalid(url: "redis://[::1]x", problem: "after the IPv6 address"),
        Invalid(url: "redis://[zz]", problem: "invalid IPv6 address"),
        Invalid(url: "redis://ho st", problem: "invalid host"),
        Invalid(url: "redis://host?db=1", problem: "query parameters"),
        Invalid(url: "redis://:bad%zz@host", problem: "invalid percent-encoding in the password"),
        Invalid(url: "redis://:%FF@host", problem: "not valid UTF-8"),
    ]

    @Test(arguments: invalidURLs)
    func invalidURLThrowsOneClearLine(_ case_: Invalid) {
        do {
            let configuration = try RedisConfiguration(url: case_.url)
            Issue.record("\(case_.url) parsed as \(configuration), expected an error about \(case_.problem)")
        } catch let error as RedisConfigurationError {
            let text = error.description
            #expect(text.hasPrefix("invalid Redis URL: "))
            #expect(text.contains(case_.problem), "\(text)")
            #expect(!text.contains("\n"))
        } catch {
            Issue.record("unexpected error type: \(error)")
        }
    }

    @Test(arguments: [
        "redis://:sekret@host:70000",
        "rediss://:sekret@host:70000",
        "redis://user:sekret@host/x",
        "redis://user:sekret@ho st",
        "redis://user:sekret@host?x=1",
        "redis://:sekret%zz@host",
    ])
    func errorNeverShowsThePassword(_ url: String) {
        #expect(throws: RedisConfigurationError.self) { try RedisConfiguration(url: url) }
        do {
            _ = try RedisConfiguration(url: url)
        } catch {
            #expect(!String(describing: error).contains("sekret"), "\(error)")
        }
    }

    @Test func descriptionRedactsThePassword() throws {
        let configuration = try RedisConfiguration(url: "redis://alice:sekret@cache:6380/2")
        #expect(configuration.redactedURL == "redis://alice:***@cache:6380/2")
        #expect(configuration.description == configuration.redactedURL)
        #expect(RedisConfiguration().redactedURL == "redis://127.0.0.1:6379")
        #expect(RedisConfiguration(host: "::1", password: "x").redactedURL == "redis://:***@[::1]:6379")
    }

    @Test func redactedURLKeepsTheTLSScheme() throws {
        let configuration = try RedisConfiguration(url: "rediss://alice:sekret@cache:6380/2")
        #expect(configuration.redactedURL == "rediss://alice:***@cache:6380/2")
        #expect(RedisConfiguration(host: "cache", tls: RedisTLSConfiguration(caFile: "/ca.pem")).redactedURL
            == "rediss://cache:6379")
        var plain = configuration
        plain.tls = nil
        #expect(plain.redactedURL == "redis://alice:***@cache:6380/2")
    }

    @Test func equalityIgnoresTheMetricsHook() {
        var a = RedisConfiguration(host: "h", port: 1)
        a.onCommand = { _, _, _ in }
        let b = RedisConfiguration(host: "h", port: 1)
        #expect(a == b)
        #expect(a != RedisConfiguration(host: "h", port: 2))
        #expect(a != RedisConfiguration(host: "h", port: 1, commandTimeout: .milliseconds(5)))
        #expect(a != RedisConfiguration(host: "h", port: 1, tls: RedisTLSConfiguration()))
    }

    @Test func urlParsingKeepsDefaultsForTheRest() throws {
        let configuration = try RedisConfiguration(url: "redis://h")
        #expect(configuration.connectingQueueLimit == RedisConfiguration().connectingQueueLimit)
        #expect(configuration.onCommand == nil)
    }
}
