#!/usr/bin/env bash
# make cluster: docker-compose.yml's topology on loopback, without Docker: one redis-server (appendonly), three
# evserver instances (app1..app3) on their own ports, and haproxy round-robin on :8080, health-checked on /readyz.
# Prints what runs where; Ctrl-C stops everything it started.
#   LB_PORT (8080)  APP_PORT_BASE (3001: app1=3001, app2=3002, app3=3003)  REDIS_PORT (a free port)
#   SESSION_SECRET (a development secret)  EVSERVER_THREADS (1 per instance)
#   CLUSTER_BUILD=release|debug (release)  EVSERVER_BIN=path: use that binary instead of building
#   CLUSTER_DETACH=1: start, print, and exit leaving it running (for tests); the last line is CLUSTER_DIR=<dir>;
#   stop it with `scripts/cluster.sh stop <dir>`.
#   CLUSTER_MONITORING=1: Prometheus too (Debian's prometheus package), on PROMETHEUS_PORT (9090), scraping the
#   three instances with deploy/prometheus.yml: docker compose's `monitoring` profile.
#
#   scripts/cluster.sh haproxy-config LB_PORT PORT1 PORT2 PORT3
#       prints the balancer configuration for loopback, without starting anything (the tests use it).
#   scripts/cluster.sh prometheus-config PORT1 PORT2 PORT3
#       prints the Prometheus configuration for loopback, likewise.
#
# The balancer and Prometheus configurations are deploy/haproxy.cfg and deploy/prometheus.yml themselves (the ones
# docker compose mounts), with only the addresses rewritten for loopback, so they cannot drift apart.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

# haproxy_config LB_PORT PORT...: deploy/haproxy.cfg with `bind :8080` -> `bind 127.0.0.1:LB_PORT` and
# `server appN appN:3000` -> `server appN 127.0.0.1:<the Nth PORT>`. Fails if the template lost its shape.
haproxy_config() {
    local lb="$1"; shift
    awk -v lb="$lb" -v ports="$*" '
        BEGIN { count = split(ports, port, " ") }
        $1 == "bind" && $2 ~ /:8080$/ { sub(/[^ \t]*:8080/, "127.0.0.1:" lb); binds++ }
        $1 == "server" && $2 ~ /^app[0-9]+$/ {
            n = substr($2, 4) + 0
            if (n >= 1 && n <= count) { sub(/app[0-9]+:3000/, "127.0.0.1:" port[n]); servers++ } else { unmatched++ }
        }
        { out[NR] = $0 }
        END {
            if (binds != 1 || servers != count || unmatched) {
                printf "deploy/haproxy.cfg: expected one bind on :8080 and servers app1..app%d, found %d bind(s), " \
                    "%d server(s) with a port and %d without\n", count, binds, servers, unmatched > "/dev/stderr"
                exit 2
            }
            for (i = 1; i <= NR; i++) print out[i]
        }' deploy/haproxy.cfg
}

# prometheus_config PORT...: deploy/prometheus.yml with its targets "app1:3000", "app2:3000"... -> 127.0.0.1:<the Nth
# PORT>. Fails if the template lost its shape (a target list other than app1..appN on :3000).
prometheus_config() {
    local expected="" i=1 port
    for port in "$@"; do
        expected="${expected:+$expected, }\"app$i:3000\""
        i=$((i + 1))
    done
    grep -qF "targets: [$expected]" deploy/prometheus.yml \
        || { echo "deploy/prometheus.yml: expected one line 'targets: [$expected]'" >&2; exit 2; }
    local rewritten=""
    for port in "$@"; do rewritten="${rewritten:+$rewritten, }\"127.0.0.1:$port\""; done
    sed "s|targets: \[$expected\]|targets: [$rewritten]|" deploy/prometheus.yml
}

