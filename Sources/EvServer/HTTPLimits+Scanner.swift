// Over 500 lines on purpose: the scanner is one state machine; its runs, per-byte steps and tables share its state.

// The byte-level checks evhttp does not make, against the request limits (HTTPLimits.swift). No libevent here:
// HTTPServer.swift ("Limits and timeouts") feeds each connection's incoming bytes to an `HTTPLimits.Scanner` (from the bufferevent's
// input buffer, before evhttp parses them) and acts on what it says.
//
// Why a scanner of our own: libevent 2.1.12's parser (http.c) is lenient where leniency lets requests be smuggled
// past a front proxy, and answers its own limits with the wrong status and an HTML page:
// - evbuffer_readln(EVBUFFER_EOL_CRLF) takes a bare LF as a line end, and a header line starting with a space or tab
//   is folded into the previous header (evhttp_append_to_last_header).
// - evhttp_find_header returns the first of several Content-Length headers; Transfer-Encoding wins over
//   Content-Length when its value is exactly "chunked" and is ignored otherwise (so `Transfer-Encoding: gzip` means
//   "no body"); a field name with a space before the colon is kept with the space, so `Content-Length : 5` is not a
//   length; HEAD requests never have a body (evhttp_method_may_have_body), so their Content-Length bytes are read as
//   the next request.
// - A request line or header block over evhttp_set_max_headers_size is answered 400 (evhttp_read_firstline and
//   evhttp_read_header fail with EVREQ_HTTP_INVALID_HEADER); a body over evhttp_set_max_body_size, and also a
//   corrupt chunk or a chunk extension, 413 (EVREQ_HTTP_DATA_TOO_LONG). Each comes as evhttp_send_error's HTML with
//   `Connection: close`, and with EVHTTP_SERVER_LINGERING_CLOSE the 413 only once the whole body has been read.
//   There is no header-count limit and no URI limit.
// (All checked against 2.1.12 with raw sockets; the tests in HTTPSmugglingTests.swift send the same shapes.)
//
// The scanner follows the byte stream of a connection request by request: the head (request line and header
// fields), then the body framed exactly as evhttp will frame it (Content-Length bytes, or chunks and trailers), then
// the next pipelined request. Everything it accepts, evhttp parses the same way; everything ambiguous it refuses. It
// never copies: it looks at each byte once as it arrives and keeps a few counters.

// MARK: - Scanner

extension HTTPLimits {
    /// Checks the bytes of one connection, in order, as they arrive.
    ///
    /// Feed every byte exactly once with ``scan(_:)``. After a rejection the scanner stays dead: the connection must
    /// be answered with the rejection and closed, since where the next request would start is unknown.
    struct Scanner {
        /// Where the connection's byte stream stands.
        enum Position: Equatable {
            /// No byte of the next request yet.
            case betweenRequests
            /// In a request line or header block.
            case head
            /// In a body (or the trailer fields after a chunked body).
            case body
        }

        /// Why a request is refused. A small trivial enum, so the per-byte path never builds a string.
        enum Failure: UInt8, Equatable {
            case badRequestLine, methodNotImplemented, versionNotSupported, uriTooLong
            case headerTooLarge, tooManyFields, obsFold, bareLF, bareCR, badFieldName, badFieldValue
            case badContentLength, duplicateContentLength, badTransferEncoding, duplicateTransferEncoding
            case lengthAndChunked, chunkedInHTTP10, duplicateHost, bodyNotAllowed
            case expectationFailed, bodyTooLarge, badChunk, chunkExtension
        }

        private enum State: UInt8 {
            case start, method, target, version, requestLineLF
            case lineStart, name, valueLeading, value, valueLF, headEndLF
            case bodyFixed, chunkSizeStart, chunkSize, chunkSizeLF, chunkData, chunkDataCR, chunkDataLF
            case dead
        }

        /// Which header fields the framing depends on; every other one is only checked for syntax.
        private enum FieldKind: UInt8 { case other, contentLength, transferEncoding, host, expect }

        private enum Method: UInt8 { case unknown, get, head, post, put, delete, options, patch }

