#!/usr/bin/env python3
"""Load generator, fault driver and judge for `make chaos` (scripts/chaos.sh starts Redis and evserver first).

Standard library only. While ~16 keep-alive clients (one session each) send GET /views, GET /login and
POST /session at a few hundred requests per second, this runs the phases

    baseline 3 s | a: kill -9 redis-server, 5 s down, restart (same port, dir, AOF) | b: CLIENT PAUSE 3000
    | c: CLIENT KILL TYPE normal | recovery

and checks, per phase: no status other than 200/503, no connection error (the server keeps answering), session
routes answer within the Redis deadline + 100 ms, every 503 carries `Retry-After: 1` and a JSON body; throughout:
/healthz 200, /readyz 503 while Redis is down and 200 again within 2 s after it accepts connections, the server
process never restarted, and every session acknowledged (200) before a fault still reads at least that state
after it. Prints a table; exits 1 when a property fails, 2 on a setup error.

Every request is recorded (time, phase, client, route, status, latency) in --records (CSV).
"""

import argparse
import csv
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

SESSION_ROUTES = ("GET /views", "GET /login", "POST /session")
# The mix each client cycles through: mostly writes (GET /views is a GET + SET in Redis), some reads.
MIX = ("GET /views", "GET /login", "GET /views", "POST /session")


def now():
    return time.monotonic()


# MARK: - Redis, spoken directly (the fault driver must not depend on the server under test)

from resp import command as redis_command  # noqa: E402


def redis_answers(port):
    try:
        return redis_command(port, "PING", timeout=0.2) == "PONG"
    except OSError:
        return False


def redis_accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def process_start_time(pid):
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): a restarted process differs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# MARK: - Recording

class Recorder:
    """Every request, with the phase it started in. Appends are atomic under the GIL."""

    def __init__(self):
        self.phase = "setup"
        self.requests = []   # dicts
        self.polls = []      # (route, phase, start, end, status, error, retry_after)
        self.violations = []  # (phase, text)
        self.lock = threading.Lock()

    def violation(self, text, phase=None):
        with self.lock:
            self.violations.append((phase or self.phase, text))


def response_is_json(content_type, body):
    if not (content_type or "").startswith("application/json"):
        return False
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def session_id_of(set_cookie):
    """The id in `connect.sid=s%3A<id>.<sig>; ...`, or None."""
    if not set_cookie or not set_cookie.startswith("connect.sid="):
        return None
    value = set_cookie.split(";", 1)[0][len("connect.sid="):]
    if not value.startswith("s%3A") or "." not in value:
        return None
    return value[4:value.rindex(".")]


# MARK: - Load clients

