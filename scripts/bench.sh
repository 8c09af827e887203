#!/usr/bin/env bash
# make bench: evserver (release build) against a hand-written C reference server, under wrk, with a private
# redis-server. Prints a markdown table and writes it to bench-results/. See BENCHMARKS.md.
#
#   scripts/bench.sh                 the scenarios (hello, read, read-tls, write, hot, create) -> bench-results/latest.md,
#                                    and the table as a chart beside it (latest.png, scripts/bench_chart.py; with the
#                                    --threads 2 run of the same commit when bench-results holds one)
#                                    read-tls: `read` with evserver on a second, TLS-only redis-server (rediss://,
#                                    certificates from scripts/tls_certs.sh), compared with evserver's plain `read`
#   scripts/bench.sh --threads 2     the same with both servers on 2 threads        -> bench-results/threads-2.md
#   scripts/bench.sh --memory        RSS growth (200k vs 2M writes) and 10k idle connections -> bench-results/memory.md
#   scripts/bench.sh --growth | --idle          one of the two memory checks
#   scripts/bench.sh --smoke         1 s per scenario plus tiny memory checks: checks that the harness works
# Options: --servers evserver,reference (the last is the ratios' baseline; `reference,reference` runs the harness
#          without evserver) --scenarios hello,read,... --evserver PATH (skip the Swift build) --no-build
# Environment: BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_CONNECTIONS (64), BENCH_PIN (1: server on CPU 0, wrk
#          and redis-server on CPU 1; 0: no taskset), BENCH_OUT (report path), BENCH_IDLE_CONNECTIONS (10000),
#          BENCH_CHECKPOINTS (200000,2000000), BENCH_WAIT_QUIET (0: seconds to wait, before each run, for other
#          processes to leave the CPUs idle; for shared machines), BENCH_RETRY_NOISY (0: times to repeat a run
#          that other processes disturbed, keeping the calmest), BENCH_HOT_CONNECTIONS (8,16,64: the `hot` scenario,
#          all connections on one session, runs once per count).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

mode=scenarios threads=1 smoke=0 build=1 servers=evserver,reference scenarios=hello,read,read-tls,write,hot,create evserver=""
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads="$2"; shift ;;
        --memory) mode=memory ;;
        --growth) mode=growth ;;
        --idle) mode=idle ;;
        --smoke) smoke=1 ;;
        --servers) servers="$2"; shift ;;
        --scenarios) scenarios="$2"; shift ;;
        --evserver) evserver="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see scripts/bench.sh --help)" ;;
    esac
    shift
done
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads needs a positive number"

if [ "$smoke" = 1 ]; then
    : "${BENCH_DURATION:=1s}" "${BENCH_WARMUP:=1s}" "${BENCH_CHECKPOINTS:=50000,150000}" "${BENCH_IDLE_CONNECTIONS:=1000}"
fi
duration="${BENCH_DURATION:-10s}" warmup="${BENCH_WARMUP:-2s}"

ensure_build_deps
ensure_packages wrk libssl-dev util-linux

# CPU placement: the server alone on CPU 0 (CPUs 0..N-1 with --threads N), wrk and redis-server on the last CPU.
cpus="$(nproc)" server_cpus="" client_cpus=""
if [ "${BENCH_PIN:-1}" = 1 ] && [ "$cpus" -ge 2 ] && command -v taskset >/dev/null; then
    last=$((cpus - 1))
    client_cpus="$last"
    if [ "$threads" -eq 1 ]; then server_cpus=0; else server_cpus="0-$(( threads - 1 < last ? threads - 1 : last ))"; fi
elif [ "${BENCH_PIN:-1}" = 1 ] && [ "$smoke" = 0 ]; then
    log "warning: no CPU pinning (needs taskset and 2 CPUs): numbers will be noisy"
fi

# Build what is measured.
server_args=() tls_labels=()
reference_bin="$ROOT/.build-bench/reference"
n=0
IFS=, read -ra names <<< "$servers"
for name in "${names[@]}"; do
    n=$((n + 1))
    label="$name"
    for earlier in "${server_args[@]}"; do [ "${earlier%%=*}" = "$name" ] && label="$name-$n"; done
    case "$name" in
        evserver)
            if [ -z "$evserver" ]; then
                if [ "$build" = 1 ]; then
                    log "building evserver (release)"
                    swift build -c release --product evserver >&2 || die "swift build failed"
                fi
                evserver="$(swift build -c release --show-bin-path)/evserver"
            fi
            [ -x "$evserver" ] || die "no evserver binary at $evserver"
            server_args+=("$label=$evserver")
            tls_labels+=("$label") ;;
        reference)
            if [ "$build" = 1 ]; then make -s -C Benchmarks/reference >&2 || die "building the C reference failed"; fi
            [ -x "$reference_bin" ] || die "no reference binary at $reference_bin"
            server_args+=("$label=$reference_bin") ;;
        *) die "unknown server $name (known: evserver, reference)" ;;
    esac
done

case "$mode" in
    scenarios) default_out="bench-results/$([ "$smoke" = 1 ] && echo smoke || { [ "$threads" = 1 ] && echo latest || echo "threads-$threads"; }).md" ;;
    *) default_out="bench-results/$([ "$smoke" = 1 ] && echo smoke-memory || { [ "$mode" = memory ] && echo memory || echo "memory-$mode"; }).md" ;;
esac
out="${BENCH_OUT:-$default_out}"
[ "$smoke" = 1 ] && [ "$mode" = scenarios ] && mode=smoke

