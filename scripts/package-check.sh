#!/usr/bin/env bash
# make package-check: builds a new SwiftPM package against this one as a user would, from the README alone.
#
# The package depends on this repository's committed HEAD through a git URL whose last component is `evserver`
# (the identity the README's `.product(..., package: "evserver")` lines name), and its main.swift is the README's
# express-session tutorial as printed, with only the Redis and listening ports changed. Checks: the build succeeds,
# no warning comes from this package, and the tutorial behaves (`/` then `/login` with the cookie says
# "Welcome Aditya@123"). Uncommitted changes are not part of it: it is the clone a user gets.
#
# Needs a redis-server: REDIS_HOST/REDIS_PORT when set (as `make test` sets them), else a private one.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_build_deps
command -v curl >/dev/null || ensure_packages curl

CHECK="$(mktemp -d -t pkgcheck.XXXXXX)"
app_pid=""
cleanup() {
    # Both stopped and gone before the directory is removed (a process still writing into it makes rm -rf fail).
    if [ -n "$app_pid" ]; then kill "$app_pid" 2>/dev/null || true; wait "$app_pid" 2>/dev/null || true; fi
    [ -n "${OWN_REDIS:-}" ] && stop_redis "$CHECK/redis"
    rm -rf "$CHECK" || log "warning: could not remove $CHECK"
}
trap cleanup EXIT INT TERM
if [ -z "${REDIS_PORT:-}" ]; then
    REDIS_PORT="$(free_port)"; OWN_REDIS=1
    start_redis "$REDIS_PORT" "$CHECK/redis"
fi
redis_host="${REDIS_HOST:-127.0.0.1}"
app_port="$(free_port)"

# The dependency as the README writes it: a git URL ending in /evserver, pinned to HEAD. The link goes to the
# repository's git directory (the common one of a `git worktree`, which SwiftPM cannot clone from its work tree).
ln -s "$(git rev-parse --path-format=absolute --git-common-dir)" "$CHECK/evserver"
revision="$(git rev-parse HEAD)"
mkdir -p "$CHECK/app/Sources/App"
cat > "$CHECK/app/Package.swift" <<EOF
// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "App",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(url: "file://$CHECK/evserver", revision: "$revision"),
    ],
    targets: [
        .executableTarget(name: "App", dependencies: [
            .product(name: "EvServer", package: "evserver"),
            .product(name: "RedisSessionStore", package: "evserver"),
        ]),
    ]
)
EOF
# The README's tutorial: the first swift block after "The express-session tutorial, in Swift".
awk '/^The express-session tutorial, in Swift/ { found = 1 } found && /^```swift/ { inside = 1; next }
     inside && /^```/ { exit } inside { print }' README.md \
    | sed -e "s|redis://127.0.0.1:6379|redis://$redis_host:$REDIS_PORT|" -e "s|port: 3000|port: $app_port|" \
    > "$CHECK/app/Sources/App/main.swift"
grep -q 'app.get("/login")' "$CHECK/app/Sources/App/main.swift" || die "no tutorial found in README.md"

log "building a package that depends on evserver@${revision:0:7} (the README's Package.swift lines and tutorial)"
if ! (cd "$CHECK/app" && swift build 2>&1) > "$CHECK/build.log"; then
    cat "$CHECK/build.log" >&2
    die "the README's example does not build against this package"
fi
# Warnings from this package: any in its checkout (.build/checkouts/evserver), and any that names no file (SwiftPM's
# own, such as a prohibited flag from a system library's pkg-config), unless SwiftPM says it is another package's
# (`warning: 'swift-distributed-tracing': found 1 file(s) which are unhandled`: that package's own manifest leaves
# its CMakeLists.txt files unhandled). Other dependencies' warnings are theirs.
if grep -E "^warning:|/checkouts/evserver/.*warning:" "$CHECK/build.log" \
    | grep -vE "^warning: '[^']+':" | grep . >&2 \
    || grep -E "^warning: 'evserver':" "$CHECK/build.log" >&2; then
    die "building against this package prints warnings (above)"
fi

"$CHECK/app/.build/debug/App" > "$CHECK/app.log" 2>&1 &
app_pid=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$app_port/" 2>/dev/null && break
    kill -0 "$app_pid" 2>/dev/null || { cat "$CHECK/app.log" >&2; die "the tutorial app exited"; }
    sleep 0.1
done
first="$(curl -fsS -c "$CHECK/cookies" "http://127.0.0.1:$app_port/")"
second="$(curl -fsS -b "$CHECK/cookies" "http://127.0.0.1:$app_port/login")"
[ "$first" = "Thanks for visiting" ] || die "GET / answered '$first'"
[ "$second" = "Welcome Aditya@123" ] || die "GET /login with the cookie answered '$second'"
log "package check: built with no warnings from evserver; '/' -> '$first', '/login' -> '$second'"
