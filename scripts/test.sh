#!/usr/bin/env bash
# make test: installs what is missing, starts a private redis-server on a free port, runs `swift test`, stops it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_build_deps
ensure_packages node-cookie-signature nodejs haproxy python3-yaml

WORK="$(mktemp -d -t evserver-test.XXXXXX)"
PORT="$(free_port)"
cleanup() { stop_redis "$WORK"; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

start_redis "$PORT" "$WORK"
log "redis-server on 127.0.0.1:$PORT"

export REDIS_HOST=127.0.0.1 REDIS_PORT="$PORT"
swift build --build-tests "$@"
swift test --skip-build "$@"
