#!/usr/bin/env bash
# make hot: a hot session across instances. The cluster of `make cluster` (redis, app1..app3, haproxy) on free
# loopback ports; HOT_CONNECTIONS (64) connections through haproxy share one session cookie and send GET /views
# (`session.increment`) until HOT_REQUESTS (20000) are answered; then the counter must equal the number of 200s,
# every request must be a 200, and the Redis round trips per request are printed. CLUSTER_BUILD (release).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages haproxy
start_cluster_detached "${CLUSTER_BUILD:-release}"
python3 scripts/hot_load.py --port "$LB_PORT" --redis-port "$CLUSTER_REDIS_PORT" \
    --connections "${HOT_CONNECTIONS:-64}" --requests "${HOT_REQUESTS:-20000}"
