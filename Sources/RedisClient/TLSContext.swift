import COpenSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The TLS leg's OpenSSL calls: building an SSL_CTX from a RedisTLSConfiguration (reading the CA bundle, the client
// certificate and key: file reads, so never on an event loop: ``TLSContextCache`` runs on the resolver's worker
// thread), making one SSL per connection with its name checks, and turning OpenSSL's error queue and verify results
// into one line a user can act on. RedisTransport drives the SSL through libevent's bufferevent_openssl.

/// A TLS failure: the configuration could not be loaded, or a handshake failed. One line, for logs.
struct TLSError: Error, Sendable, CustomStringConvertible {
    let description: String
}

/// One `SSL_CTX`: trusted CAs, client certificate, verification mode. Immutable once built.
final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable: the SSL_CTX is configured in init and only read afterwards (SSL_new), which OpenSSL
    // allows from any thread; its reference count is atomic.

    private let context: OpaquePointer
    let verifiesPeer: Bool
    let serverName: String?

    /// Builds the context, reading the files the configuration names. Blocking: worker threads only.
    init(_ configuration: RedisTLSConfiguration) throws(TLSError) {
        if let problem = configuration.problem { throw TLSError(description: problem) }
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw TLSError(description: "could not create a TLS context: \(drainErrors() ?? "out of memory")")
        }
        self.context = context
        self.verifiesPeer = configuration.verifiesPeer
        self.serverName = configuration.serverName
        _ = evserver_ssl_ctx_require_tls12(context)
        ERR_clear_error()
        if configuration.verifiesPeer {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
            // The bundle file only, loaded now: a CA directory (OpenSSL's default "hashed dir") would be read
            // during each handshake, on the loop thread.
            let file = configuration.caFile ?? Self.systemBundle
            guard SSL_CTX_load_verify_locations(context, file, nil) == 1 else {
                let reason = drainErrors() ?? "unreadable"
                throw TLSError(description: configuration.caFile == nil
                               ? "cannot load the system's CA bundle \(file) (\(reason)); set a CA file"
                               : "cannot load the TLS CA file \(file) (\(reason))")
            }
        } else {
            SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
        }
        if let certificate = configuration.certificateFile, let key = configuration.keyFile {
            guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else {
                throw TLSError(description: "cannot load the TLS client certificate \(certificate) "
                               + "(\(drainErrors() ?? "unreadable"))")
            }
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
                throw TLSError(description: "cannot load the TLS client key \(key) (\(drainErrors() ?? "unreadable"))")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSError(description: "the TLS client key \(key) does not match the certificate \(certificate)")
            }
        }
    }

    deinit {
        SSL_CTX_free(context)
    }

    /// OpenSSL's default CA bundle file (`SSL_CERT_FILE` when set), e.g. /usr/lib/ssl/cert.pem, which Debian links
    /// to /etc/ssl/certs/ca-certificates.crt.
    static var systemBundle: String {
        let variable = String(cString: X509_get_default_cert_file_env())
        if let value = getenv(variable), value.pointee != 0 { return String(cString: value) }
        return String(cString: X509_get_default_cert_file())
    }

    /// A new `SSL` for one connection to `host`, its name checks set: SNI (names only) and the certificate check
    /// against ``serverName`` or `host` (an IP literal is checked against the certificate's IP addresses).
    /// The caller owns it (the bufferevent frees it).
    func makeSSL(host: String) throws(TLSError) -> OpaquePointer {
        guard let ssl = SSL_new(context) else {
            throw TLSError(description: "could not create a TLS session: \(drainErrors() ?? "out of memory")")
        }
        let name = serverName ?? host
        let isAddress = isIPLiteral(name)
        if !isAddress { _ = evserver_ssl_set_sni(ssl, name) }
        if verifiesPeer {
            let checked = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                                    : SSL_set1_host(ssl, name)
            guard checked == 1 else {
                SSL_free(ssl)
                throw TLSError(description: "invalid TLS server name \"\(name)\"")
            }
        }
        return ssl
    }
}

