#!/usr/bin/env bash
# make tsan: the multi-loop tests (several event loops, each with its own evhttp and Redis connection, one shared
# in-memory store) under ThreadSanitizer, against a private redis-server. A data race fails the run.
#   TSAN_FILTER (default: the suites that run several loops at once)   extra arguments go to `swift test`
# Builds into .build-tsan (a separate build: the sanitizer changes every object file).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_build_deps
start_test_redis tsan

# Synchronization.Mutex is a futex lock TSan cannot see into (its lock and unlock are inline atomics it does not
# model as a lock), so every access guarded by one is reported. These entries silence exactly the types whose
# state lives behind a Mutex; any other race still fails the run.
export TSAN_OPTIONS="suppressions=$ROOT/Tests/tsan-suppressions.txt halt_on_error=1 second_deadlock_stack=1"
FILTER="${TSAN_FILTER:-MultiLoopTests|MemorySessionStoreTests}"
swift build --build-tests --sanitize=thread --scratch-path .build-tsan
swift test --skip-build --sanitize=thread --scratch-path .build-tsan --filter "$FILTER" "$@"
