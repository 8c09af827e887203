#!/usr/bin/env bash
# make chaos: Redis failures under load, on loopback. Builds evserver (release), starts a private redis-server
# (appendonly, temp dir, free port) and one evserver (--threads 2 --redis-timeout 1000), then
# scripts/chaos_load.py drives ~16 keep-alive clients through the phases
#   baseline 3 s | a: kill -9 redis-server, 5 s down, restart | b: CLIENT PAUSE 3000 | c: CLIENT KILL TYPE normal
#   | recovery
# and prints a per-phase table; the exit status is non-zero when a property fails (see chaos_load.py).
# Stops everything it started on exit. The whole run is bounded (CHAOS_TIMEOUT, default 110 s, build excluded).
#
# `scripts/chaos.sh latency` instead puts a delaying TCP proxy between evserver and Redis (scripts/chaos_latency.py)
# and checks that a session request stays within deadline + 100 ms when every Redis reply is slow but in time.
#
#   CHAOS_KEEP=1        keep the work dir (logs, requests.csv) even when the run passes
#   EVSERVER_BIN=path   use that binary instead of building one (release)
#   CHAOS_CLIENTS (16)  CHAOS_CLIENT_RATE (20 requests/s per client)  REDIS_TIMEOUT_MS (1000)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
MODE="${1:-phases}"
case "$MODE" in phases|latency) ;; *) die "usage: scripts/chaos.sh [latency]" ;; esac

ensure_chaos_tools

evserver_binary release

WORK="$(mktemp -d -t evserver-chaos.XXXXXX)"
REDIS_PORT="$(free_port)"
APP_PORT="$(free_port)"
PROXY_PORT="$(free_port)"
TIMEOUT_MS="${REDIS_TIMEOUT_MS:-1000}"
SERVER_PID=""
LOAD_PID=""
status=1

cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    # The load generator restarts redis-server (phase a): the pid file always names the current one.
    [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    remove_unless_kept "$WORK" "logs and records"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One config file, so that the restart in phase (a) is exactly the same server: port, dir, AOF.
cat >"$WORK/redis.conf" <<CONF
port $REDIS_PORT
bind 127.0.0.1
dir $WORK
appendonly yes
appendfsync everysec
save ""
daemonize yes
pidfile $WORK/redis.pid
logfile $WORK/redis.log
CONF
redis-server "$WORK/redis.conf" >/dev/null || die "redis-server failed to start (see $WORK/redis.log)"
wait_for_redis "$REDIS_PORT" "$WORK/redis.log"

SERVER_REDIS_PORT="$REDIS_PORT"
[ "$MODE" = latency ] && SERVER_REDIS_PORT="$PROXY_PORT"
SESSION_SECRET="chaos-secret-0123456789abcdef0123456789abcdef" INSTANCE_NAME=chaos \
    "$BIN" --host 127.0.0.1 --port "$APP_PORT" --threads 2 --redis-timeout "$TIMEOUT_MS" \
    --redis-url "redis://127.0.0.1:$SERVER_REDIS_PORT/0" >"$WORK/evserver.log" 2>&1 &
SERVER_PID=$!

if [ "$MODE" = latency ]; then
    log "redis-server :$REDIS_PORT, delaying proxy :$PROXY_PORT, evserver :$APP_PORT (deadline ${TIMEOUT_MS} ms)"
    set +e
    timeout "${CHAOS_TIMEOUT:-110}" python3 -u scripts/chaos_latency.py --port "$APP_PORT" \
        --listen-port "$PROXY_PORT" --redis-port "$REDIS_PORT" --redis-timeout "$TIMEOUT_MS" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    status=$?
    LOAD_PID=""
    exit "$status"
fi
wait_ready "$APP_PORT" "$SERVER_PID" "$WORK/evserver.log"
log "redis-server :$REDIS_PORT (appendonly, $WORK), evserver :$APP_PORT pid $SERVER_PID (threads 2, deadline ${TIMEOUT_MS} ms)"

started=$(date +%s)
set +e
timeout --signal=TERM "${CHAOS_TIMEOUT:-110}" python3 -u scripts/chaos_load.py \
    --port "$APP_PORT" --server-pid "$SERVER_PID" --redis-port "$REDIS_PORT" \
    --redis-conf "$WORK/redis.conf" --redis-pidfile "$WORK/redis.pid" --redis-timeout "$TIMEOUT_MS" \
    --clients "${CHAOS_CLIENTS:-16}" --client-rate "${CHAOS_CLIENT_RATE:-20}" --records "$WORK/requests.csv" &
LOAD_PID=$!
wait "$LOAD_PID"
status=$?
LOAD_PID=""
set -e
[ "$status" -eq 124 ] && log "the chaos run exceeded ${CHAOS_TIMEOUT:-110} s"

# The server must still be the same live process, and must not have logged a crash.
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "evserver is gone; its last log lines:"; tail -n 20 "$WORK/evserver.log" >&2; status=1
elif grep -qE "Fatal error|fatal error|Illegal instruction|Segmentation|AddressSanitizer" "$WORK/evserver.log"; then
    log "evserver logged a crash:"; grep -E "Fatal|fatal|Illegal|Segmentation|Sanitizer" "$WORK/evserver.log" >&2
    status=1
fi
log "server log: $(grep -c ' warning ' "$WORK/evserver.log" || true) warnings, $(grep -c ' error ' "$WORK/evserver.log" || true) errors"
log "chaos run took $(( $(date +%s) - started )) s"
exit "$status"
