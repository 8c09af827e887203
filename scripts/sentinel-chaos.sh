#!/usr/bin/env bash
# make sentinel-chaos: evserver on Redis Sentinel under load, on loopback. Starts a primary, its replica and three
# sentinels (scripts/redis-sentinel.sh) and one evserver (--threads 2 --redis-sentinel ...), then
# scripts/sentinel_chaos.py drives keep-alive clients (a few hundred requests/s) through the phases
#   baseline 3 s | failover: SENTINEL FAILOVER | settle: the old primary rejoins as a replica | kill -9 the primary
#   | recovery
# and prints a table per phase; the exit status is non-zero when a property fails (only 200/503, never slower than
# the limit, served again within 2 s of the sentinels' switch; see sentinel_chaos.py). Stops everything on exit.
#
#   EVSERVER_BIN=path     use that binary instead of building one (release)
#   CHAOS_PORT_BASE       (16380: primary 16380, replica 16381, sentinels 16390-16392)
#   CHAOS_CLIENTS (16)    CHAOS_CLIENT_RATE (20 requests/s per client)    REDIS_TIMEOUT_MS (1000)
#   CHAOS_KEEP=1 keeps the logs
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_chaos_tools

evserver_binary release
# (Not `--help | grep -q`: grep quits at the first match, and pipefail would count evserver's SIGPIPE.)
help_text="$("$BIN" --help 2>&1 || true)"
[[ "$help_text" == *--redis-sentinel* ]] || die "$BIN has no --redis-sentinel option"

BASE="${CHAOS_PORT_BASE:-16380}"
PRIMARY_PORT="$BASE"
REPLICA_PORT="$((BASE + 1))"
SENTINEL_BASE="$((BASE + 10))"
TIMEOUT_MS="${REDIS_TIMEOUT_MS:-1000}"
APP_PORT="$(free_port)"
WORK="$(mktemp -d -t evserver-sentinel-chaos.XXXXXX)"
SERVER_PID=""
status=1

cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    [ -d "$WORK/sentinel" ] && scripts/redis-sentinel.sh stop "$WORK/sentinel" || true
    wait 2>/dev/null || true
    remove_unless_kept "$WORK" "logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the primary, its replica and three sentinels"
PRIMARY_PORT="$PRIMARY_PORT" REPLICA_PORT="$REPLICA_PORT" SENTINEL_PORT_BASE="$SENTINEL_BASE" \
    SENTINEL_DIR="$WORK/sentinel" SENTINEL_DETACH=1 scripts/redis-sentinel.sh >"$WORK/sentinel.out"
SENTINELS="127.0.0.1:$SENTINEL_BASE,127.0.0.1:$((SENTINEL_BASE + 1)),127.0.0.1:$((SENTINEL_BASE + 2))"

"$BIN" --host 127.0.0.1 --port "$APP_PORT" --threads 2 --instance sentinel-chaos \
    --secret "sentinel-chaos-secret-0123456789abcdef0123456789" \
    --redis-sentinel "$SENTINELS" --sentinel-master mymaster --redis-timeout "$TIMEOUT_MS" \
    >"$WORK/evserver.log" 2>&1 &
SERVER_PID=$!
wait_ready "$APP_PORT" "$SERVER_PID" "$WORK/evserver.log" 0.1

log "evserver on :$APP_PORT, sentinels $SENTINELS; running the phases"
set +e
python3 scripts/sentinel_chaos.py --port "$APP_PORT" --sentinel "$SENTINEL_BASE" --pid-dir "$WORK/sentinel" \
    --primary-port "$PRIMARY_PORT" --replica-port "$REPLICA_PORT" \
    --clients "${CHAOS_CLIENTS:-16}" --rate "${CHAOS_CLIENT_RATE:-20}" \
    --latency-limit "$(python3 -c "print($TIMEOUT_MS / 1000 + 1)")"
status=$?
set -e
kill -0 "$SERVER_PID" 2>/dev/null || { log "evserver died during the run"; status=1; }
exit "$status"