class Client(threading.Thread):
    """One user: a keep-alive connection, one session, requests in sequence at a steady pace."""

    def __init__(self, index, args, recorder, stop):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index, self.args, self.recorder, self.stop = index, args, recorder, stop
        self.lock = threading.Lock()
        self.cookie = None         # the connect.sid value as sent by the server
        self.session_id = None
        self.acked_views = 0       # the last `views` the server acknowledged with a 200
        self.conn = None

    def snapshot(self):
        with self.lock:
            return self.cookie, self.acked_views

    def request(self, route, count):
        method, path = route.split(" ", 1)
        body = None
        headers = {}
        if method == "POST":
            body = json.dumps({"client": self.index, "n": count}).encode()
            headers["Content-Type"] = "application/json"
        if self.cookie:
            headers["Cookie"] = "connect.sid=" + self.cookie
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.args.host, self.args.port, timeout=self.args.request_timeout)
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response, data

    def run(self):
        interval = 1.0 / self.args.client_rate
        next_at = now() + interval * self.index / len(MIX)  # spread the clients' starts
        count = 0
        while not self.stop.is_set():
            delay = next_at - now()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + interval, now())
            route = "GET /views" if self.cookie is None else MIX[count % len(MIX)]
            count += 1
            phase = self.recorder.phase
            start = now()
            status, error, retry_after, detail = None, "", "", ""
            try:
                response, data = self.request(route, count)
                status = response.status
                retry_after = response.getheader("Retry-After") or ""
                self.check(route, response, data, phase)
            except Exception as exc:   # any failure to get an answer is a connection error
                error = f"{type(exc).__name__}: {exc}"
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
            end = now()
            self.recorder.requests.append({
                "start": start, "end": end, "phase": phase, "client": self.index, "route": route,
                "status": status, "latency_ms": (end - start) * 1000, "error": error, "retry_after": retry_after,
                "json_error": detail,
            })
        if self.conn is not None:
            self.conn.close()

    def check(self, route, response, data, phase):
        status = response.status
        if status == 503:
            if response.getheader("Retry-After") != "1":
                self.recorder.violation(f"client {self.index}: 503 on {route} without Retry-After: 1", phase)
            if not response_is_json(response.getheader("Content-Type"), data):
                self.recorder.violation(f"client {self.index}: 503 on {route} without a JSON object body", phase)
            return
        if status != 200:
            return
        set_cookie = response.getheader("Set-Cookie")
        new_id = session_id_of(set_cookie)
        with self.lock:
            if new_id and self.session_id and new_id != self.session_id:
                self.recorder.violation(
                    f"client {self.index}: session lost: {route} answered with a new session "
                    f"(last acknowledged views {self.acked_views})", phase)
                self.acked_views = 0
            if new_id:
                self.session_id = new_id
                self.cookie = set_cookie.split(";", 1)[0][len("connect.sid="):]
            views = None
            if route == "GET /views":
                views = json.loads(data)["views"]
            elif route == "POST /session":
                views = json.loads(data)["data"].get("views", 0)
            if views is not None:
                minimum = self.acked_views + 1 if route == "GET /views" else self.acked_views
                if views < minimum:
                    self.recorder.violation(
                        f"client {self.index}: {route} saw views={views} after {self.acked_views} was acknowledged",
                        phase)
                self.acked_views = max(views, self.acked_views) if route == "GET /views" else self.acked_views


# MARK: - Pollers

class Poller(threading.Thread):
    """GETs `path` on a new connection every `interval` (new connections land on every event loop)."""

    def __init__(self, path, interval, args, recorder, stop):
        super().__init__(name=f"poll{path}", daemon=True)
        self.path, self.interval, self.args, self.recorder, self.stop = path, interval, args, recorder, stop

    def run(self):
        while not self.stop.is_set():
            phase = self.recorder.phase
            start = now()
            status, error, retry_after = None, "", ""
            try:
                conn = http.client.HTTPConnection(self.args.host, self.args.port, timeout=self.args.request_timeout)
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                status = response.status
                retry_after = response.getheader("Retry-After") or ""
                conn.close()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            end = now()
            self.recorder.polls.append((self.path, phase, start, end, status, error, retry_after))
            time.sleep(max(0.0, self.interval - (end - start)))


# MARK: - The run

