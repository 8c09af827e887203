#!/usr/bin/env bash
# make redis-cluster: a Redis Cluster on loopback, without Docker: six redis-server processes (3 primaries +
# 3 replicas) joined with `redis-cli --cluster create --cluster-replicas 1`. Prints the evserver flags to use;
# Ctrl-C stops everything it started.
#   REDIS_CLUSTER_PORT_BASE (7000: nodes on 7000..7005, cluster bus on port+10000)
#   REDIS_CLUSTER_NODE_TIMEOUT (2000 ms: how long a silent primary takes to be declared failed)
#   REDIS_PASSWORD: requirepass + masterauth on every node (then pass --redis-password to evserver)
#   REDIS_CLUSTER_DETACH=1: start, print, and exit leaving it running; the last line is REDIS_CLUSTER_DIR=<dir>;
#   stop it with `scripts/redis-cluster.sh stop <dir>` (`stop-keep <dir>` keeps the directory and its logs).
#
# Two settings differ from redis.conf's defaults, on purpose:
#   cluster-require-full-coverage no   a failed primary stops only its own slots, not the whole cluster;
#   repl-diskless-sync-delay 0         replicas sync at once instead of waiting 5 s for company.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

# stop_dir DIR: stops every node under DIR and waits until they are gone.
stop_dir() { stop_pidfiles 50 "$1"/node-*/redis.pid; }

case "${1:-}" in
    stop|stop-keep)
        dir="${2:?usage: redis-cluster.sh stop|stop-keep DIR}"
        [ -d "$dir" ] || die "no cluster directory $dir"
        stop_dir "$dir"
        [ "$1" = stop ] && rm -rf "$dir"
        exit 0
        ;;
    "") ;;
    *) die "unknown command '$1' (expected: stop DIR, stop-keep DIR)" ;;
esac

ensure_packages redis-server redis-tools
command -v redis-cli >/dev/null || die "redis-cli is not installed (apt-get install redis-tools)"

BASE="${REDIS_CLUSTER_PORT_BASE:-7000}"
NODE_TIMEOUT="${REDIS_CLUSTER_NODE_TIMEOUT:-2000}"
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=("$((BASE + i))"); done

for port in "${PORTS[@]}"; do
    port_taken "$port" && die "port $port is already in use (set REDIS_CLUSTER_PORT_BASE)"
    port_taken "$((port + 10000))" && die "cluster bus port $((port + 10000)) is already in use (set REDIS_CLUSTER_PORT_BASE)"
done

WORK="${REDIS_CLUSTER_DIR:-$(mktemp -d -t evserver-redis-cluster.XXXXXX)}"
mkdir -p "$WORK"
stop_on_exit "${REDIS_CLUSTER_DETACH:-0}" "the Redis Cluster"

CLI_AUTH=()
[ -n "${REDIS_PASSWORD:-}" ] && CLI_AUTH=(-a "$REDIS_PASSWORD" --no-auth-warning)

# start_node PORT: one node from a config file of its own (node-PORT/redis.conf), so that a node that was killed
# restarts as exactly the same node (`redis-server node-PORT/redis.conf`): make cluster-chaos does that.
start_node() {
    local port="$1" dir="$WORK/node-$1"
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<CONF
port $port
bind 127.0.0.1
dir $dir
save ""
appendonly no
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
cluster-enabled yes
cluster-config-file $dir/nodes.conf
cluster-node-timeout $NODE_TIMEOUT
cluster-require-full-coverage no
repl-diskless-sync-delay 0
CONF
    if [ -n "${REDIS_PASSWORD:-}" ]; then
        printf 'requirepass "%s"\nmasterauth "%s"\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD" >>"$dir/redis.conf"
    fi
    redis-server "$dir/redis.conf" >/dev/null || die "redis-server on port $port failed to start (see $dir/redis.log)"
    for _ in $(seq 1 100); do
        redis-cli "${CLI_AUTH[@]}" -p "$port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    die "redis-server on port $port did not answer PING (see $dir/redis.log)"
}

for port in "${PORTS[@]}"; do start_node "$port"; done

log "creating the cluster (3 primaries, 3 replicas)"
redis-cli "${CLI_AUTH[@]}" --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") \
    --cluster-replicas 1 --cluster-yes >"$WORK/create.log" 2>&1 \
    || { cat "$WORK/create.log" >&2; die "redis-cli --cluster create failed (log above)"; }

# Ready when every node says the cluster is ok and every replica is in sync.
ready=0
for _ in $(seq 1 200); do
    ok=0
    for port in "${PORTS[@]}"; do
        info="$(redis-cli "${CLI_AUTH[@]}" -p "$port" cluster info 2>/dev/null || true)"
        repl="$(redis-cli "${CLI_AUTH[@]}" -p "$port" info replication 2>/dev/null || true)"
        masters="$(redis-cli "${CLI_AUTH[@]}" -p "$port" cluster nodes 2>/dev/null | grep -c master || true)"
        if grep -q 'cluster_state:ok' <<<"$info" && [ "$masters" = 3 ] \
            && { ! grep -q 'role:slave' <<<"$repl" || grep -q 'master_link_status:up' <<<"$repl"; }; then
            ok=$((ok + 1))
        fi
    done
    [ "$ok" = 6 ] && { ready=1; break; }
    sleep 0.1
done
[ "$ready" = 1 ] || die "the cluster did not become ready (logs in $WORK/node-*/redis.log)"

SEEDS="$(printf '127.0.0.1:%s,' "${PORTS[@]:0:3}")"
SEEDS="${SEEDS%,}"
cat <<INFO
Redis Cluster on loopback: 6 nodes, cluster-node-timeout $NODE_TIMEOUT ms (logs and pids in $WORK)
$(redis-cli "${CLI_AUTH[@]}" -p "${PORTS[0]}" cluster nodes | sort -k2 \
    | awk '{split($2, a, "@"); printf "  %-16s %s %s\n", a[1], ($3 ~ /master/ ? "primary, slots" : "replica"), $9}')

evserver flags:   --redis-cluster $SEEDS${REDIS_PASSWORD:+ --redis-password "\$REDIS_PASSWORD"}
  or environment: REDIS_CLUSTER=$SEEDS
  e.g.            swift run evserver --secret "\$(openssl rand -hex 32)" --redis-cluster $SEEDS
Durable writes:   add --redis-wait-replicas 1 (each session write waits for its primary's replica)
Look at it:       redis-cli -c -p ${PORTS[0]} cluster nodes      evserver sessions count --redis-cluster $SEEDS
INFO

if [ "${REDIS_CLUSTER_DETACH:-0}" = "1" ]; then
    echo "REDIS_CLUSTER_DIR=$WORK"
    exit 0
fi
echo "Ctrl-C stops everything."
while true; do sleep 1; done