        let limits: HTTPLimits
        /// Requests whose last byte has been scanned.
        private(set) var completedRequests = 0
        private var state = State.start

        // Per request.
        private var headBytes = 0
        private var fieldCount = 0
        private var targetLength = 0
        private var versionIndex = 0
        private var minorVersion: UInt8 = 1
        private var method = Method.unknown
        private var methodWord: UInt64 = 0
        private var methodLength = 0
        private var inTrailers = false
        private var contentLengthCount = 0
        private var contentLength = 0
        private var transferEncodingCount = 0
        private var hostCount = 0
        private var remaining = 0        // bytes left in a Content-Length body or in a chunk
        private var bodyTotal = 0        // chunk sizes so far
        private var chunkDigits = 0

        // Per header field: the lowercased name, then (for the fields we interpret) the value with its surrounding
        // whitespace left out. 24 bytes hold the longest name and value we compare against.
        private var fieldKind = FieldKind.other
        private var word = PackedWord()
        private var pendingSpace = false
        private var valueHasInnerSpace = false
        private var valueAllDigits = true

        init(limits: HTTPLimits) {
            self.limits = limits
        }

        /// Where the stream stands after the bytes scanned so far.
        var position: Position {
            switch state {
            case .start: .betweenRequests
            case .method, .target, .version, .requestLineLF, .name, .valueLeading, .value, .valueLF, .headEndLF,
                 .lineStart:
                inTrailers ? .body : .head
            case .bodyFixed, .chunkSizeStart, .chunkSize, .chunkSizeLF, .chunkData, .chunkDataCR, .chunkDataLF:
                .body
            case .dead: .head
            }
        }

        /// Whether a rejection ended the scan.
        var isDead: Bool { state == .dead }

        /// Scans the next bytes of the stream; returns why the request they belong to is refused, if it is.
        mutating func scan(_ bytes: Span<UInt8>) -> Failure? {
            var index = 0
            let count = bytes.count
            while index < count {
                switch state {
                case .bodyFixed, .chunkData:
                    // Body bytes are counted, not looked at.
                    let taken = min(remaining, count - index)
                    index += taken
                    remaining -= taken
                    if remaining == 0 {
                        if state == .bodyFixed { finishRequest() } else { state = .chunkDataCR }
                    }
                    continue
                case .dead:
                    return nil
                case .target:
                    // The request target's bytes, in one run (see `.value` below). Each byte counts against both
                    // the head and the target limit, the head's first: whichever a byte of the run crosses first is
                    // the failure, as one `step` per byte would find.
                    var end = index
                    while end < count {
                        let byte = bytes[end]
                        guard byte > 32 && byte != 127 else { break }
                        end += 1
                    }
                    let run = end - index
                    if run > 0 {
                        let headRoom = limits.maxHeaderSize - headBytes, targetRoom = limits.maxURILength - targetLength
                        if run > min(headRoom, targetRoom) {
                            state = .dead
                            return headRoom <= targetRoom ? .headerTooLarge : .uriTooLong
                        }
                        headBytes += run
                        targetLength += run
                        index = end
                        continue
                    }
                case .name:
                    // A field name's bytes, in one run (see `.value` below); the colon or anything else goes to `step`.
                    var end = index
                    while end < count {
                        let byte = bytes[end]
                        guard byte != 58 && isTokenByte(byte) else { break }
                        word.append(lowercased(byte))
                        end += 1
                    }
                    if end > index {
                        if let failure = countHeadRun(end - index) { return failure }
                        index = end
                        continue
                    }
                case .value where fieldKind == .other || fieldKind == .host:
                    // Most of a head is values whose bytes nobody reads (cookies, user agents; a Host is only
                    // counted): their ordinary bytes need only counting, so take them in one run instead of one
                    // `step` each. Anything else (CR, a control byte) ends the run and goes through `step`.
                    var end = index
                    while end < count {
                        let byte = bytes[end]
                        guard (byte >= 32 && byte != 127) || byte == 9 else { break }
                        end += 1
                    }
                    if end > index {
                        if let failure = countHeadRun(end - index) { return failure }
                        index = end
                        continue
                    }
                default:
                    break
                }
                let byte = bytes[index]
                index += 1
                if let failure = step(byte) {
                    state = .dead
                    return failure
                }
            }
            return nil
        }