class Chaos:
    def __init__(self, args):
        self.args = args
        self.recorder = Recorder()
        self.stop = threading.Event()
        self.clients = [Client(i, args, self.recorder, self.stop) for i in range(args.clients)]
        self.pollers = [Poller("/healthz", 0.1, args, self.recorder, self.stop),
                        Poller("/readyz", 0.05, args, self.recorder, self.stop)]
        self.phases = []           # (name, start, end)
        self.events = {}           # name -> time
        self.durability = []       # (fault, checked, failures)
        self.notes = []

    def enter(self, name):
        t = now()
        if self.phases:
            self.phases[-1][2] = t
        self.phases.append([name, t, None])
        self.recorder.phase = name
        print(f"  [{t - self.t0:6.2f} s] {name}", flush=True)

    def log(self, text):
        print(f"  [{now() - self.t0:6.2f} s]   {text}", flush=True)

    def redis_pid(self):
        with open(self.args.redis_pidfile) as f:
            return int(f.read().strip())

    def start_redis(self):
        subprocess.run(["redis-server", self.args.redis_conf], check=True, stdout=subprocess.DEVNULL)

    def wait_for(self, predicate, timeout, step=0.01):
        deadline = now() + timeout
        while now() < deadline:
            if predicate():
                return now()
            time.sleep(step)
        return None

    def verify_sessions(self, fault, snapshots):
        """Every client's session, acknowledged before `fault`, must read at least that state now."""
        failures = []
        deadline = now() + 5.0
        for client, (cookie, views) in zip(self.clients, snapshots):
            if cookie is None:
                failures.append(f"client {client.index} had no session before {fault}")
                continue
            seen = None
            while now() < deadline:
                try:
                    conn = http.client.HTTPConnection(self.args.host, self.args.port, timeout=self.args.request_timeout)
                    conn.request("GET", "/session", headers={"Cookie": "connect.sid=" + cookie})
                    response = conn.getresponse()
                    body = response.read()
                    conn.close()
                    if response.status == 200:
                        seen = json.loads(body)
                        break
                except Exception:
                    pass
                time.sleep(0.1)
            if seen is None:
                failures.append(f"client {client.index}: GET /session never answered 200 after {fault}")
            elif seen.get("id") is None:
                failures.append(f"client {client.index}: session gone after {fault} (had views={views})")
            elif seen["data"].get("views", 0) < views:
                failures.append(f"client {client.index}: views {seen['data'].get('views')} < acknowledged {views} "
                                f"after {fault}")
        self.durability.append((fault, len(snapshots), failures))
        for failure in failures:
            self.recorder.violation(failure, fault)

    def run(self):
        args = self.args
        self.t0 = now()
        self.server_start = process_start_time(args.server_pid)
        if self.server_start is None:
            raise SystemExit(f"evserver pid {args.server_pid} is not running")
        print("phases:", flush=True)
        self.enter("setup")
        for poller in self.pollers:
            poller.start()
        for client in self.clients:
            client.start()
        if self.wait_for(lambda: all(c.snapshot()[0] for c in self.clients), 5.0, 0.05) is None:
            raise SystemExit("the clients did not all get a session within 5 s")

        self.enter("baseline")
        time.sleep(3.0)

        # (a) kill -9, 5 s down, restart on the same port and directory (the AOF brings the sessions back).
        before_a = [c.snapshot() for c in self.clients]
        self.enter("a: redis killed")
        pid = self.redis_pid()
        os.kill(pid, 9)
        self.events["killed"] = now()
        self.wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
                      2.0)
        time.sleep(5.0)
        self.events["restarting"] = now()
        self.enter("a: after restart")
        self.start_redis()
        accepted = self.wait_for(lambda: redis_accepts(args.redis_port), 5.0)
        answered = self.wait_for(lambda: redis_answers(args.redis_port), 5.0)
        if answered is None:
            raise SystemExit("redis-server did not come back after the restart")
        self.events["accepting"] = accepted
        self.events["answering"] = answered
        self.log(f"redis accepts connections {1000 * (accepted - self.events['restarting']):.0f} ms after the "
                 f"restart, answers PING after {1000 * (answered - self.events['restarting']):.0f} ms")
        time.sleep(3.0)
        self.verify_sessions("a: kill -9", before_a)

        # (b) CLIENT PAUSE 3000: Redis holds every command for 3 s; the deadline (1 s) must answer for it.
        before_b = [c.snapshot() for c in self.clients]
        self.enter("b: CLIENT PAUSE 3000")
        reply = redis_command(args.redis_port, "CLIENT", "PAUSE", "3000")
        self.events["paused"] = now()
        self.log(f"CLIENT PAUSE 3000 -> {reply}")
        time.sleep(3.0)
        self.enter("b: after pause")
        time.sleep(2.5)
        self.verify_sessions("b: CLIENT PAUSE", before_b)

        # (c) CLIENT KILL TYPE normal: every client connection (the server's included) is cut at once.
        before_c = [c.snapshot() for c in self.clients]
        self.enter("c: CLIENT KILL")
        reply = redis_command(args.redis_port, "CLIENT", "KILL", "TYPE", "normal")
        self.events["client-kill"] = now()
        self.log(f"CLIENT KILL TYPE normal -> {reply} connections killed")
        time.sleep(3.0)
        self.verify_sessions("c: CLIENT KILL", before_c)

        self.enter("recovery")
        time.sleep(3.0)
        self.phases[-1][2] = now()
        self.stop.set()
        for thread in self.clients + self.pollers:
            thread.join(timeout=args.request_timeout + 1)
        self.events["end"] = now()

        pid_ok = process_start_time(args.server_pid) == self.server_start
        return pid_ok

    # MARK: Report

    def report(self, pid_ok):
        args = self.args
        rows = []
        failures = []
        limit = args.redis_timeout + 100
        requests = [r for r in self.recorder.requests if r["phase"] != "setup"]
        print()
        header = (f"{'phase':22} {'requests':>8} {'200':>6} {'503':>6} {'other':>6} {'conn err':>8} "
                  f"{'503 span':>8} {'max ms':>7} {'p99 ms':>7} {'503 ok':>7} {'healthz':>8} {'readyz 200/503':>15}")
        print(header)
        print("-" * len(header))
        for name, start, end in self.phases:
            if name == "setup":
                continue
            rs = [r for r in requests if r["phase"] == name]
            ok = sum(1 for r in rs if r["status"] == 200)
            unavailable = [r for r in rs if r["status"] == 503]
            other = [r for r in rs if r["status"] not in (200, 503, None)]
            errors = [r for r in rs if r["status"] is None]
            latencies = sorted(r["latency_ms"] for r in rs if r["route"] in SESSION_ROUTES)
            max_ms = latencies[-1] if latencies else 0.0
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
            bad_503 = [v for v in self.recorder.violations if v[0] == name and "503 on" in v[1]]
            health = [p for p in self.recorder.polls if p[0] == "/healthz" and p[1] == name]
            health_bad = [p for p in health if p[4] != 200]
            ready = [p for p in self.recorder.polls if p[0] == "/readyz" and p[1] == name]
            ready_200 = sum(1 for p in ready if p[4] == 200)
            ready_503 = sum(1 for p in ready if p[4] == 503)
            # How long the 503s lasted: from the first one's start to the last one's end.
            span = (max(r["end"] for r in unavailable) - min(r["start"] for r in unavailable)) * 1000 if unavailable else 0
            print(f"{name:22} {len(rs):8} {ok:6} {len(unavailable):6} {len(other):6} {len(errors):8} "
                  f"{span:8.0f} {max_ms:7.0f} {p99:7.0f} {'yes' if not bad_503 else 'NO':>7} "
                  f"{len(health) - len(health_bad):>3}/{len(health):<4} {ready_200:>7}/{ready_503:<7}")
            if other:
                statuses = sorted({r["status"] for r in other})
                failures.append(f"{name}: {len(other)} answers with statuses {statuses} (only 200 and 503 allowed)")
            if errors:
                failures.append(f"{name}: {len(errors)} connection errors, e.g. {errors[0]['error']}")
            if max_ms > limit:
                slow = max((r for r in rs if r["route"] in SESSION_ROUTES), key=lambda r: r["latency_ms"])
                failures.append(f"{name}: session route took {max_ms:.0f} ms > {limit} ms "
                                f"({slow['route']} -> {slow['status']})")
            if health_bad:
                failures.append(f"{name}: /healthz failed {len(health_bad)} times, e.g. "
                                f"{health_bad[0][4] or health_bad[0][5]}")
            if name in ("baseline", "recovery") and unavailable:
                failures.append(f"{name}: {len(unavailable)} answers 503 while Redis was healthy")
            if name == "baseline" and not rs:
                failures.append("baseline: no requests were made")
        for phase, text in self.recorder.violations:
            failures.append(f"{phase}: {text}")

        # /readyz around the outage.
        killed, restarting = self.events["killed"], self.events["restarting"]
        accepting = self.events["accepting"]
        down_polls = [p for p in self.recorder.polls
                      if p[0] == "/readyz" and p[2] >= killed + 0.1 and p[3] <= restarting]
        down_not_503 = [p for p in down_polls if p[4] != 503]
        first_ready = next((p for p in sorted(self.recorder.polls, key=lambda p: p[3])
                            if p[0] == "/readyz" and p[2] >= accepting and p[4] == 200), None)
        ready_after = (first_ready[3] - accepting) if first_ready else None
        late_503 = [p for p in self.recorder.polls
                    if p[0] == "/readyz" and p[2] >= accepting + 2.0 and p[1] == "a: after restart" and p[4] != 200]
        last_session_503 = max((r["end"] for r in requests
                                if r["phase"] == "a: after restart" and r["status"] == 503), default=None)
        print()
        print(f"/readyz while Redis was down: {len(down_polls) - len(down_not_503)}/{len(down_polls)} answered 503")
        if ready_after is not None:
            print(f"/readyz 200 again {ready_after * 1000:.0f} ms after Redis accepted connections"
                  f" (limit 2000 ms); later non-200 /readyz in that phase: {len(late_503)}")
        if last_session_503 is not None:
            print(f"last session 503 after the restart: {1000 * (last_session_503 - accepting):.0f} ms after "
                  f"Redis accepted connections")
        if not down_polls:
            failures.append("no /readyz poll ran while Redis was down")
        if down_not_503:
            failures.append(f"/readyz answered {sorted({str(p[4] or p[5]) for p in down_not_503})} while Redis "
                            f"was down ({len(down_not_503)} of {len(down_polls)} polls)")
        if ready_after is None or ready_after > 2.0:
            failures.append("/readyz was not 200 within 2 s after Redis accepted connections"
                            + (f" ({ready_after * 1000:.0f} ms)" if ready_after is not None else ""))
        if late_503:
            failures.append(f"/readyz answered non-200 {len(late_503)} times more than 2 s after Redis came back")

        for fault, checked, problems in self.durability:
            print(f"sessions acknowledged before {fault}: {checked - len(problems)}/{checked} readable after it")
        print(f"evserver pid {args.server_pid}: {'same process, alive' if pid_ok else 'RESTARTED OR DEAD'}")
        if not pid_ok:
            failures.append(f"evserver (pid {args.server_pid}) died or was restarted")
        total = len(requests)
        span = self.events["end"] - self.phases[1][1]
        print(f"{total} requests in {span:.1f} s ({total / span:.0f}/s) from {args.clients} clients; "
              f"deadline {args.redis_timeout} ms, session-route latency limit {limit} ms")

        if args.records:
            with open(args.records, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["kind", "t_s", "phase", "client", "route", "status", "latency_ms", "error",
                                 "retry_after"])
                for r in sorted(self.recorder.requests, key=lambda r: r["start"]):
                    writer.writerow(["request", f"{r['start'] - self.t0:.4f}", r["phase"], r["client"], r["route"],
                                     r["status"] or "", f"{r['latency_ms']:.1f}", r["error"], r["retry_after"]])
                for path, phase, start, end, status, error, retry_after in sorted(self.recorder.polls,
                                                                                   key=lambda p: p[2]):
                    writer.writerow(["poll", f"{start - self.t0:.4f}", phase, "", "GET " + path, status or "",
                                     f"{(end - start) * 1000:.1f}", error, retry_after])
            print(f"records: {args.records}")

        print()
        if failures:
            print(f"FAIL: {len(failures)} properties failed")
            seen = set()
            for failure in failures:
                if failure not in seen:
                    print("  - " + failure)
                    seen.add(failure)
            return 1
        print("PASS: every property held")
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="evserver's port")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--redis-conf", required=True, help="the redis.conf to restart redis-server with")
    parser.add_argument("--redis-pidfile", required=True)
    parser.add_argument("--redis-timeout", type=int, default=1000, help="the server's --redis-timeout, ms")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--client-rate", type=float, default=20.0, help="requests per second per client")
    parser.add_argument("--request-timeout", type=float, default=5.0, help="seconds before a request is an error")
    parser.add_argument("--records", help="write every request and poll here (CSV)")
    args = parser.parse_args()
    chaos = Chaos(args)
    try:
        pid_ok = chaos.run()
    except SystemExit as exc:
        chaos.stop.set()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return chaos.report(pid_ok)


if __name__ == "__main__":
    sys.exit(main())
