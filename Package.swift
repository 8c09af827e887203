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
        .library(name: "RedisClient", targets: ["RedisClient"]),
        .library(name: "RedisSessionStore", targets: ["RedisSessionStore"]),
        .executable(name: "evserver", targets: ["EvServerApp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),   // LogHandler.log(event:)
        // Metrics through the ecosystem's API (the libraries emit, the application picks the backend), and the
        // Prometheus backend that `evserver` bootstraps for /metrics.
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        // Spans through the ecosystem's tracing API (the application bootstraps a tracer, swift-otel say); its
        // InMemoryTracing module serves the tests.
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.0"),
    ],
    targets: [
        .systemLibrary(name: "CEvent", pkgConfig: "libevent",
                       providers: [.apt(["libevent-dev"]), .brew(["libevent"])]),
        // No pkgConfig: hiredis's .pc adds `-D_FILE_OFFSET_BITS=64`, which SwiftPM refuses with a warning on every
        // build (and ignores); its headers are reached as <hiredis/...> from the default include path, and the
        // module map links the library.
        .systemLibrary(name: "CHiredis", providers: [.apt(["libhiredis-dev"]), .brew(["hiredis"])]),
        // libevent's TLS bufferevents (libevent_openssl) and OpenSSL: the TLS leg to Redis.
        .systemLibrary(name: "COpenSSL", pkgConfig: "libevent_openssl",
                       providers: [.apt(["libevent-dev", "libssl-dev"]), .brew(["libevent", "openssl@3"])]),
        .target(name: "EvServer", dependencies: [
            "CEvent",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ]),
        // The async Redis client, usable without sessions: RESP through hiredis's reader, connections on libevent
        // bufferevents (TLS through COpenSSL), deadlines, Cluster and Sentinel. From EvServer it needs the EventLoop
        // only. The module and its main type share the name `RedisClient`, as `RedisSessionStore` does: nothing
        // needs to spell `RedisClient.RedisClient`, and no module interface is emitted that would.
        .target(name: "RedisClient", dependencies: [
            "EvServer", "CEvent", "CHiredis", "COpenSSL",
            .product(name: "Crypto", package: "swift-crypto"),   // SHA-1 of scripts, for EVALSHA
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ]),
        // Sessions (express-session compatible), their stores, cookie signing and the session middleware.
        .target(name: "RedisSessionStore", dependencies: [
            "EvServer", "RedisClient",
            "COpenSSL",                                           // cookie signatures (HMAC-SHA256, KeyedHMAC.swift)
            .product(name: "Crypto", package: "swift-crypto"),   // SHA-256 of user names for the per-user index
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "EvServerApp", dependencies: [
            "EvServer", "RedisClient", "RedisSessionStore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ]),
        .testTarget(name: "StoreTests", dependencies: [
            "EvServer", "RedisClient", "RedisSessionStore", "EvServerApp",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
        ]),
    ]
)