        /// Counts a run of head bytes taken at once (a field name's or an uninterpreted value's) against the head
        /// limit; past it the scan is dead.
        @inline(__always)
        private mutating func countHeadRun(_ run: Int) -> Failure? {
            headBytes += run
            guard headBytes <= limits.maxHeaderSize else {
                state = .dead
                return .headerTooLarge
            }
            return nil
        }

        // MARK: Per byte

        @inline(__always)
        private mutating func step(_ byte: UInt8) -> Failure? {
            if state.rawValue <= State.headEndLF.rawValue {
                headBytes += 1
                if headBytes > limits.maxHeaderSize { return .headerTooLarge }
            }
            switch state {
            case .start:
                guard isTokenByte(byte) else { return .badRequestLine }
                state = .method
                return appendMethodByte(byte)
            case .method:
                if byte == 32 {
                    method = Self.method(methodWord, length: methodLength)
                    if method == .unknown { return .methodNotImplemented }
                    state = .target
                    return nil
                }
                guard isTokenByte(byte) else { return .badRequestLine }
                return appendMethodByte(byte)
            case .target:
                if byte == 32 {
                    guard targetLength > 0 else { return .badRequestLine }
                    state = .version
                    versionIndex = 0
                    return nil
                }
                guard byte > 32 && byte != 127 else { return .badRequestLine }
                targetLength += 1
                return targetLength > limits.maxURILength ? .uriTooLong : nil
            case .version:
                return versionByte(byte)
            case .requestLineLF:
                guard byte == 10 else { return .bareCR }
                state = .lineStart
                return nil
            case .lineStart:
                if byte == 13 {
                    state = .headEndLF
                    return nil
                }
                if byte == 32 || byte == 9 { return .obsFold }
                if byte == 10 { return .bareLF }
                guard isTokenByte(byte) else { return .badFieldName }
                fieldCount += 1
                if fieldCount > limits.maxHeaderCount { return .tooManyFields }
                word = PackedWord()
                word.append(lowercased(byte))
                state = .name
                return nil
            case .name:
                if byte == 58 {   // ':'
                    fieldKind = inTrailers ? .other : Self.fieldKind(word)
                    word = PackedWord()
                    pendingSpace = false
                    valueHasInnerSpace = false
                    valueAllDigits = true
                    state = .valueLeading
                    return nil
                }
                guard isTokenByte(byte) else { return .badFieldName }   // also a space before the colon
                word.append(lowercased(byte))
                return nil
            case .valueLeading:
                // evhttp skips only leading spaces (strspn(" ")); a leading tab stays part of its value, so a tab
                // here is a value byte (and makes Content-Length or Transfer-Encoding invalid, as they should be).
                if byte == 32 { return nil }
                state = .value
                return valueByte(byte)
            case .value:
                return valueByte(byte)
            case .valueLF:
                guard byte == 10 else { return .bareCR }
                state = .lineStart
                return endOfField()
            case .headEndLF:
                guard byte == 10 else { return .bareCR }
                return inTrailers ? finishRequest() : endOfHead()
            case .chunkSizeStart, .chunkSize:
                if let digit = hexValue(byte) {
                    chunkDigits += 1
                    // More digits than any allowed size needs means too large, before the value can overflow.
                    if chunkDigits > 15 { return .bodyTooLarge }
                    remaining = remaining << 4 | Int(digit)
                    state = .chunkSize
                    return nil
                }
                guard state == .chunkSize else { return .badChunk }
                if byte == 13 {
                    state = .chunkSizeLF
                    return nil
                }
                // evhttp's chunk parser (strtoll, then "*endp != '\0' && *endp != ' '") refuses extensions.
                return byte == 59 ? .chunkExtension : .badChunk
            case .chunkSizeLF:
                guard byte == 10 else { return .badChunk }
                chunkDigits = 0
                if remaining == 0 {
                    inTrailers = true
                    state = .lineStart
                    return nil
                }
                if remaining > limits.maxBodySize - bodyTotal { return .bodyTooLarge }
                bodyTotal += remaining
                state = .chunkData
                return nil
            case .chunkDataCR:
                guard byte == 13 else { return .badChunk }
                state = .chunkDataLF
                return nil
            case .chunkDataLF:
                guard byte == 10 else { return .badChunk }
                state = .chunkSizeStart
                return nil
            case .bodyFixed, .chunkData, .dead:
                return nil   // handled in scan(_:)
            }
        }

