# Build stage: the official Swift image on Debian bookworm, so the runtime's libevent/hiredis match. The version is
# the toolchain the code is built and tested with (Swift 6.3).
ARG SWIFT_VERSION=6.3
FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libevent-dev libhiredis-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Resolve dependencies first so source edits do not refetch them.
COPY Package.swift ./
COPY Sources/CEvent Sources/CEvent
COPY Sources/CHiredis Sources/CHiredis
COPY Sources/COpenSSL Sources/COpenSSL
RUN swift package resolve
COPY Sources Sources
RUN swift build -c release --product evserver --static-swift-stdlib \
    && cp "$(swift build -c release --product evserver --show-bin-path)/evserver" /evserver

# Runtime stage: slim Debian with only the C libraries' runtime packages, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libevent-2.1-7 libevent-openssl-2.1-7 libssl3 libhiredis0.14 libstdc++6 curl \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin evserver
COPY --from=build /evserver /usr/local/bin/evserver
USER evserver
ENV EVSERVER_HOST=0.0.0.0 PORT=3000
EXPOSE 3000
# Shell form, so a PORT set at run time is the port checked.
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD curl -fsS "http://127.0.0.1:${PORT:-3000}/readyz" || exit 1
ENTRYPOINT ["/usr/local/bin/evserver"]
