# Shared helpers for the scripts. Source it: `. "$(dirname "$0")/lib.sh"`.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_packages PKG...: installs the Debian packages that are missing (needs root or sudo).
ensure_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages: ${missing[*]} (install them with your package manager)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing ${missing[*]}"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_build_deps() { ensure_packages libevent-dev libhiredis-dev libssl-dev redis-server pkg-config openssl; }

# ensure_chaos_tools: what the fault drivers need besides the build: redis-server and redis-cli, python3, curl.
ensure_chaos_tools() {
    command -v redis-server >/dev/null || ensure_build_deps
    command -v redis-cli >/dev/null || ensure_packages redis-tools
    command -v python3 >/dev/null || ensure_packages python3
    command -v curl >/dev/null || ensure_packages curl
}

# evserver_binary [release|debug]: sets BIN to $EVSERVER_BIN when given, else builds evserver (release by default)
# and sets BIN to the built binary. Dies when there is none.
evserver_binary() {
    local mode="${1:-release}"
    case "$mode" in release|debug) ;; *) die "the evserver build must be release or debug, not '$mode'" ;; esac
    if [ -n "${EVSERVER_BIN:-}" ]; then
        BIN="$EVSERVER_BIN"
    else
        log "building evserver ($mode)"
        swift build -c "$mode" --product evserver >&2
        BIN="$(swift build -c "$mode" --product evserver --show-bin-path)/evserver"
    fi
    [ -x "$BIN" ] || die "no evserver binary at $BIN"
}

# free_port: prints a TCP port nobody listens on.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# free_port_run N: the first of N consecutive free loopback ports (for app1..appN, which scripts/cluster.sh puts on
# APP_PORT_BASE, +1, +2...). Fails when 50 random tries found none.
free_port_run() {
    python3 - "$1" <<'PY'
import random, socket, sys
count = int(sys.argv[1])
for _ in range(50):
    start = random.randrange(20000, 40000)
    sockets = []
    try:
        for port in range(start, start + count):
            s = socket.socket()
            sockets.append(s)
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in sockets:
            s.close()
    print(start)
    sys.exit(0)
sys.exit(1)
PY
}

# start_cluster_detached BUILD: scripts/cluster.sh (redis, app1..app3, haproxy) left running on free loopback ports,
# BUILD being release or debug; sets LB_PORT (kept if set), CLUSTER_REDIS_PORT and CLUSTER_DIR, and stops the
# cluster when the calling script exits.
start_cluster_detached() {
    LB_PORT="${LB_PORT:-$(free_port)}"
    CLUSTER_REDIS_PORT="$(free_port)"
    local base info
    base="$(free_port_run 3)" || die "no three consecutive free ports found"
    log "starting the cluster (haproxy on 127.0.0.1:$LB_PORT, apps on $base..$((base + 2)))"
    info="$(CLUSTER_DETACH=1 CLUSTER_BUILD="$1" LB_PORT="$LB_PORT" APP_PORT_BASE="$base" \
        REDIS_PORT="$CLUSTER_REDIS_PORT" scripts/cluster.sh)"
    echo "$info" >&2
    CLUSTER_DIR="$(printf '%s\n' "$info" | sed -n 's/^CLUSTER_DIR=//p')"
    [ -n "$CLUSTER_DIR" ] || die "cluster.sh did not say where the cluster runs"
    trap 'log "stopping the cluster"; scripts/cluster.sh stop "$CLUSTER_DIR"' EXIT
}

# stop_pidfiles TENTHS PIDFILE...: kills the process each pid file names, then waits up to TENTHS tenths of a second
# until none is alive, so that their ports are free when it returns. Missing files (an unmatched glob) are skipped.
stop_pidfiles() {
    local tenths="$1" pidfile; shift
    for pidfile in "$@"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for _ in $(seq 1 "$tenths"); do
        local alive=0
        for pidfile in "$@"; do
            [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
}

# start_test_redis NAME: a private redis-server for `swift test` on a free port in a temp dir (evserver-NAME.*),
# stopped and removed on exit; sets WORK and exports REDIS_HOST and REDIS_PORT for the tests.
start_test_redis() {
    WORK="$(mktemp -d -t "evserver-$1.XXXXXX")"
    REDIS_PORT="$(free_port)"
    trap 'stop_redis "$WORK"; rm -rf "$WORK" || log "warning: could not remove $WORK"' EXIT INT TERM
    start_redis "$REDIS_PORT" "$WORK"
    log "redis-server on 127.0.0.1:$REDIS_PORT"
    export REDIS_HOST=127.0.0.1 REDIS_PORT
}

# start_redis PORT DIR [extra args...]: starts a private redis-server and waits until it answers PING.
start_redis() {
    local port="$1" dir="$2"; shift 2
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@" >/dev/null \
        || die "redis-server failed to start (see $dir/redis.log)"
    wait_for_redis "$port" "$dir/redis.log"
}

# wait_for_redis PORT LOG: waits (up to 5 s) until the redis-server on PORT answers PING; dies pointing at LOG.
wait_for_redis() {
    local port="$1" logfile="$2"
    for _ in $(seq 1 100); do
        [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] && return 0
        sleep 0.05
    done
    die "redis-server on port $port did not answer PING (see $logfile)"
}

# stop_redis DIR
stop_redis() {
    # Waits (up to 5 s) for it to exit: a redis-server still shutting down writes its log into DIR, and an `rm -rf`
    # of DIR right after the kill then fails with "Directory not empty" (seen once, failing a green `make test`).
    stop_pidfiles 50 "$1/redis.pid"
}

# port_taken PORT: succeeds when something already listens on (or holds) 127.0.0.1:PORT.
port_taken() {
    python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: sys.exit(0)
sys.exit(1)' "$1"
}

# wait_ready PORT PID LOG [INTERVAL]: waits (100 tries, INTERVAL s apart, 0.05 by default) until the evserver of
# pid PID answers /readyz on 127.0.0.1:PORT; dies, showing the end of LOG, when it exits first or is never ready.
wait_ready() {
    local port="$1" pid="$2" log_file="$3" interval="${4:-0.05}"
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log_file" >&2; die "evserver on :$port exited (log: $log_file)"; }
        sleep "$interval"
    done
    tail -n 20 "$log_file" >&2
    die "evserver on :$port is not ready (log: $log_file)"
}

# stop_on_exit DETACH [WHAT]: the exit handling of the scripts that start a set of servers in $WORK (cluster.sh,
# redis-cluster.sh, redis-sentinel.sh), with their stop_dir. In the foreground (DETACH not 1), Ctrl-C or any exit
# stops them and removes $WORK; detached, only a failure before the end stops what was started, and on success it
# is left running.
stop_on_exit() {
    if [ "$1" != "1" ]; then
        trap "echo; log 'stopping${2:+ $2}'; stop_dir \"\$WORK\"; rm -rf \"\$WORK\"" EXIT
        trap 'exit 0' INT TERM
    else
        trap 'rc=$?; if [ $rc -ne 0 ]; then stop_dir "$WORK"; fi' EXIT
    fi
}

# keeping_logs: whether a chaos run keeps its logs: it failed ($status not 0) or CHAOS_KEEP=1.
keeping_logs() { [ "${status:-1}" -ne 0 ] || [ "${CHAOS_KEEP:-0}" = "1" ]; }

# remove_unless_kept DIR WHAT: removes DIR, or, when keeping_logs, keeps it and says where WHAT is.
remove_unless_kept() {
    if keeping_logs; then log "$2 kept in $1"; else rm -rf "$1"; fi
}