        @inline(__always)
        private mutating func appendMethodByte(_ byte: UInt8) -> Failure? {
            methodLength += 1
            // The longest method we serve is OPTIONS; a longer token is some method we do not implement.
            guard methodLength <= 8 else { return .methodNotImplemented }
            methodWord |= UInt64(byte) << (8 * UInt64(methodLength - 1))
            return nil
        }

        private mutating func versionByte(_ byte: UInt8) -> Failure? {
            // "HTTP/" DIGIT "." DIGIT, then CR LF.
            defer { versionIndex += 1 }
            switch versionIndex {
            case 0...4:
                let expected = UInt8(truncatingIfNeeded: Self.httpSlash >> UInt64(8 * versionIndex))
                return byte == expected ? nil : .badRequestLine
            case 5:
                guard byte >= 48 && byte <= 57 else { return .badRequestLine }
                return byte == 49 ? nil : .versionNotSupported
            case 6:
                return byte == 46 ? nil : .badRequestLine
            case 7:
                guard byte >= 48 && byte <= 57 else { return .badRequestLine }
                minorVersion = byte - 48
                return nil
            default:
                if byte == 13 {
                    state = .requestLineLF
                    return nil
                }
                return byte == 10 ? .bareLF : .badRequestLine
            }
        }

        @inline(__always)
        private mutating func valueByte(_ byte: UInt8) -> Failure? {
            if byte == 13 {
                state = .valueLF
                return nil
            }
            if byte == 10 { return .bareLF }
            // Field values are visible characters, spaces, tabs and obs-text; any other control byte (NUL among
            // them: evhttp keeps values as C strings) is refused.
            if byte < 32 && byte != 9 || byte == 127 { return .badFieldValue }
            guard fieldKind != .other else { return nil }
            if byte == 32 || byte == 9 {
                if word.count > 0 {
                    pendingSpace = true
                } else {
                    // A leading tab: evhttp keeps it in the value, so the value cannot equal a token.
                    valueHasInnerSpace = true
                }
                return nil
            }
            if pendingSpace {
                valueHasInnerSpace = true
                pendingSpace = false
            }
            if byte < 48 || byte > 57 { valueAllDigits = false }
            word.append(lowercased(byte))
            return nil
        }

        private mutating func endOfField() -> Failure? {
            switch fieldKind {
            case .other:
                return nil
            case .contentLength:
                contentLengthCount += 1
                if contentLengthCount > 1 { return .duplicateContentLength }
                guard word.count > 0 && valueAllDigits && !valueHasInnerSpace else { return .badContentLength }
                // More digits than an Int holds: the length is over any limit.
                guard word.count <= 18 else { return .bodyTooLarge }
                contentLength = word.decimalValue
                return nil
            case .transferEncoding:
                transferEncodingCount += 1
                if transferEncodingCount > 1 { return .duplicateTransferEncoding }
                return word == Self.chunked && !valueHasInnerSpace ? nil : .badTransferEncoding
            case .host:
                hostCount += 1
                return hostCount > 1 ? .duplicateHost : nil
            case .expect:
                return word == Self.continue100 && !valueHasInnerSpace ? nil : .expectationFailed
            }
        }