/// Why a handshake or a TLS read failed, from the SSL's verify result and the errors the bufferevent collected;
/// nil when TLS reported nothing (the failure was the socket's).
func describeTLSFailure(ssl: OpaquePointer?, errors: [UInt], verifiesPeer: Bool) -> String? {
    if verifiesPeer, let ssl {
        let result = SSL_get_verify_result(ssl)
        if result != X509_V_OK {
            return "certificate verify failed: \(String(cString: X509_verify_cert_error_string(result)))"
        }
    }
    guard let first = errors.first else { return nil }
    let texts = errors.map(errorText)
    let reason = ERR_GET_REASON_shim(first)
    if reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG
        || reason == SSL_R_HTTP_REQUEST {
        return "the server did not answer with TLS (a plain-text port? use redis://): \(texts[0])"
    }
    return texts.joined(separator: "; ")
}

/// The reason part of an OpenSSL error code (ERR_GET_REASON is a macro in 3.0).
private func ERR_GET_REASON_shim(_ code: UInt) -> Int32 {
    Int32(truncatingIfNeeded: code & 0x7FFFFF)
}

/// One OpenSSL error as text, e.g. `error:0A000086:SSL routines::certificate verify failed` -> the reason only.
private func errorText(_ code: UInt) -> String {
    if let reason = ERR_reason_error_string(code) { return String(cString: reason) }
    var buffer = [CChar](repeating: 0, count: 256)
    ERR_error_string_n(code, &buffer, buffer.count)
    let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // "error:80000002:system library::No such file or directory": the part after the last "::" is the reason.
    if let separator = text.ranges(of: "::").last { return String(text[separator.upperBound...]) }
    return text
}

/// Empties this thread's OpenSSL error queue, returning the first error as text.
private func drainErrors() -> String? {
    var first: String?
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        if first == nil { first = errorText(code) }
    }
    return first
}

private func isIPLiteral(_ text: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
}

// MARK: - Contexts by configuration, rebuilt when a file changes

/// The TLS contexts of the process, one per configuration, each rebuilt when one of its files changed (a renewed
/// certificate, an updated CA bundle): connection attempts ask for theirs on the resolver's worker thread.
enum TLSContextCache {
    private struct Entry {
        let context: TLSContext
        let stamps: [FileStamp?]
    }

    private static let entries = Mutex<[RedisTLSConfiguration: Entry]>([:])

    /// The context for `configuration`, built or rebuilt as needed. Blocking (stat, file reads): worker threads only.
    static func context(for configuration: RedisTLSConfiguration) throws(TLSError) -> TLSContext {
        let stamps = files(of: configuration).map(FileStamp.init(path:))
        if let entry = entries.withLock({ $0[configuration] }), entry.stamps == stamps { return entry.context }
        let context = try TLSContext(configuration)
        entries.withLock { $0[configuration] = Entry(context: context, stamps: stamps) }
        return context
    }

    private static func files(of configuration: RedisTLSConfiguration) -> [String] {
        guard configuration.verifiesPeer || configuration.certificateFile != nil else { return [] }
        var paths = [configuration.caFile ?? TLSContext.systemBundle]
        if let certificate = configuration.certificateFile { paths.append(certificate) }
        if let key = configuration.keyFile { paths.append(key) }
        return paths
    }
}

/// What tells that a file changed: its modification time, size and inode.
private struct FileStamp: Equatable {
    let seconds: Int
    let nanoseconds: Int
    let size: Int
    let inode: UInt64

    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        #if canImport(Glibc)
        seconds = Int(info.st_mtim.tv_sec)
        nanoseconds = Int(info.st_mtim.tv_nsec)
        #else
        seconds = Int(info.st_mtimespec.tv_sec)
        nanoseconds = Int(info.st_mtimespec.tv_nsec)
        #endif
        size = Int(info.st_size)
        inode = UInt64(info.st_ino)
    }
}
