#!/usr/bin/env bash
# make monitoring-check: docker compose's `monitoring` profile proven on loopback. Starts the cluster (redis, app1..app3,
# haproxy) with Prometheus scraping deploy/prometheus.yml (CLUSTER_MONITORING=1 scripts/cluster.sh), sends REQUESTS
# (300) requests to /views through haproxy, then asks Prometheus: all three targets up, and the requests it counted
# in evserver_http_requests_total{route="/views"} summed over the instances equal to the requests sent, each
# instance having served some. Exit 1 on any miss.
#   CLUSTER_BUILD=release|debug (release)  EVSERVER_BIN=path  REQUESTS (300)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages prometheus curl python3
requests="${REQUESTS:-300}"
PROMETHEUS_PORT="$(free_port)"
export CLUSTER_MONITORING=1 PROMETHEUS_PORT
start_cluster_detached "${CLUSTER_BUILD:-release}"

log "sending $requests requests to /views through haproxy on :$LB_PORT"
jar="$CLUSTER_DIR/jar"
for _ in $(seq 1 "$requests"); do
    curl -fsS -o /dev/null -c "$jar" -b "$jar" "http://127.0.0.1:$LB_PORT/views" || die "a request through haproxy failed"
done

# Prometheus scrapes every 5 s: wait (up to 30 s) until it has seen every request.
query() { curl -fsS --get "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/$1" ${2:+--data-urlencode "query=$2"}; }
verdict=""
for _ in $(seq 1 60); do
    targets="$(query targets 2>/dev/null || true)"
    per_instance="$(query query 'sum by (instance) (evserver_http_requests_total{route="/views"})' 2>/dev/null || true)"
    if verdict="$(python3 - "$requests" "$targets" "$per_instance" <<'PY'
import json, sys
requests = int(sys.argv[1])
try:
    targets = json.loads(sys.argv[2])["data"]["activeTargets"]
    series = json.loads(sys.argv[3])["data"]["result"]
except (ValueError, KeyError, TypeError):
    print("Prometheus is not answering yet"); sys.exit(1)
health = {t["labels"]["instance"]: t["health"] for t in targets}
counts = {s["metric"]["instance"]: int(float(s["value"][1])) for s in series}
total = sum(counts.values())
print(f"targets {health}; /views counted per instance {counts}, {total} of {requests} in all")
sys.exit(0 if len(health) == 3 and set(health.values()) == {"up"} and total == requests
         and len(counts) == 3 and min(counts.values()) > 0 else 1)
PY
)"; then
        log "monitoring check passed: $verdict"
        exit 0
    fi
    sleep 0.5
done
tail -n 20 "$CLUSTER_DIR/prometheus.log" >&2
die "monitoring check failed: $verdict"
