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

    func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let own = event.metadata { fields.merge(own) { _, new in new } }
        output(Self.line(timestamp: Date(), level: event.level, label: label, message: event.message.description,
                         metadata: fields))
    }

    private static let reserved: Set<String> = ["timestamp", "level", "label", "message"]

    /// One JSON line, newline included. Metadata keys are sorted, so equal lines compare equal.
    static func line(timestamp: Date, level: Logger.Level, label: String, message: String,
                     metadata: Logger.Metadata) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        func field(_ key: String, _ value: String) {
            out.append(out.isEmpty ? UInt8(ascii: "{") : UInt8(ascii: ","))
            JSONValue.serializeString(key, into: &out)
            out.append(UInt8(ascii: ":"))
            JSONValue.serializeString(value, into: &out)
        }
        field("timestamp", iso8601(timestamp))
        field("level", level.rawValue)
        field("label", label)
        field("message", message)
        for key in metadata.keys.sorted() {
            field(reserved.contains(key) ? "meta_" + key : key, metadata[key]!.description)
        }
        out += [UInt8(ascii: "}"), UInt8(ascii: "\n")]
        return out
    }

    /// `2026-12-07T03:41:00.123Z`.
    static func iso8601(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        let days = milliseconds >= 0 ? milliseconds / 86_400_000 : (milliseconds - 86_399_999) / 86_400_000
        let inDay = milliseconds - days * 86_400_000
        let (year, month, day) = CivilDate.civil(fromDays: days)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(inDay / 3_600_000, 2)):"
            + "\(pad(inDay / 60_000 % 60, 2)):\(pad(inDay / 1000 % 60, 2)).\(pad(inDay % 1000, 3))Z"
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
