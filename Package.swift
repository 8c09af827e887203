// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "EvServer",
    // Built and tested on Linux only (Debian 12, x86_64, Swift 6.3: `make test`). The macOS minimum lets the
    // manifest resolve there; nothing builds or tests this package on macOS (the Linux-only calls sit behind
    // `#if os(Linux)`, with portable libevent fallbacks that have never been compiled).
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "EvServer", targets: ["EvServer"]),
        .library(name: "RedisSessionStore", targets: ["RedisSessionStore"]),
        .executable(name: "evserver", targets: ["EvServerApp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(name: "CEvent", pkgConfig: "libevent",
                       providers: [.apt(["libevent-dev"]), .brew(["libevent"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis",
                       providers: [.apt(["libhiredis-dev"]), .brew(["hiredis"])]),
        // libevent's TLS bufferevents (libevent_openssl) and OpenSSL: the TLS leg to Redis.
        .systemLibrary(name: "COpenSSL", pkgConfig: "libevent_openssl",
                       providers: [.apt(["libevent-dev", "libssl-dev"]), .brew(["libevent", "openssl@3"])]),
        .target(name: "EvServer", dependencies: [
            "CEvent",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "RedisSessionStore", dependencies: [
            "EvServer", "CHiredis", "COpenSSL",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "EvServerApp", dependencies: [
            "EvServer", "RedisSessionStore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "StoreTests", dependencies: ["EvServer", "RedisSessionStore", "EvServerApp"]),
    ]
)
