#!/usr/bin/env python3
"""A hot session through a balancer: N connections share one session cookie and each sends GET /views (an
`increment`) until `--requests` are answered. Prints the status counts, the counter against the number of 200s
(exact: every answered increment counted once, none lost, none doubled), and, with --redis-port, the Redis round
trips per request from INFO commandstats. Exits 1 when a request was not answered 200 or the count is off.
Standard library only; only 127.0.0.1 is contacted."""
import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter

import resp  # scripts/resp.py


def request(conn, path, cookie=None):
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    response = conn.getresponse()
    return response.status, response.getheader("Set-Cookie"), response.getheader("X-Instance"), response.read()


def session_commands(port):
    info = resp.Connection(port)("INFO", "commandstats", decode=True)
    calls = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_"):].split(":", 1)
            calls[name] = int(fields.split(",")[0].split("=")[1])
    # What the servers send for /views: the load (GETEX) and the commit script (the script's own GET and SET run
    # inside Redis and are left out).
    return sum(calls.get(name, 0) for name in ("getex", "evalsha", "eval"))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True, help="the balancer (or one instance)")
    p.add_argument("--redis-port", type=int, help="count round trips with INFO commandstats")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--requests", type=int, default=20000)
    opts = p.parse_args()

    conn = http.client.HTTPConnection("127.0.0.1", opts.port, timeout=10)
    status, set_cookie, _, _ = request(conn, "/views")
    if status != 200 or not set_cookie:
        print(f"error: the first GET /views answered {status} without a session cookie", file=sys.stderr)
        return 1
    cookie = set_cookie.split(";", 1)[0]
    before = session_commands(opts.redis_port) if opts.redis_port else 0

    statuses, instances, lock = Counter(), Counter(), threading.Lock()
    remaining = [opts.requests]

    def client():
        c = http.client.HTTPConnection("127.0.0.1", opts.port, timeout=10)
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                status, _, instance, _ = request(c, "/views", cookie)
            except (OSError, http.client.HTTPException) as error:
                status, instance = type(error).__name__, None
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", opts.port, timeout=10)
            with lock:
                statuses[status] += 1
                instances[instance] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(opts.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    after = session_commands(opts.redis_port) if opts.redis_port else 0

    status, _, _, body = request(conn, "/session", cookie)
    views = json.loads(body)["data"].get("views") if status == 200 else None
    answered = statuses[200]
    exact = views == 1 + answered
    print(f"{opts.connections} connections, one session, {opts.requests} x GET /views in {elapsed:.1f} s "
          f"({opts.requests / elapsed:,.0f} req/s)")
    print(f"statuses: {dict(statuses)}; instances: {dict(instances)}")
    print(f"views = {views} after 1 + {answered} answered increments: {'exact' if exact else 'OFF'}")
    if opts.redis_port:
        print(f"Redis round trips per request (GETEX + script): {(after - before) / opts.requests:.3f}")
    return 0 if exact and answered == opts.requests else 1


if __name__ == "__main__":
    sys.exit(main())
