#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import EvServer
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The log lines of `evserver`: swift-log's text lines (StreamLogHandler) or one JSON object per line for log
// shippers (`--log-format json`), on stderr, at LOG_LEVEL; each with the instance name and, while a request is
// served, its id (RequestID.metadataProvider).

/// `--log-format`.
enum LogFormat: String, Sendable, CaseIterable {
    /// swift-log's own lines: `2026-12-07T03:41:00+0000 info evserver.access : instance=app1 ... [EvServer] GET / 200`.
    case text
    /// One JSON object per line: `{"timestamp":"…","level":"info","label":"…","message":"…",<metadata>}`.
    case json
}

/// Logs to stderr at LOG_LEVEL (trace, debug, info, notice, warning, error, critical), else `defaultLevel`, in
/// `format`; every line carries `instance` when given, and the request id while a request is served.
func bootstrapLogging(format: LogFormat = .text, instance: String? = nil, defaultLevel: Logger.Level = .info) {
    let configured = ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) }
    let level = configured ?? defaultLevel
    LoggingSystem.bootstrap({ label, provider in
        var handler: any LogHandler = switch format {
        case .text: StreamLogHandler.standardError(label: label, metadataProvider: provider)
        case .json: JSONLogHandler(label: label, metadataProvider: provider)
        }
        handler.logLevel = level
        if let instance { handler[metadataKey: "instance"] = .string(instance) }
        return handler
    }, metadataProvider: RequestID.metadataProvider)
}

/// A swift-log handler that writes each message as one line of JSON: `timestamp` (UTC, milliseconds), `level`,
/// `label`, `message`, then the metadata as top-level string fields (a key that would shadow one of those four is
/// written with a `meta_` prefix). Lines go to stderr whole, one write each, under a lock shared by all handlers,
/// so lines from several threads never interleave.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    /// Where the lines go (stderr); tests pass their own.
    private let output: @Sendable ([UInt8]) -> Void

    init(label: String, metadataProvider: Logger.MetadataProvider? = nil,
         output: @escaping @Sendable ([UInt8]) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.output = output
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    // The access log writes a line per request: the fields go straight from the three metadata sources into the
    // line, without merging them into a dictionary first (a merge allocates and rehashes, about half the cost of a
    // line when this was measured).
    func log(event: LogEvent) {
        var fields: [(key: String, value: Logger.Metadata.Value)] = []
        fields.reserveCapacity(metadata.count + (event.metadata?.count ?? 0) + 1)
        // Later sources win: the event's own over the provider's over the handler's.
        func add(_ source: Logger.Metadata) {
            for (key, value) in source {
                if let index = fields.firstIndex(where: { $0.key == key }) {
                    fields[index].value = value
                } else {
                    fields.append((key, value))
                }
            }
        }
        add(metadata)
        if let provided = metadataProvider?.get(), !provided.isEmpty { add(provided) }
        if let own = event.metadata { add(own) }
        output(Self.line(timestamp: Date(), level: event.level, label: label, message: event.message.description,
                         fields: fields))
    }

    private static let reserved: Set<String> = ["timestamp", "level", "label", "message"]

    /// One JSON line, newline included. Metadata keys are sorted, so equal lines compare equal.
    static func line(timestamp: Date, level: Logger.Level, label: String, message: String,
                     metadata: Logger.Metadata) -> [UInt8] {
        line(timestamp: timestamp, level: level, label: label, message: message,
             fields: metadata.map { (key: $0.key, value: $0.value) })
    }

    static func line(timestamp: Date, level: Logger.Level, label: String, message: String,
                     fields: [(key: String, value: Logger.Metadata.Value)]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(320)
        func key(_ key: String) {
            out.append(out.isEmpty ? UInt8(ascii: "{") : UInt8(ascii: ","))
            JSONValue.serializeString(key, into: &out)
            out.append(UInt8(ascii: ":"))
        }
        key("timestamp")
        out.append(UInt8(ascii: "\""))
        appendISO8601(timestamp, to: &out)
        out.append(UInt8(ascii: "\""))
        key("level")
        JSONValue.serializeString(level.rawValue, into: &out)
        key("label")
        JSONValue.serializeString(label, into: &out)
        key("message")
        JSONValue.serializeString(message, into: &out)
        for field in fields.sorted(by: { $0.key < $1.key }) {
            key(reserved.contains(field.key) ? "meta_" + field.key : field.key)
            if case .string(let text) = field.value {
                JSONValue.serializeString(text, into: &out)
            } else {
                JSONValue.serializeString(field.value.description, into: &out)
            }
        }
        out += [UInt8(ascii: "}"), UInt8(ascii: "\n")]
        return out
    }

    /// `2026-12-07T03:41:00.123Z`.
    static func iso8601(_ date: Date) -> String {
        var out: [UInt8] = []
        appendISO8601(date, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `2026-12-07T03:41:00.123Z` digit by digit (string interpolation cost more than the rest of a line).
    static func appendISO8601(_ date: Date, to out: inout [UInt8]) {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        let days = milliseconds >= 0 ? milliseconds / 86_400_000 : (milliseconds - 86_399_999) / 86_400_000
        let inDay = milliseconds - days * 86_400_000
        let (year, month, day) = CivilDate.civil(fromDays: days)
        func digits(_ value: Int64, _ width: Int) {
            var divisor: Int64 = 1
            for _ in 1..<width { divisor *= 10 }
            var rest = max(0, value)
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest / divisor % 10))
                rest %= divisor
                divisor /= 10
            }
        }
        digits(year, 4)
        out.append(UInt8(ascii: "-"))
        digits(month, 2)
        out.append(UInt8(ascii: "-"))
        digits(day, 2)
        out.append(UInt8(ascii: "T"))
        digits(inDay / 3_600_000, 2)
        out.append(UInt8(ascii: ":"))
        digits(inDay / 60_000 % 60, 2)
        out.append(UInt8(ascii: ":"))
        digits(inDay / 1000 % 60, 2)
        out.append(UInt8(ascii: "."))
        digits(inDay % 1000, 3)
        out.append(UInt8(ascii: "Z"))
    }

    private static let stderrLock = Mutex(())

    /// Writes `line` to file descriptor 2 (whole lines under the lock: no interleaving with other threads' lines).
    @Sendable static func standardError(_ line: [UInt8]) {
        stderrLock.withLock { _ in
            var rest = line
            while !rest.isEmpty {
                let written = write(2, rest, rest.count)
                if written > 0 {
                    rest.removeFirst(written)
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }
}
