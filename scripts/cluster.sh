#!/usr/bin/env bash
# make cluster: docker-compose.yml's topology on loopback, without Docker: one redis-server (appendonly), three
# evserver instances (app1..app3) on their own ports, and haproxy round-robin on :8080, health-checked on /readyz.
# Prints what runs where; Ctrl-C stops everything it started.
#   LB_PORT (8080)  APP_PORT_BASE (3001: app1=3001, app2=3002, app3=3003)  REDIS_PORT (a free port)
#   SESSION_SECRET (a development secret)  CLUSTER_DETACH=1: start, print, and exit leaving it running (for tests;
#   stop it with scripts/cluster.sh stop <dir>)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

if [ "${1:-}" = "stop" ]; then
    dir="${2:?usage: cluster.sh stop DIR}"
    for pidfile in "$dir"/*.pid; do [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true; done
    exit 0
fi

ensure_build_deps
ensure_packages haproxy curl
swift build -c release --product evserver >&2
BIN="$(swift build -c release --product evserver --show-bin-path)/evserver"

LB_PORT="${LB_PORT:-8080}"
APP_PORT_BASE="${APP_PORT_BASE:-3001}"
REDIS_PORT="${REDIS_PORT:-$(free_port)}"
export SESSION_SECRET="${SESSION_SECRET:-development-secret-change-me-0123456789abcdef}"
WORK="${CLUSTER_DIR:-$(mktemp -d -t evserver-cluster.XXXXXX)}"
mkdir -p "$WORK"

stop_all() {
    for pidfile in "$WORK"/*.pid; do [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
if [ "${CLUSTER_DETACH:-0}" != "1" ]; then
    trap 'echo; log "stopping"; stop_all; rm -rf "$WORK"' EXIT
    trap 'exit 0' INT TERM
fi

start_redis "$REDIS_PORT" "$WORK" --appendonly yes

for i in 1 2 3; do
    port=$((APP_PORT_BASE + i - 1))
    INSTANCE_NAME="app$i" PORT="$port" EVSERVER_HOST=127.0.0.1 REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
        "$BIN" >"$WORK/app$i.log" 2>&1 &
    echo $! >"$WORK/app$i.pid"
done

cat >"$WORK/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-server-close
frontend www
    bind 127.0.0.1:$LB_PORT
    default_backend evserver
backend evserver
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
    server app1 127.0.0.1:$APP_PORT_BASE check
    server app2 127.0.0.1:$((APP_PORT_BASE + 1)) check
    server app3 127.0.0.1:$((APP_PORT_BASE + 2)) check
CFG
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
echo $! >"$WORK/haproxy.pid"

# Ready when every instance answers /readyz and the balancer forwards.
for _ in $(seq 1 100); do
    ok=0
    for i in 1 2 3; do
        curl -fsS "http://127.0.0.1:$((APP_PORT_BASE + i - 1))/readyz" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    [ "$ok" = 3 ] && curl -fsS "http://127.0.0.1:$LB_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
[ "$ok" = 3 ] || { tail -n 20 "$WORK"/*.log >&2; die "the instances did not become ready"; }

cat <<INFO
evserver cluster on loopback (logs and pids in $WORK)
  redis-server  127.0.0.1:$REDIS_PORT  (appendonly)   redis-cli -p $REDIS_PORT --scan --pattern 'sess:*'
  app1          http://127.0.0.1:$APP_PORT_BASE
  app2          http://127.0.0.1:$((APP_PORT_BASE + 1))
  app3          http://127.0.0.1:$((APP_PORT_BASE + 2))
  haproxy       http://127.0.0.1:$LB_PORT  (round robin over app1..app3)
Try: curl -s -c jar -b jar -i localhost:$LB_PORT/views   (X-Instance changes, the count goes on)
INFO

if [ "${CLUSTER_DETACH:-0}" = "1" ]; then
    echo "CLUSTER_DIR=$WORK"
    exit 0
fi
echo "Ctrl-C stops everything."
wait
