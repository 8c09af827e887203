import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// A throw-away PKI for the TLS tests, made by the `openssl` command the first time a test asks for it (once per
// test process, shared by every test), in a temporary directory removed when the process exits. EC P-256 keys:
// generating them takes milliseconds, where RSA keys would take a second each on a busy machine.

/// The test CA and the certificates it (or an unrelated CA) signed, as PEM files.
struct TestCertificates: Sendable {
    /// A certificate and its private key.
    struct Pair: Sendable {
        let certificate: String
        let key: String
    }

    let directory: String
    /// The CA every good certificate is signed by.
    let caFile: String
    /// A second CA that signed nothing a server here presents but ``unknownCA`` (and trusts nothing else).
    let otherCAFile: String
    /// `localhost` and 127.0.0.1 (subject alternative names), signed by the CA; good for both TLS server and client
    /// use (a cluster node or replica presents it when it connects to its peers).
    let server: Pair
    /// A client certificate signed by the CA, for mutual TLS.
    let client: Pair
    /// `localhost` and 127.0.0.1, signed by the CA, valid only from 1 to 2 January 2020.
    let expired: Pair
    /// `wrong.example` only (no 127.0.0.1), signed by the CA.
    let wrongName: Pair
    /// `localhost` and 127.0.0.1, signed by the other CA.
    let unknownCA: Pair

    /// The shared certificates, made on first use.
    /// - Throws: ``HarnessFailure`` naming the openssl command that failed, and its output.
    static func shared() throws -> TestCertificates { try made.get() }

    /// ``shared()`` from async code: the first call runs openssl and waits for it, which must not hold one of the
    /// few cooperative threads (every other test's timers would wait behind it).
    static func forTests() async throws -> TestCertificates { try await onThread { try shared() } }

    private static let made: Result<TestCertificates, any Error> = Result {
        let directory = NSTemporaryDirectory() + "evserver-tls-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        madeDirectory.withLock { $0 = directory }
        atexit {
            if let directory = TestCertificates.madeDirectory.withLock({ $0 }) {
                try? FileManager.default.removeItem(atPath: directory)
            }
        }
        return try TestCertificates(in: directory)
    }

    private static let madeDirectory = Mutex<String?>(nil)

    // MARK: - Making them

    private init(in directory: String) throws {
        guard let openssl = ChildProcess.find("openssl") else {
            throw HarnessFailure("the openssl command is not installed (apt-get install openssl)")
        }
        self.directory = directory
        func path(_ name: String) -> String { "\(directory)/\(name)" }
        func run(_ arguments: [String]) throws {
            let result = try ChildProcess.run(openssl, arguments, timeout: .seconds(30))
            guard result.status == .exited(0) else {
                throw HarnessFailure("openssl \(arguments.joined(separator: " ")) failed (\(result.status)): "
                                     + (result.output + result.error).suffix(800))
            }
        }
        func newKey(_ name: String) throws -> String {
            try run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path(name + ".key")])
            return path(name + ".key")
        }
        func newCA(_ name: String, commonName: String) throws -> Pair {
            let key = try newKey(name)
            try run(["req", "-x509", "-new", "-key", key, "-out", path(name + ".crt"), "-days", "30",
                     "-subj", "/CN=\(commonName)", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            return Pair(certificate: path(name + ".crt"), key: key)
        }
        func extensions(_ name: String, _ lines: [String]) throws -> String {
            try (lines.joined(separator: "\n") + "\n").write(toFile: path(name), atomically: true, encoding: .utf8)
            return path(name)
        }
        func request(_ name: String, commonName: String) throws -> (key: String, request: String) {
            let key = try newKey(name)
            try run(["req", "-new", "-key", key, "-out", path(name + ".csr"), "-subj", "/CN=\(commonName)"])
            return (key, path(name + ".csr"))
        }
        var serial = 0
        func signed(_ name: String, commonName: String, by ca: Pair, extensions file: String) throws -> Pair {
            let (key, csr) = try request(name, commonName: commonName)
            serial += 1
            try run(["x509", "-req", "-in", csr, "-CA", ca.certificate, "-CAkey", ca.key, "-set_serial", "\(serial)",
                     "-days", "30", "-extfile", file, "-out", path(name + ".crt")])
            return Pair(certificate: path(name + ".crt"), key: key)
        }

        let ca = try newCA("ca", commonName: "EvServer Test CA")
        let other = try newCA("other-ca", commonName: "Unrelated Test CA")
        let leaf = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        let serverExtensions = try extensions("server.ext", leaf + [
            "extendedKeyUsage=serverAuth,clientAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        let wrongExtensions = try extensions("wrong.ext", leaf + [
            "extendedKeyUsage=serverAuth,clientAuth", "subjectAltName=DNS:wrong.example"])
        let clientExtensions = try extensions("client.ext", leaf + ["extendedKeyUsage=clientAuth"])

        caFile = ca.certificate
        otherCAFile = other.certificate
        server = try signed("server", commonName: "localhost", by: ca, extensions: serverExtensions)
        client = try signed("client", commonName: "evserver test client", by: ca, extensions: clientExtensions)
        wrongName = try signed("wrong", commonName: "wrong.example", by: ca, extensions: wrongExtensions)
        unknownCA = try signed("unknown", commonName: "localhost", by: other, extensions: serverExtensions)

        // `openssl x509 -req -days` cannot go below zero, and OpenSSL 3.0's x509 has no -not_before/-not_after
        // (3.4 added them); `openssl ca` takes a start and an end date, with a minimal configuration and database.
        let database = path("ca-db")
        try FileManager.default.createDirectory(atPath: database, withIntermediateDirectories: true)
        try "".write(toFile: database + "/index.txt", atomically: true, encoding: .utf8)
        try "1000\n".write(toFile: database + "/serial", atomically: true, encoding: .utf8)
        let configuration = try extensions("ca.cnf", [
            "[ ca ]", "default_ca = test",
            "[ test ]", "database = \(database)/index.txt", "new_certs_dir = \(database)",
            "serial = \(database)/serial", "default_md = sha256", "policy = anything", "unique_subject = no",
            "[ anything ]", "commonName = supplied",
        ])
        let (expiredKey, expiredRequest) = try request("expired", commonName: "localhost")
        try run(["ca", "-batch", "-config", configuration, "-cert", ca.certificate, "-keyfile", ca.key,
                 "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-extfile", serverExtensions,
                 "-notext", "-in", expiredRequest, "-out", path("expired.crt")])
        expired = Pair(certificate: path("expired.crt"), key: expiredKey)
    }

    /// A copy of `caFile` at a new path of its own in the certificates' directory, for a test that rewrites it.
    func copy(ofCA caFile: String) throws -> String {
        let copy = "\(directory)/ca-copy-\(UUID().uuidString.prefix(8)).crt"
        try FileManager.default.copyItem(atPath: caFile, toPath: copy)
        return copy
    }

    /// `openssl verify -CAfile ca certificate`: the verdict line (`<file>: OK`, or the error).
    func verify(_ certificate: String, caFile: String) throws -> (ok: Bool, output: String) {
        guard let openssl = ChildProcess.find("openssl") else { throw HarnessFailure("openssl is not installed") }
        let result = try ChildProcess.run(openssl, ["verify", "-CAfile", caFile, certificate], timeout: .seconds(10))
        return (result.status == .exited(0), result.output + result.error)
    }
}

