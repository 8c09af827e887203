import Foundation
import Testing

/// The house rule "unsafe C interop stays in a thin layer per C library", checked: pointers, `Unmanaged`, C function
/// pointers and raw C memory appear only in the layer files (ARCHITECTURE.md lists them and why).
@Suite("C interop layers")
struct CInteropLayerTests {
    /// The layer files, by library: libevent (the loop, evhttp, the listening sockets, Redis bufferevents), hiredis,
    /// OpenSSL (TLS, and the cookie signature's SHA-256).
    static let layers: Set<String> = [
        "EvServer/Libevent.swift", "EvServer/ListeningSockets.swift", "EvServer/HTTPServer.swift",
        "RedisClient/RedisSocket.swift", "RedisClient/Hiredis.swift", "RedisClient/TLSContext.swift",
        "RedisSessionStore/KeyedHMAC.swift",
    ]

    /// What counts as C interop: typed and raw pointers, `Unmanaged`, `OpaquePointer`, `@convention(c)`, the
    /// `withUnsafe...` views of memory, and C's allocator (not a Swift method that happens to be named `free()`).
    static var interop: some RegexComponent { #/Unsafe[A-Za-z]*Pointer|Unmanaged|OpaquePointer|@convention\(c\)|withUnsafe[A-Za-z]*(Bytes|Pointer)|(^|[^.\w])(malloc|calloc|realloc|free|strdup)\(/# }

    static let hints = ["Unsafe", "Unmanaged", "OpaquePointer", "@convention", "alloc(", "free(", "strdup("]

    static var sources: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources")
    }

    @Test func unsafeCodeStaysInTheLayerFiles() throws {
        let files = try FileManager.default.subpathsOfDirectory(atPath: Self.sources.path).filter { $0.hasSuffix(".swift") }
        #expect(files.count > 50)   // the walk found the sources
        var outside: [String] = []
        var layersUsed: Set<String> = []
        for file in files {
            let text = try String(contentsOf: Self.sources.appendingPathComponent(file), encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let code = line.split(separator: "//", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                // A cheap look first (the regex is slow in a debug build), and a Swift method named `free()` is not C's.
                guard Self.hints.contains(where: { code.contains($0) }), !code.contains("func free("),
                      code.contains(Self.interop) else { continue }
                if Self.layers.contains(file) { layersUsed.insert(file) } else { outside.append("\(file):\(number + 1): \(line)") }
            }
        }
        #expect(outside.isEmpty, "C interop outside the layer files:\n\(outside.joined(separator: "\n"))")
        // Each listed layer still holds interop (a stale list would let a file off the hook).
        #expect(layersUsed == Self.layers, "listed but without interop: \(Self.layers.subtracting(layersUsed).sorted())")
    }
}