        private mutating func endOfHead() -> Failure? {
            if contentLengthCount > 0 && transferEncodingCount > 0 { return .lengthAndChunked }
            if transferEncodingCount > 0 && minorVersion == 0 { return .chunkedInHTTP10 }
            switch method {
            case .head:
                // evhttp reads no body for HEAD: bytes announced by a length would become the next request.
                if transferEncodingCount > 0 || contentLength > 0 { return .bodyNotAllowed }
                return finishRequest()
            default:
                // libevent 2.1.12 reads a body for every other method we serve (GET, DELETE and OPTIONS included),
                // framed as here. Without a length the body is empty.
                if transferEncodingCount > 0 {
                    bodyTotal = 0
                    remaining = 0
                    chunkDigits = 0
                    state = .chunkSizeStart
                    return nil
                }
                if contentLength > limits.maxBodySize { return .bodyTooLarge }
                if contentLength == 0 { return finishRequest() }
                remaining = contentLength
                state = .bodyFixed
                return nil
            }
        }

        @discardableResult
        private mutating func finishRequest() -> Failure? {
            completedRequests += 1
            state = .start
            headBytes = 0
            fieldCount = 0
            targetLength = 0
            minorVersion = 1
            method = .unknown
            methodWord = 0
            methodLength = 0
            inTrailers = false
            contentLengthCount = 0
            contentLength = 0
            transferEncodingCount = 0
            hostCount = 0
            remaining = 0
            bodyTotal = 0
            return nil
        }

        // MARK: Tables

        private static func method(_ word: UInt64, length: Int) -> Method {
            switch length {
            case 3: word == get ? .get : word == put ? .put : .unknown
            case 4: word == post ? .post : word == head ? .head : .unknown
            case 5: word == patch ? .patch : .unknown
            case 6: word == delete ? .delete : .unknown
            case 7: word == options ? .options : .unknown
            default: .unknown
            }
        }

        private static let get = packed("GET"), put = packed("PUT"), post = packed("POST"), head = packed("HEAD")
        private static let patch = packed("PATCH"), delete = packed("DELETE"), options = packed("OPTIONS")

        /// Up to 8 ASCII bytes, little-endian, as `appendMethodByte` builds them.
        private static func packed(_ text: StaticString) -> UInt64 {
            var value: UInt64 = 0
            text.withUTF8Buffer { bytes in
                for (index, byte) in bytes.enumerated() { value |= UInt64(byte) << (8 * UInt64(index)) }
            }
            return value
        }

        /// "HTTP/", little-endian.
        private static let httpSlash: UInt64 = 0x2f_50_54_54_48

        private static let contentLengthName = PackedWord("content-length")
        private static let transferEncodingName = PackedWord("transfer-encoding")
        private static let hostName = PackedWord("host")
        private static let expectName = PackedWord("expect")
        private static let chunked = PackedWord("chunked")
        private static let continue100 = PackedWord("100-continue")

        private static func fieldKind(_ name: PackedWord) -> FieldKind {
            switch name.count {
            case 14: name == contentLengthName ? .contentLength : .other
            case 17: name == transferEncodingName ? .transferEncoding : .other
            case 4: name == hostName ? .host : .other
            case 6: name == expectName ? .expect : .other
            default: .other
            }
        }
    }
}

// MARK: - Helpers

/// RFC 9110 `tchar`: the characters of methods and field names.
@inline(__always)
func isTokenByte(_ byte: UInt8) -> Bool {
    // Bit n of the low word is character n (0-63), of the high word character 64 + n:
    // ! # $ % & ' * + - . 0-9 A-Z ^ _ ` a-z | ~
    byte < 64 ? ((0x03ff_6cfa_0000_0000 as UInt64) >> UInt64(byte)) & 1 == 1
        : byte < 128 && ((0x57ff_ffff_c7ff_fffe as UInt64) >> UInt64(byte - 64)) & 1 == 1
}

@inline(__always)
private func lowercased(_ byte: UInt8) -> UInt8 {
    byte >= 65 && byte <= 90 ? byte | 0x20 : byte
}

@inline(__always)
private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case 48...57: byte - 48
    case 65...70: byte - 55
    case 97...102: byte - 87
    default: nil
    }
}
