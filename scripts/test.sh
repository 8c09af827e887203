#!/usr/bin/env bash
# make test: installs what is missing, starts a private redis-server on a free port, runs `swift test`, then builds
# a package against this one as a user would (scripts/package-check.sh, on the same redis-server), and stops it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_build_deps
ensure_packages node-cookie-signature nodejs haproxy python3-yaml

start_test_redis test
swift build --build-tests "$@"
swift test --skip-build "$@"
scripts/package-check.sh
