#!/usr/bin/env python3
"""Load generator, fault driver and judge for `make sentinel-chaos` (scripts/sentinel-chaos.sh starts the primary,
its replica, three sentinels and one evserver on --redis-sentinel first).

Standard library only. Keep-alive clients (one session each) alternate POST /session {"n": k} (a write, k counting
up) and GET /session (a read) at a few hundred requests per second in all, through the phases

    baseline 3 s | failover: SENTINEL FAILOVER, until the sentinels name the new primary + 3 s
    | settle: until the old primary is an in-sync replica (the sentinels demote it ~10 s after the switch) + 1 s
    | kill -9: kill the current primary, until the sentinels name another + 3 s | recovery 2 s

Checks:
- every answer is 200 or 503 (never another status, never a connection error), none slower than --latency-limit;
- after each failover, requests are served again (the first 200 after the sentinels' switch) within 2 s of it;
- in baseline, settle and recovery, every answer is 200;
- no write acknowledged with 200 is read back older afterwards (counted as "lost writes"; replication is
  asynchronous, so this is reported, and judged only with --no-lost-writes).
Prints a table per phase; exits 1 when a property fails, 2 on a setup error.
"""

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time


def now():
    return time.monotonic()


# MARK: - Redis, spoken directly (the fault driver must not depend on the server under test)

from resp import command as redis_command  # noqa: E402


def master_port(sentinel_port, name):
    """The primary's port the sentinel names, or None."""
    try:
        reply = redis_command(sentinel_port, "SENTINEL", "get-master-addr-by-name", name)
    except OSError:
        return None
    return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None


def in_sync_replica(port):
    """Whether the server on `port` is a replica whose link to its primary is up."""
    try:
        info = redis_command(port, "INFO", "replication")
    except OSError:
        return False
    return isinstance(info, str) and "role:slave" in info and "master_link_status:up" in info


# MARK: - Clients

