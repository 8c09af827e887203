#!/usr/bin/env python3
"""Slow-Redis latency probe for `scripts/chaos.sh latency`: is a session request answered within the Redis
deadline (+100 ms) when every Redis reply is slow but none misses the deadline?

Runs a TCP proxy on --listen-port in front of Redis (--redis-port) that delays every Redis -> client byte by D ms
(a slow network or an overloaded Redis; D < the deadline, so no single command times out). evserver must use
redis://127.0.0.1:<listen-port>. For each D it measures, on a session made beforehand:
    GET /views   (GETEX + EVALSHA)   GET /login (GETEX)   GET /views without a cookie (EVALSHA)
and prints status and latency. Exit 1 when a session route takes longer than deadline + 100 ms. Standard library only.
"""

import argparse
import asyncio
import http.client
import json
import sys
import threading
import time


class DelayProxy:
    """Forwards client -> Redis at once and Redis -> client after `delay` seconds, in order."""

    def __init__(self, listen_port, redis_port):
        self.listen_port, self.redis_port = listen_port, redis_port
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    def start(self):
        threading.Thread(target=self._run, daemon=True, name="delay-proxy").start()
        if not self.ready.wait(5):
            raise SystemExit("the delaying proxy did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.listen_port))
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _serve(self, client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        except OSError:
            client_writer.close()
            return

        async def forward(reader, writer, delayed):
            queue = asyncio.Queue()

            async def deliver():
                while True:
                    due, chunk = await queue.get()
                    if chunk is None:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(chunk)
                    await writer.drain()
                writer.close()

            task = asyncio.ensure_future(deliver())
            try:
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    await queue.put((time.monotonic() + (self.delay if delayed else 0.0), chunk))
            except OSError:
                pass
            await queue.put((0, None))
            await task

        await asyncio.gather(forward(client_reader, upstream_writer, False),
                             forward(upstream_reader, client_writer, True), return_exceptions=True)


def request(port, path, cookie=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Cookie": "connect.sid=" + cookie} if cookie else {}
    start = time.monotonic()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.monotonic() - start) * 1000
    set_cookie = response.getheader("Set-Cookie") or ""
    conn.close()
    return response.status, elapsed, body, set_cookie


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="evserver's port")
    parser.add_argument("--listen-port", type=int, required=True, help="the proxy's port (evserver's Redis)")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--redis-timeout", type=int, default=1000, help="evserver's --redis-timeout, ms")
    parser.add_argument("--delays", default="0,300,600,900", help="reply delays to try, ms")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    proxy = DelayProxy(args.listen_port, args.redis_port)
    proxy.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if request(args.port, "/readyz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        raise SystemExit("evserver never became ready through the proxy")

    status, _, _, set_cookie = request(args.port, "/views")
    if status != 200 or not set_cookie.startswith("connect.sid="):
        raise SystemExit(f"could not make a session: {status}")
    cookie = set_cookie.split(";", 1)[0][len("connect.sid="):]

    limit = args.redis_timeout + 100
    failures = []
    print(f"{'reply delay':>11}  {'route':28} {'statuses':12} {'max ms':>7}  commands")
    for delay in [int(d) for d in args.delays.split(",")]:
        proxy.delay = delay / 1000
        time.sleep(0.2)
        for label, path, with_cookie, commands in [
            ("GET /views (session)", "/views", True, "GETEX + EVALSHA"),
            ("GET /login (session)", "/login", True, "GETEX"),
            ("GET /views (new session)", "/views", False, "EVALSHA"),
        ]:
            results = [request(args.port, path, cookie if with_cookie else None) for _ in range(args.repeat)]
            statuses = sorted({r[0] for r in results})
            worst = max(r[1] for r in results)
            print(f"{delay:>8} ms  {label:28} {','.join(map(str, statuses)):12} {worst:7.0f}  {commands}")
            if worst > limit:
                failures.append(f"{label} took {worst:.0f} ms with {delay} ms per Redis reply "
                                f"(deadline {args.redis_timeout} ms, limit {limit} ms; statuses {statuses})")
    print()
    if failures:
        print(f"FAIL: a session request is not bounded by the Redis deadline ({len(failures)} cases)")
        for failure in failures:
            print("  - " + failure)
        return 1
    print("PASS: every session request was answered within the deadline + 100 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
