// The request limits, and the answer to a request that breaks one of them (or the framing rules): the limits come
// from `HTTPServerConfiguration`; the scanner (HTTPLimits+Scanner.swift) checks each connection's bytes against them
// and names the failure, which is answered with the `HTTPRejection` made here.

// MARK: - Limits

/// The size limits a request must respect, taken from ``HTTPServerConfiguration``.
struct HTTPLimits: Sendable, Equatable {
    /// Request line plus header fields (and trailer fields of a chunked body), in bytes, line ends included.
    var maxHeaderSize: Int
    /// The request target of the request line, in bytes.
    var maxURILength: Int
    /// Header fields plus trailer fields.
    var maxHeaderCount: Int
    /// The body, in bytes (after removing the chunked framing).
    var maxBodySize: Int

    init(maxHeaderSize: Int, maxURILength: Int, maxHeaderCount: Int, maxBodySize: Int) {
        self.maxHeaderSize = max(0, maxHeaderSize)
        self.maxURILength = max(0, maxURILength)
        self.maxHeaderCount = max(0, maxHeaderCount)
        self.maxBodySize = max(0, maxBodySize)
    }
}

/// A request refused before it reaches the application: the status and a short message for the JSON body.
struct HTTPRejection: Sendable, Equatable, CustomStringConvertible {
    var status: HTTPStatus
    var message: String
    var description: String { "\(status.code) \(message)" }
}

// MARK: - Messages

extension HTTPLimits.Scanner.Failure {
    /// The answer to a request refused for this reason.
    func rejection(_ limits: HTTPLimits) -> HTTPRejection {
        switch self {
        case .badRequestLine:
            HTTPRejection(status: .badRequest, message: "malformed request line")
        case .methodNotImplemented:
            HTTPRejection(status: .notImplemented, message: "method not implemented")
        case .versionNotSupported:
            HTTPRejection(status: .httpVersionNotSupported, message: "only HTTP/1.x is supported")
        case .uriTooLong:
            HTTPRejection(status: .uriTooLong, message: "request target longer than \(limits.maxURILength) bytes")
        case .headerTooLarge:
            HTTPRejection(status: .requestHeaderFieldsTooLarge,
                          message: "request header block larger than \(limits.maxHeaderSize) bytes")
        case .tooManyFields:
            HTTPRejection(status: .requestHeaderFieldsTooLarge,
                          message: "more than \(limits.maxHeaderCount) header fields")
        case .obsFold:
            HTTPRejection(status: .badRequest, message: "folded header line (obs-fold)")
        case .bareLF:
            HTTPRejection(status: .badRequest, message: "line ends with LF without CR")
        case .bareCR:
            HTTPRejection(status: .badRequest, message: "CR not followed by LF")
        case .badFieldName:
            HTTPRejection(status: .badRequest, message: "malformed header field name")
        case .badFieldValue:
            HTTPRejection(status: .badRequest, message: "control character in header field value")
        case .badContentLength:
            HTTPRejection(status: .badRequest, message: "Content-Length is not a decimal number")
        case .duplicateContentLength:
            HTTPRejection(status: .badRequest, message: "more than one Content-Length")
        case .badTransferEncoding:
            HTTPRejection(status: .badRequest, message: "Transfer-Encoding other than chunked")
        case .duplicateTransferEncoding:
            HTTPRejection(status: .badRequest, message: "more than one Transfer-Encoding")
        case .lengthAndChunked:
            HTTPRejection(status: .badRequest, message: "both Content-Length and Transfer-Encoding")
        case .chunkedInHTTP10:
            HTTPRejection(status: .badRequest, message: "Transfer-Encoding in an HTTP/1.0 request")
        case .duplicateHost:
            HTTPRejection(status: .badRequest, message: "more than one Host")
        case .bodyNotAllowed:
            HTTPRejection(status: .badRequest, message: "a HEAD request takes no body")
        case .expectationFailed:
            HTTPRejection(status: .expectationFailed, message: "only Expect: 100-continue is supported")
        case .bodyTooLarge:
            HTTPRejection(status: .payloadTooLarge, message: "request body larger than \(limits.maxBodySize) bytes")
        case .badChunk:
            HTTPRejection(status: .badRequest, message: "malformed chunked body")
        case .chunkExtension:
            HTTPRejection(status: .badRequest, message: "chunk extensions are not supported")
        }
    }
}
