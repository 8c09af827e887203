#!/usr/bin/env bash
# The browser test of GET /demo (not part of `make test`: it needs Chromium). Installs what is missing (Debian's
# chromium + chromium-driver, selenium from PyPI), starts the cluster on loopback with scripts/cluster.sh (redis,
# app1..app3, haproxy), drives /demo through haproxy with headless Chromium (tests/browser/demo_test.py), saves
# screenshots and stops the cluster, also on failure. Then the same with two browser profiles as two devices of one
# user (tests/browser/devices_test.py): one logs the other out through "Your devices".
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
start_cluster_detached "${CLUSTER_BUILD:-debug}"

python3 tests/browser/demo_test.py --url "http://127.0.0.1:$LB_PORT/demo" \
    --screenshot "$OUT/demo.png" --final-screenshot "$OUT/demo-logged-out.png"
# Two browser profiles as two devices of one user: one logs the other out.
python3 tests/browser/devices_test.py --url "http://127.0.0.1:$LB_PORT/demo" --screenshot "$OUT/devices"
