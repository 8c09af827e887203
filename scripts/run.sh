#!/usr/bin/env bash
# make run: installs what is missing, builds, starts a private redis-server if none answers at REDIS_URL, and runs
# evserver on :3000 with a development secret. Extra arguments go to evserver (make run ARGS="--rolling true").
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_build_deps
evserver_binary debug

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export REDIS_URL
hostport="${REDIS_URL#redis://}"; hostport="${hostport##*@}"; hostport="${hostport%%/*}"
rhost="${hostport%%:*}"; rport="${hostport##*:}"; [ "$rport" = "$hostport" ] && rport=6379

WORK=""
if [ "${SESSION_STORE:-redis}" = "redis" ] && ! redis-cli -h "$rhost" -p "$rport" ping >/dev/null 2>&1; then
    WORK="$(mktemp -d -t evserver-run.XXXXXX)"
    log "no Redis answers at $rhost:$rport: starting a private redis-server there (data in $WORK)"
    start_redis "$rport" "$WORK"
    trap 'stop_redis "$WORK"; rm -rf "$WORK" || log "warning: could not remove $WORK"' EXIT INT TERM
fi

if [ -z "${SESSION_SECRET:-}" ]; then
    export SESSION_SECRET="development-secret-change-me-0123456789abcdef"
    log "using a development session secret (set SESSION_SECRET in production)"
fi
export PORT="${PORT:-3000}"
log "evserver on http://127.0.0.1:$PORT (Ctrl-C stops it)"
"$BIN" ${ARGS:-} "$@"