class Client(threading.Thread):
    def __init__(self, index, port, rate, records, lock, stop):
        super().__init__(daemon=True)
        self.index, self.port, self.interval = index, port, 1.0 / rate
        self.records, self.lock, self.stop = records, lock, stop
        self.cookie = None
        self.written = 0        # the last n acknowledged with 200
        self.acknowledged = []  # (time, n) of every 200 to a write

    def request(self, conn, method, path, body=None):
        headers = {"Connection": "keep-alive"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.cookie:
            headers["Cookie"] = self.cookie
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        for header, value in response.getheaders():
            if header.lower() == "set-cookie" and value.startswith("connect.sid="):
                self.cookie = value.split(";", 1)[0]
        return response.status, data

    def run(self):
        conn = None
        k = 0
        while not self.stop.is_set():
            started = now()
            k += 1
            write = k % 2 == 1
            n = k // 2 + 1
            status, error, seen = None, None, None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if write:
                    status, body = self.request(conn, "POST", "/session", json.dumps({"n": n}))
                else:
                    status, body = self.request(conn, "GET", "/session")
                    if status == 200:
                        seen = (json.loads(body).get("data") or {}).get("n")
            except (OSError, http.client.HTTPException, ValueError) as problem:
                error = "%s: %s" % (type(problem).__name__, problem)
                if conn is not None:
                    conn.close()
                conn = None
            finished = now()
            if write and status == 200:
                self.written = n
                self.acknowledged.append((finished, n))
            with self.lock:
                self.records.append((started, finished, self.index, write, status, error, seen, self.written))
            pause = self.interval - (now() - started)
            if pause > 0:
                self.stop.wait(pause)


# MARK: - Phases

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="evserver's port")
    parser.add_argument("--sentinel", type=int, required=True, help="a sentinel's port (to trigger and watch)")
    parser.add_argument("--master", default="mymaster")
    parser.add_argument("--pid-dir", required=True, help="redis-sentinel.sh's directory (primary/, replica/ pids)")
    parser.add_argument("--primary-port", type=int, required=True)
    parser.add_argument("--replica-port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per client")
    parser.add_argument("--latency-limit", type=float, default=2.0, help="seconds")
    parser.add_argument("--no-lost-writes", action="store_true", help="fail when an acknowledged write is lost")
    args = parser.parse_args()

    pids = {}
    for role, port in (("primary", args.primary_port), ("replica", args.replica_port)):
        with open(os.path.join(args.pid_dir, role, "redis.pid")) as file:
            pids[port] = int(file.read().strip())

    records, lock, stop = [], threading.Lock(), threading.Event()
    clients = [Client(i, args.port, args.rate, records, lock, stop) for i in range(args.clients)]
    for client in clients:
        client.start()

    phases = []   # (name, start, end, switch time or None)

    def run_phase(name, seconds):
        start = now()
        time.sleep(seconds)
        phases.append((name, start, now(), None))

    def failover_phase(name, trigger):
        before = master_port(args.sentinel, args.master)
        if before is None:
            print("setup error: the sentinel on %d names no primary" % args.sentinel)
            sys.exit(2)
        start = now()
        trigger(before)
        switched = None
        while now() - start < 30:
            current = master_port(args.sentinel, args.master)
            if current is not None and current != before:
                switched = now()
                break
            time.sleep(0.02)
        if switched is None:
            print("the sentinels did not fail over within 30 s (%s)" % name)
        time.sleep(3)
        phases.append((name, start, now(), switched))
        return switched

    def forced(before):
        reply = redis_command(args.sentinel, "SENTINEL", "FAILOVER", args.master)
        if reply != "OK":
            print("SENTINEL FAILOVER answered %r" % (reply,))

    def kill(before):
        os.kill(pids[before], signal.SIGKILL)

    def settle_phase():
        # The sentinels turn the old primary into a replica of the new one about 10 s after the switch; only then
        # is there a replica to promote when the new primary dies.
        start = now()
        demoted = args.primary_port if master_port(args.sentinel, args.master) == args.replica_port \
            else args.replica_port
        while now() - start < 30 and not in_sync_replica(demoted):
            time.sleep(0.1)
        if not in_sync_replica(demoted):
            print("setup error: the old primary (%d) did not become an in-sync replica within 30 s" % demoted)
            stop.set()
            sys.exit(2)
        time.sleep(1)
        phases.append(("settle", start, now(), None))

    run_phase("baseline", 3)
    failover_phase("failover", forced)
    settle_phase()
    failover_phase("kill -9", kill)
    run_phase("recovery", 2)
    stop.set()
    for client in clients:
        client.join(timeout=15)

    # MARK: Judging

    failures = []
    print("%-10s %7s %6s %6s %6s %7s %9s  %s" % ("phase", "answers", "200", "503", "other", "errors", "p99 ms",
                                                 "served again"))
    for name, start, end, switched in phases:
        rows = [r for r in records if start <= r[0] < end]
        ok = sum(1 for r in rows if r[4] == 200)
        unavailable = sum(1 for r in rows if r[4] == 503)
        other = [r for r in rows if r[4] not in (200, 503) and r[5] is None]
        errors = [r for r in rows if r[5] is not None]
        latencies = sorted(r[1] - r[0] for r in rows)
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0
        slow = [r for r in rows if r[1] - r[0] > args.latency_limit]
        served = ""
        if switched is not None:
            # Served again: the first 200 that started after the last 503 began (negative: before the sentinels
            # announced the switch, as the clients follow the promotion itself).
            last_503 = max([r[0] for r in rows if r[4] == 503], default=None)
            if last_503 is None:
                served = "no 503 (sentinels switched %d ms after the trigger)" % ((switched - start) * 1000)
            else:
                resumed = min([r[1] for r in rows if r[4] == 200 and r[0] > last_503], default=None)
                if resumed is None:
                    served = "never"
                    failures.append("%s: not served again after the sentinels' switch" % name)
                else:
                    served = "%+d ms from the sentinels' switch (%d ms after the trigger)" % (
                        (resumed - switched) * 1000, (switched - start) * 1000)
                    if resumed - switched > 2.0:
                        failures.append("%s: served again %.1f s after the switch (limit 2 s)"
                                        % (name, resumed - switched))
        elif name in ("failover", "kill -9"):
            failures.append("%s: the sentinels never switched" % name)
        print("%-10s %7d %6d %6d %6d %7d %9.0f  %s" % (name, len(rows), ok, unavailable, len(other), len(errors),
                                                       p99, served))
        if other:
            failures.append("%s: %d answers neither 200 nor 503 (e.g. %s)" % (name, len(other), other[0][4]))
        if errors:
            failures.append("%s: %d connection errors (e.g. %s)" % (name, len(errors), errors[0][5]))
        if slow:
            failures.append("%s: %d answers slower than %.1f s" % (name, len(slow), args.latency_limit))
        if name in ("baseline", "settle", "recovery") and ok != len(rows):
            failures.append("%s: %d answers were not 200" % (name, len(rows) - ok))

    # A read that returns an n older than a write acknowledged before that read started: a lost write.
    lost = 0
    example = None
    for client in clients:
        acknowledged = client.acknowledged
        for started, finished, index, write, status, error, seen, _ in records:
            if index != client.index or write or status != 200:
                continue
            expected = max([n for t, n in acknowledged if t < started], default=None)
            if expected is not None and (seen is None or seen < expected):
                lost += 1
                example = example or "client %d read n=%s after n=%d was acknowledged" % (index, seen, expected)
                break
    total = sum(len(client.acknowledged) for client in clients)
    print("%d writes acknowledged; %d of %d sessions read back an older value after a 200%s" % (
        total, lost, len(clients), " (e.g. %s)" % example if example else ""))
    if lost and args.no_lost_writes:
        failures.append("%d sessions lost an acknowledged write" % lost)

    for failure in failures:
        print("FAIL: " + failure)
    print("PASS" if not failures else "FAILED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
