// swift-tools-version: 6.0
// The libFuzzer target, kept out of the root package so that `swift build` never sees -sanitize=fuzzer.
// Build and run it with scripts/fuzz.sh (see Fuzz/README.md).
import Foundation
import PackageDescription

// The root package is a path dependency, and SwiftPM names a path dependency after its directory (the checkout's
// or worktree's name, not "EvServer"), so the identity is read from where this manifest sits.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let rootIdentity = root.lastPathComponent

let package = Package(
    name: "EvServerFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(path: root.path),
    ],
    targets: [
        .target(name: "CFuzzerDriver"),
        .executableTarget(
            name: "EvServerFuzz",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "EvServer", package: rootIdentity),
                .product(name: "RedisClient", package: rootIdentity),
                .product(name: "RedisSessionStore", package: rootIdentity),
            ]
        ),
    ]
)