# Idle connections need one descriptor each, in the server and in the client.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$(mktemp -d -t evserver-bench.XXXXXX)"
mkdir -p "$WORK/pids"
status=1 child=""
cleanup() {
    # Everything this run started: the Python driver (it stops its servers on SIGTERM), then whatever pid files
    # are left (servers and clients it started, in case it could not), then Redis.
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
    fi
    for f in "$WORK"/pids/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    stop_redis "$WORK/redis-tls"
    stop_redis "$WORK"
    if [ "$status" = 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

redis_port="$(free_port)"
start_redis "$redis_port" "$WORK"
[ -n "$client_cpus" ] && taskset -a -p -c "$client_cpus" "$(cat "$WORK/redis.pid")" >/dev/null
log "redis-server on 127.0.0.1:$redis_port${client_cpus:+ (CPU $client_cpus)}; servers: ${server_args[*]}"

# read-tls: a second redis-server that only speaks TLS, with a CA and certificate made now (scripts/tls_certs.sh),
# for the servers that can use it (evserver; the C reference has no TLS).
tls_flags=()
if [ "$mode" != growth ] && [ "$mode" != idle ] && [ "$mode" != memory ] && [[ ",$scenarios," == *,read-tls,* ]] \
        && [ ${#tls_labels[@]} -gt 0 ]; then
    scripts/tls_certs.sh "$WORK/tls" || die "could not make the TLS certificates"
    tls_port="$(free_port)"
    mkdir -p "$WORK/redis-tls"
    redis-server --port 0 --tls-port "$tls_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis-tls" \
        --tls-cert-file "$WORK/tls/server.crt" --tls-key-file "$WORK/tls/server.key" \
        --tls-ca-cert-file "$WORK/tls/ca.crt" --tls-auth-clients no \
        --daemonize yes --pidfile "$WORK/redis-tls/redis.pid" --logfile "$WORK/redis-tls/redis.log" >/dev/null \
        || die "redis-server with TLS failed to start (see $WORK/redis-tls/redis.log; needs a Redis built with TLS)"
    for _ in $(seq 1 100); do
        [ "$(redis-cli --tls --cacert "$WORK/tls/ca.crt" -p "$tls_port" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
    [ "$(redis-cli --tls --cacert "$WORK/tls/ca.crt" -p "$tls_port" ping 2>/dev/null)" = PONG ] \
        || die "the TLS redis-server on port $tls_port did not answer PING (see $WORK/redis-tls/redis.log)"
    [ -n "$client_cpus" ] && taskset -a -p -c "$client_cpus" "$(cat "$WORK/redis-tls/redis.pid")" >/dev/null
    log "redis-server with TLS on 127.0.0.1:$tls_port (CA $WORK/tls/ca.crt) for read-tls: ${tls_labels[*]}"
    tls_flags=(--tls-redis-port "$tls_port" --tls-ca "$WORK/tls/ca.crt" --tls-servers "$(IFS=,; echo "${tls_labels[*]}")")
fi

server_flags=()
for s in "${server_args[@]}"; do server_flags+=(--server "$s"); done
# The driver runs in the background and the script waits for it: a trapped signal interrupts `wait` at once,
# whereas bash would let a foreground command run to its end before acting on SIGTERM.
run() {
    python3 scripts/bench_run.py --work "$WORK" --redis-port "$redis_port" --threads "$threads" \
        --duration "$duration" --warmup "$warmup" --connections "${BENCH_CONNECTIONS:-64}" \
        --hot-connections "${BENCH_HOT_CONNECTIONS:-8,16,64}" \
        --server-cpus "$server_cpus" --client-cpus "$client_cpus" \
        --checkpoints "${BENCH_CHECKPOINTS:-200000,2000000}" --idle-connections "${BENCH_IDLE_CONNECTIONS:-10000}" \
        --wait-quiet "${BENCH_WAIT_QUIET:-0}" --retry-noisy "${BENCH_RETRY_NOISY:-0}" \
        "${server_flags[@]}" "${tls_flags[@]}" "$@" &
    child=$!
    wait "$child"
}

# chart REPORT.md: the report's table as REPORT.png, with the other thread count's report of the same commit
# (bench-results/latest.md and threads-2.md) when there is one. matplotlib from python3, else Debian's.
chart() {
    local report="$1" others=() python=python3 commit other
    commit="$(sed -n '3s/.*commit `\([0-9a-f]*\)`.*/\1/p' "$report")"
    for other in bench-results/latest.md bench-results/threads-2.md; do
        [ "$other" != "$report" ] && [ -f "$other" ] && [ -f "${other%.md}.json" ] && [ -n "$commit" ] \
            && grep -q "commit \`$commit\`" "$other" && others+=("${other%.md}.json")
    done
    if ! python3 -c 'import matplotlib' 2>/dev/null; then
        ensure_packages python3-matplotlib
        python=/usr/bin/python3
    fi
    "$python" scripts/bench_chart.py "${report%.md}.json" "${others[@]}" --out "${report%.md}.png" >&2
}

started=$SECONDS
if [ "$mode" = smoke ]; then
    run --mode scenarios --scenarios "$scenarios" --out "$out" --title "smoke run (${duration} per scenario)"
    chart "$out"
    run --mode memory --out "${out%.md}-memory.md" --title "smoke run (small sizes)"
else
    run --mode "$mode" --scenarios "$scenarios" --out "$out" \
        --title "$([ "$threads" = 1 ] && echo "single thread" || echo "--threads $threads")"
    [ "$mode" = scenarios ] && chart "$out"
fi
status=0
log "done in $((SECONDS - started)) s"