# stop_dir DIR: stops everything whose pid file is in DIR, waiting up to 15 s (an evserver drains for at most 10 s).
stop_dir() { stop_pidfiles 150 "$1"/*.pid; }

case "${1:-}" in
    stop)
        dir="${2:?usage: cluster.sh stop DIR}"
        [ -d "$dir" ] || die "no cluster directory $dir"
        stop_dir "$dir"
        rm -rf "$dir"
        exit 0
        ;;
    haproxy-config)
        [ $# -ge 3 ] || die "usage: cluster.sh haproxy-config LB_PORT PORT1 [PORT2 ...]"
        shift
        haproxy_config "$@"
        exit 0
        ;;
    prometheus-config)
        [ $# -ge 2 ] || die "usage: cluster.sh prometheus-config PORT1 [PORT2 ...]"
        shift
        prometheus_config "$@"
        exit 0
        ;;
    "") ;;
    *) die "unknown command '$1' (expected: stop DIR, haproxy-config LB_PORT PORT..., prometheus-config PORT...)" ;;
esac

ensure_build_deps
ensure_packages haproxy curl
MONITORING="${CLUSTER_MONITORING:-0}"
[ "$MONITORING" = 1 ] && ensure_packages prometheus
evserver_binary "${CLUSTER_BUILD:-release}"

LB_PORT="${LB_PORT:-8080}"
APP_PORT_BASE="${APP_PORT_BASE:-3001}"
APP_PORTS=("$APP_PORT_BASE" "$((APP_PORT_BASE + 1))" "$((APP_PORT_BASE + 2))")
REDIS_PORT="${REDIS_PORT:-$(free_port)}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
export SESSION_SECRET="${SESSION_SECRET:-development-secret-change-me-0123456789abcdef}"
export EVSERVER_THREADS="${EVSERVER_THREADS:-1}"

# A port already taken would make one process fail after the others started: say so before starting anything
# (port_taken: lib.sh).
for port in "$LB_PORT" "${APP_PORTS[@]}" "$REDIS_PORT" $([ "$MONITORING" = 1 ] && echo "$PROMETHEUS_PORT"); do
    port_taken "$port" && die "port $port is already in use (set LB_PORT, APP_PORT_BASE, REDIS_PORT or PROMETHEUS_PORT)"
done

WORK="${CLUSTER_DIR:-$(mktemp -d -t evserver-cluster.XXXXXX)}"
mkdir -p "$WORK"

stop_on_exit "${CLUSTER_DETACH:-0}"

start_redis "$REDIS_PORT" "$WORK" --appendonly yes

for i in 1 2 3; do
    INSTANCE_NAME="app$i" PORT="${APP_PORTS[$((i - 1))]}" EVSERVER_HOST=127.0.0.1 \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" "$BIN" >"$WORK/app$i.log" 2>&1 &
    echo $! >"$WORK/app$i.pid"
done

haproxy_config "$LB_PORT" "${APP_PORTS[@]}" >"$WORK/haproxy.cfg"
haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejects $WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
echo $! >"$WORK/haproxy.pid"

if [ "$MONITORING" = 1 ]; then
    prometheus_config "${APP_PORTS[@]}" >"$WORK/prometheus.yml"
    promtool check config "$WORK/prometheus.yml" >/dev/null || die "promtool rejects $WORK/prometheus.yml"
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$WORK/prometheus.log" 2>&1 &
    echo $! >"$WORK/prometheus.pid"
fi

# Ready when every instance answers /readyz and the balancer forwards.
ready=0
for _ in $(seq 1 150); do
    ok=0
    for port in "${APP_PORTS[@]}"; do
        curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    if [ "$ok" = 3 ] && curl -fsS "http://127.0.0.1:$LB_PORT/healthz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    tail -n 20 "$WORK"/*.log >&2
    die "the cluster did not become ready (logs in $WORK)"
fi

monitoring_line=""
[ "$MONITORING" = 1 ] && monitoring_line="
  prometheus    http://127.0.0.1:$PROMETHEUS_PORT  (scraping app1..app3 /metrics every 5 s)"
cat <<INFO
evserver cluster on loopback (logs and pids in $WORK)
  redis-server  127.0.0.1:$REDIS_PORT  (appendonly)   redis-cli -p $REDIS_PORT --scan --pattern 'sess:*'
  app1          http://127.0.0.1:${APP_PORTS[0]}
  app2          http://127.0.0.1:${APP_PORTS[1]}
  app3          http://127.0.0.1:${APP_PORTS[2]}
  haproxy       http://127.0.0.1:$LB_PORT  (round robin over app1..app3)$monitoring_line
Try: curl -s -c jar -b jar -i localhost:$LB_PORT/views   (X-Instance changes, the count goes on)
     open http://127.0.0.1:$LB_PORT/demo in a browser
INFO

if [ "${CLUSTER_DETACH:-0}" = "1" ]; then
    echo "CLUSTER_DIR=$WORK"
    exit 0
fi
echo "Ctrl-C stops everything."
wait
