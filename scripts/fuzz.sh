#!/usr/bin/env bash
# make fuzz / make fuzz-smoke: builds the libFuzzer target (Fuzz/, a package of its own that depends on this one by
# path, so the root `swift build` never sees the sanitizer flags) and runs it.
#   scripts/fuzz.sh [SECONDS | -runs=N] [more libFuzzer flags]     default: 60 seconds
#   scripts/fuzz.sh -runs=0                                        replays the seeds only
#   scripts/fuzz.sh CRASH_FILE                                     replays one input (a crash or a regression seed)
# The committed seeds (Fuzz/corpus, regression inputs included) are read, never written; inputs the fuzzer finds go
# to .build-fuzz/corpus, crashes and leaks to .build-fuzz/artifacts/. ASan's leak checker stays on (libFuzzer's
# default). Exit status: 0 when nothing was found.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

# Swift's own crash backtracer fights ASan over the crashing process; libFuzzer and ASan report crashes themselves.
export SWIFT_BACKTRACE=enable=no

ensure_build_deps
SCRATCH="$ROOT/.build-fuzz"
# -c release: optimised (about 3x the executions per second of debug) with Swift's runtime checks (overflow,
# bounds, preconditions) intact; -parse-as-library because libFuzzer's driver is the program's main.
BUILD=(swift build --package-path Fuzz --scratch-path "$SCRATCH" -c release
       -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library --product EvServerFuzz)
log "building the fuzz target"
"${BUILD[@]}" 2>&1 | grep -vE "ld.gold: warning: Cannot export local symbol|prohibited flag" >&2 || true
BIN="$("${BUILD[@]}" --show-bin-path)/EvServerFuzz"
[ -x "$BIN" ] || die "the fuzz target did not build"

mkdir -p "$SCRATCH/corpus" "$SCRATCH/artifacts"
FLAGS=(-dict=Fuzz/fuzz.dict -artifact_prefix="$SCRATCH/artifacts/" -print_final_stats=1 -max_len=4096)

if [ $# -ge 1 ] && [ -f "$1" ]; then
    log "replaying $1"
    exec "$BIN" "${FLAGS[@]}" "$@"
fi

limit="${1:-60}"
[ $# -ge 1 ] && shift
if [[ "$limit" =~ ^[0-9]+$ ]]; then
    limit="-max_total_time=$limit"
fi
log "fuzzing ($limit); corpus $SCRATCH/corpus + Fuzz/corpus"
exec "$BIN" "${FLAGS[@]}" "$limit" "$@" "$SCRATCH/corpus" Fuzz/corpus
