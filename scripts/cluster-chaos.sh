#!/usr/bin/env bash
# make cluster-chaos: evserver on a Redis Cluster under load, on loopback. Starts a 6-node cluster
# (scripts/redis-cluster.sh) and two evservers (--threads 2; `plain`, and `wait` with --redis-wait-replicas 1),
# then scripts/cluster_chaos.py
# drives keep-alive clients (a few hundred requests/s) through the phases
#   baseline 3 s | failover: kill -9 a primary | rejoin: restart it | reshard: redis-cli --cluster reshard | recovery
# and prints status counts per phase and group (sessions on the killed primary's slots / on the others); the exit
# status is non-zero when a property fails (see cluster_chaos.py). Stops everything it started on exit.
#
#   EVSERVER_BIN=path     use that binary instead of building one (release)
#   CHAOS_PORT_BASE       first node port (default 17200: nodes on 17200..17205, bus on +10000; both below the ephemeral range)
#   CHAOS_CLIENTS (24)    CHAOS_CLIENT_RATE (20 requests/s per client)    REDIS_TIMEOUT_MS (1000)
#   REDIS_CLUSTER_NODE_TIMEOUT (2000)    CHAOS_RESHARD_SLOTS (1000)    CHAOS_KEEP=1 keeps the logs
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_chaos_tools

evserver_binary release

BASE="${CHAOS_PORT_BASE:-17200}"
NODE_TIMEOUT="${REDIS_CLUSTER_NODE_TIMEOUT:-2000}"
TIMEOUT_MS="${REDIS_TIMEOUT_MS:-1000}"
PLAIN_PORT="$(free_port)"
WAIT_PORT="$(free_port)"
CLUSTER_DIR=""
PIDS=()
status=1

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$CLUSTER_DIR" ]; then
        if keeping_logs; then
            cp "$WORK"/evserver-*.log "$CLUSTER_DIR/" 2>/dev/null || true
            scripts/redis-cluster.sh stop-keep "$CLUSTER_DIR" 2>/dev/null || true
            log "logs kept in $CLUSTER_DIR"
        else
            scripts/redis-cluster.sh stop "$CLUSTER_DIR" || true
        fi
    fi
    rm -rf "$WORK"
}
WORK="$(mktemp -d -t evserver-cluster-chaos.XXXXXX)"
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a Redis Cluster on 127.0.0.1:$BASE..$((BASE + 5)) (cluster-node-timeout $NODE_TIMEOUT ms)"
REDIS_CLUSTER_PORT_BASE="$BASE" REDIS_CLUSTER_NODE_TIMEOUT="$NODE_TIMEOUT" REDIS_CLUSTER_DETACH=1 \
    scripts/redis-cluster.sh >"$WORK/redis-cluster.out"
CLUSTER_DIR="$(sed -n 's/^REDIS_CLUSTER_DIR=//p' "$WORK/redis-cluster.out")"
[ -d "$CLUSTER_DIR" ] || die "scripts/redis-cluster.sh printed no REDIS_CLUSTER_DIR"
NODES="$(seq -s, "$BASE" "$((BASE + 5))")"
SEEDS="127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"

start_server() {
    local name="$1" port="$2"; shift 2
    SESSION_SECRET="chaos-secret-0123456789abcdef0123456789abcdef" INSTANCE_NAME="$name" \
        "$BIN" --host 127.0.0.1 --port "$port" --threads 2 --redis-timeout "$TIMEOUT_MS" \
        --redis-cluster "$SEEDS" "$@" >"$WORK/evserver-$name.log" 2>&1 &
    PIDS+=($!)
    wait_ready "$port" "${PIDS[-1]}" "$WORK/evserver-$name.log"
}
start_server plain "$PLAIN_PORT"
start_server wait "$WAIT_PORT" --redis-wait-replicas 1
log "evserver plain :$PLAIN_PORT and wait :$WAIT_PORT (--redis-wait-replicas 1), --redis-cluster $SEEDS, deadline $TIMEOUT_MS ms"

started=$(date +%s)
set +e
# Until the per-request Redis budget lands, a session request's load and its commit each get the whole Redis
# deadline: an answer may take up to twice it (plus scheduling slack).
LATENCY_LIMIT="$(python3 -c "print(2 * $TIMEOUT_MS / 1000 + 0.3)")"
timeout --signal=TERM "${CHAOS_TIMEOUT:-180}" python3 -u scripts/cluster_chaos.py \
    --plain-port "$PLAIN_PORT" --wait-port "$WAIT_PORT" --latency-limit "$LATENCY_LIMIT" \
    --nodes "$NODES" --cluster-dir "$CLUSTER_DIR" --node-timeout "$NODE_TIMEOUT" --redis-timeout "$TIMEOUT_MS" \
    --clients "${CHAOS_CLIENTS:-24}" --client-rate "${CHAOS_CLIENT_RATE:-20}" \
    --reshard-slots "${CHAOS_RESHARD_SLOTS:-1000}"
status=$?
set -e
for log_file in "$WORK"/evserver-*.log; do
    if grep -qE "Fatal error|fatal error|Illegal instruction|Segmentation" "$log_file"; then
        log "$log_file: a crash:"; grep -E "Fatal|fatal|Illegal|Segmentation" "$log_file" >&2; status=1
    fi
done
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { log "an evserver (pid $pid) is gone"; status=1; }
done
log "cluster chaos run took $(( $(date +%s) - started )) s"
exit "$status"
