#!/usr/bin/env bash
# The browser test of GET /demo (not part of `make test`: it needs Chromium). Installs what is missing (Debian's
# chromium + chromium-driver, selenium from PyPI), starts the cluster on loopback with scripts/cluster.sh (redis,
# app1..app3, haproxy), drives /demo through haproxy with headless Chromium (tests/browser/demo_test.py), saves
# screenshots and stops the cluster, also on failure.
#   BROWSER_TEST_OUT (out/browser)  CLUSTER_BUILD (debug: quicker to build than release)  LB_PORT (a free port)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages chromium chromium-driver haproxy curl
if ! python3 -c 'import selenium' 2>/dev/null; then
    log "installing selenium (pip)"
    python3 -m pip install --quiet selenium
fi

OUT="${BROWSER_TEST_OUT:-$ROOT/out/browser}"
mkdir -p "$OUT"
LB_PORT="${LB_PORT:-$(free_port)}"
# Three consecutive free ports for app1..app3.
base=""
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 20000))
    python3 - "$candidate" <<'PY' && { base="$candidate"; break; }
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 3):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PY
done
[ -n "$base" ] || die "no three consecutive free ports found"

log "starting the cluster (haproxy on 127.0.0.1:$LB_PORT, apps on $base..$((base + 2)))"
info="$(CLUSTER_DETACH=1 CLUSTER_BUILD="${CLUSTER_BUILD:-debug}" LB_PORT="$LB_PORT" APP_PORT_BASE="$base" \
    scripts/cluster.sh)"
echo "$info" >&2
dir="$(printf '%s\n' "$info" | sed -n 's/^CLUSTER_DIR=//p')"
[ -n "$dir" ] || die "cluster.sh did not say where the cluster runs"
trap 'log "stopping the cluster"; scripts/cluster.sh stop "$dir"' EXIT

python3 tests/browser/demo_test.py --url "http://127.0.0.1:$LB_PORT/demo" \
    --screenshot "$OUT/demo.png" --final-screenshot "$OUT/demo-logged-out.png"