// MARK: - TLS redis-servers

extension PrivateRedis.TLS {
    /// A redis-server that presents `pair` on its TLS port, trusts the test CA for client certificates, and asks
    /// for one when `authClients`; probed through `redis-cli --tls` (with the client certificate, not verifying
    /// the server's: the probe checks only that it serves).
    static func serving(_ pair: TestCertificates.Pair, authClients: Bool = false,
                        certificates: TestCertificates) -> PrivateRedis.TLS {
        PrivateRedis.TLS(arguments: ["--tls-cert-file", pair.certificate, "--tls-key-file", pair.key,
                                     "--tls-ca-cert-file", certificates.caFile,
                                     "--tls-auth-clients", authClients ? "yes" : "no"],
                         probe: { port in RedisCLI.answersOverTLS(port: port, certificates: certificates) })
    }
}

/// `redis-cli --tls`, the harness's own way to talk to TLS servers: it checks and drives the TLS servers without
/// going through the code under test.
enum RedisCLI {
    /// The output of `redis-cli --tls -p port <command>` (raw: one line per reply element), with the client
    /// certificate; verifies the server against the test CA unless `insecure`.
    /// - Throws: ``HarnessFailure`` when redis-cli fails or says `Error:`/`Could not connect`, with its output.
    static func run(port: Int, certificates: TestCertificates, insecure: Bool = false,
                    _ command: [String], timeout: Duration = .seconds(10)) throws -> String {
        guard let cli = ChildProcess.find("redis-cli") else {
            throw HarnessFailure("redis-cli is not installed (apt-get install redis-tools)")
        }
        let result = try ChildProcess.run(cli, tlsArguments(port: port, certificates: certificates, insecure: insecure)
                                          + command, timeout: timeout)
        let text = result.output + result.error
        guard result.status == .exited(0), !text.hasPrefix("Error:"), !text.contains("Could not connect") else {
            throw HarnessFailure("redis-cli --tls -p \(port) \(command.joined(separator: " ")): "
                                 + "\(result.status): \(text.suffix(500))")
        }
        return result.output
    }

    static func tlsArguments(port: Int, certificates: TestCertificates, insecure: Bool = false) -> [String] {
        ["-h", "127.0.0.1", "-p", "\(port)", "--tls", "--cert", certificates.client.certificate,
         "--key", certificates.client.key] + (insecure ? ["--insecure"] : ["--cacert", certificates.caFile])
    }

    /// Whether a TLS server on `port` answers PING (PONG, or an error reply such as NOAUTH or LOADING). Tries a
    /// plain TCP connection first, so that no redis-cli is spawned while nothing listens yet.
    static func answersOverTLS(port: Int, certificates: TestCertificates) -> Bool {
        guard acceptsConnections(port: port) else { return false }
        guard let output = try? run(port: port, certificates: certificates, insecure: true, ["PING"],
                                    timeout: .seconds(3)) else { return false }
        return output.hasPrefix("PONG") || output.hasPrefix("NOAUTH") || output.hasPrefix("LOADING")
    }

    /// Whether something accepts a TCP connection on 127.0.0.1:`port`.
    static func acceptsConnections(port: Int) -> Bool {
        withLoopbackSocket(port: port) { connect($0, $1, $2) } == 0
    }
}
