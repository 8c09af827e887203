#!/usr/bin/env bash
# make redis-sentinel: Redis Sentinel on loopback, without Docker: a primary, its replica and three sentinels
# (quorum 2, down-after 1 s, failover-timeout 3 s, so failovers take seconds). Prints the evserver flags to use and
# how to cause a failover; Ctrl-C stops everything it started.
#   PRIMARY_PORT (6380)  REPLICA_PORT (6381)  SENTINEL_PORT_BASE (26379: sentinels on 26379, 26380, 26381)
#   MASTER_NAME (mymaster)
#   SENTINEL_DETACH=1: start, print, and exit leaving it running (for scripts); the last line is
#   SENTINEL_DIR=<dir>; stop it with `scripts/redis-sentinel.sh stop <dir>`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

# stop_dir DIR: kills every process whose pid file is under DIR and waits until they are gone.
stop_dir() { stop_pidfiles 50 "$1"/*/*.pid; }

case "${1:-}" in
    stop)
        dir="${2:?usage: redis-sentinel.sh stop DIR}"
        [ -d "$dir" ] || die "no sentinel directory $dir"
        stop_dir "$dir"
        rm -rf "$dir"
        exit 0
        ;;
    "") ;;
    *) die "unknown command '$1' (expected: stop DIR)" ;;
esac

ensure_packages redis-server
command -v redis-cli >/dev/null || die "redis-cli is missing (apt-get install redis-tools)"

PRIMARY_PORT="${PRIMARY_PORT:-6380}"
REPLICA_PORT="${REPLICA_PORT:-6381}"
SENTINEL_PORT_BASE="${SENTINEL_PORT_BASE:-26379}"
SENTINEL_PORTS=("$SENTINEL_PORT_BASE" "$((SENTINEL_PORT_BASE + 1))" "$((SENTINEL_PORT_BASE + 2))")
MASTER_NAME="${MASTER_NAME:-mymaster}"
[[ "$MASTER_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "MASTER_NAME may only hold letters, digits and . _ -"

# A port already taken would make one process fail after the others started: say so before starting anything.
ALL_PORTS=("$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINEL_PORTS[@]}")
[ "$(printf '%s\n' "${ALL_PORTS[@]}" | sort -u | wc -l)" = 5 ] \
    || die "the ports overlap: primary $PRIMARY_PORT, replica $REPLICA_PORT, sentinels ${SENTINEL_PORTS[*]}"
for port in "${ALL_PORTS[@]}"; do
    port_taken "$port" && die "port $port is already in use (set PRIMARY_PORT, REPLICA_PORT or SENTINEL_PORT_BASE)"
done

WORK="${SENTINEL_DIR:-$(mktemp -d -t evserver-sentinel.XXXXXX)}"
mkdir -p "$WORK"
stop_on_exit "${SENTINEL_DETACH:-0}"

# No 5 s pause before a full synchronisation (Redis's default): after a failover the old primary resyncs at once.
start_redis "$PRIMARY_PORT" "$WORK/primary" --repl-diskless-sync-delay 0
start_redis "$REPLICA_PORT" "$WORK/replica" --repl-diskless-sync-delay 0 --replicaof 127.0.0.1 "$PRIMARY_PORT"

# The sentinels learn of the replica from the primary's INFO, so the replica must be attached before they start.
synced=0
for _ in $(seq 1 100); do
    if redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q '^master_link_status:up'; then
        synced=1
        break
    fi
    sleep 0.1
done
[ "$synced" = 1 ] || die "the replica on $REPLICA_PORT did not sync with the primary (see $WORK/replica/redis.log)"

for i in 0 1 2; do
    port="${SENTINEL_PORTS[$i]}"
    dir="$WORK/sentinel-$((i + 1))"
    mkdir -p "$dir"
    # The sentinel rewrites this file as it learns (peers, replicas, the current primary).
    cat >"$dir/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
dir $dir
sentinel monitor $MASTER_NAME 127.0.0.1 $PRIMARY_PORT 2
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 3000
sentinel parallel-syncs $MASTER_NAME 1
CONF
    redis-server "$dir/sentinel.conf" --sentinel --daemonize yes --pidfile "$dir/sentinel.pid" \
        --logfile "$dir/sentinel.log" >/dev/null || die "sentinel $port failed to start (see $dir/sentinel.log)"
    up=0
    for _ in $(seq 1 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] && { up=1; break; }
        sleep 0.05
    done
    [ "$up" = 1 ] || { tail -n 5 "$dir/sentinel.log" >&2; die "sentinel $port did not answer PING"; }
done

# Ready when every sentinel knows the two others (hello messages every 2 s): only then can they agree on a failover.
ready=0
for _ in $(seq 1 150); do
    ok=0
    for port in "${SENTINEL_PORTS[@]}"; do
        others="$(redis-cli -p "$port" sentinel master "$MASTER_NAME" 2>/dev/null \
            | awk 'found { print; exit } $0 == "num-other-sentinels" { found = 1 }')"
        [ "$others" = 2 ] && ok=$((ok + 1))
    done
    if [ "$ok" = 3 ]; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    tail -n 20 "$WORK"/*/*.log >&2
    die "the sentinels did not find each other within 15 s (logs in $WORK)"
fi

sentinels="127.0.0.1:${SENTINEL_PORTS[0]},127.0.0.1:${SENTINEL_PORTS[1]},127.0.0.1:${SENTINEL_PORTS[2]}"
cat <<INFO
Redis Sentinel on loopback (logs, configurations and pids in $WORK)
  primary    127.0.0.1:$PRIMARY_PORT
  replica    127.0.0.1:$REPLICA_PORT
  sentinels  $sentinels  (master "$MASTER_NAME", quorum 2, down-after 1 s)
evserver flags:
  --redis-sentinel $sentinels --sentinel-master $MASTER_NAME
Try: redis-cli -p ${SENTINEL_PORTS[0]} sentinel get-master-addr-by-name $MASTER_NAME
     redis-cli -p ${SENTINEL_PORTS[0]} sentinel failover $MASTER_NAME          (a planned failover)
     kill -9 \$(cat $WORK/primary/redis.pid)   (the first primary dies; a replica takes over in about 3 s)
INFO

if [ "${SENTINEL_DETACH:-0}" = "1" ]; then
    echo "SENTINEL_DIR=$WORK"
    exit 0
fi
echo "Ctrl-C stops everything."
# Everything runs daemonized: wait here until Ctrl-C (the EXIT trap stops them).
while true; do sleep 1; done
