/// TLS for the connections to Redis (`rediss://`): what to trust, what to present, which name to check.
///
/// Verification is on by default: the server's chain must lead to a trusted CA and its certificate must name the
/// host (a DNS name, or an IP address for an IP literal). Files are read when a client starts and again when a
/// connection attempt follows a change of one of them (off the event loop, on the resolver's thread), so a renewed
/// certificate or CA bundle is picked up without a restart.
public struct RedisTLSConfiguration: Sendable, Hashable {
    /// A PEM file of the CA certificates to trust; nil trusts the system's bundle (OpenSSL's default file,
    /// `/etc/ssl/certs/ca-certificates.crt` on Debian, or `SSL_CERT_FILE`).
    public var caFile: String?
    /// A PEM certificate (chain) presented to the server, for mutual TLS (`tls-auth-clients yes`); needs ``keyFile``.
    public var certificateFile: String?
    /// The PEM private key of ``certificateFile``.
    public var keyFile: String?
    /// The name sent in SNI and checked against the server's certificate; nil uses the host connected to (the URL's
    /// host; in cluster and Sentinel modes, each node's address as the cluster or the sentinels announce it).
    public var serverName: String?
    /// Whether the server's certificate is checked (chain and name). Turning it off accepts any server, an
    /// attacker's included: the connection's log line says "TLS without verification" (and `evserver` warns at
    /// start). For tests and migrations only.
    public var verifiesPeer: Bool

    /// - Parameters:
    ///   - caFile: PEM CA bundle to trust instead of the system's.
    ///   - certificateFile: client certificate for mutual TLS.
    ///   - keyFile: its private key.
    ///   - serverName: name to check and send in SNI instead of the host connected to.
    ///   - verifiesPeer: false skips every check (loudly).
    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
                serverName: String? = nil, verifiesPeer: Bool = true) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.serverName = serverName
        self.verifiesPeer = verifiesPeer
    }

    /// The problem with this configuration that no connection attempt can fix, or nil: a certificate without its
    /// key or a key without its certificate, an empty path or server name.
    public var problem: String? {
        switch (certificateFile, keyFile) {
        case (.some, nil): return "a TLS client certificate needs its key file"
        case (nil, .some): return "a TLS client key file needs its certificate file"
        default: break
        }
        for (what, path) in [("CA file", caFile), ("certificate file", certificateFile), ("key file", keyFile)] {
            if let path, path.isEmpty { return "the TLS \(what) path is empty" }
        }
        if let serverName, serverName.isEmpty || serverName.contains(where: { $0.isWhitespace || $0 == "/" }) {
            return "invalid TLS server name \"\(serverName.prefix(64))\""
        }
        return nil
    }
}
