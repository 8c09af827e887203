#!/usr/bin/env python3
"""Runs EvServer's benchmarks; scripts/bench.sh builds the servers, starts Redis, and calls this.

Modes:
  scenarios  wrk on hello/read/read-tls/write/hot/create against each server: req/s, p50/p99, Redis commands, CPU,
             peak RSS. `hot` is `write` with every connection on one session, run once per --hot-connections
             count (rows `hot@8`, ...): non-2xx replies, round trips per request and the counter's exactness. `read-tls` is `read` against a second redis-server that speaks TLS only (--tls-redis-port,
             `rediss://`); only the servers named by --tls-servers run it (the C reference has no TLS), and its
             ratios are against the same server's plain-text `read` of this run.
  growth     RSS after 200k vs after 2M requests of the `write` scenario
  idle       RSS added by 10,000 idle keep-alive connections

Every server this starts is stopped before it returns, on error or Ctrl-C too; each one's pid is also written
to WORK/pids/ so bench.sh's trap can end it if this process itself is killed. Only 127.0.0.1 is ever contacted.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import resp  # scripts/resp.py: RESP without a client library

ROOT = Path(__file__).resolve().parent.parent
WRK_DIR = ROOT / "Benchmarks" / "wrk"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
INSTANCE = "bench"
SCENARIOS = {
    # name: (path, what the session needs, expected body)
    "hello": ("/hello", "none", "ok"),
    "read": ("/login", "one", "Welcome Aditya@123"),
    "write": ("/views", "many", None),  # {"views":n,"instance":"bench"}
    "hot": ("/views", "one", None),  # every connection on one session
    "create": ("/", "none", "Thanks for visiting"),
    "read-tls": ("/login", "one", "Welcome Aditya@123"),
}
# Scenarios run against the TLS redis-server, and the plain-text scenario each one is compared with.
TLS_TWIN = {"read-tls": "read"}
VIEWS_BODY = re.compile(r'^\{"views":(\d+),"instance":"' + INSTANCE + r'"\}$')


class BenchError(Exception):
    pass


def log(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


# MARK: - Redis (resp.py's connection: the harness needs no Python packages)

class Redis(resp.Connection):
    """A kept connection whose error replies and failures are BenchErrors."""

    def __init__(self, port, tls_ca=None):
        if tls_ca is None:
            super().__init__(port, timeout=30)
            return
        # resp.Connection over TLS (verified against the benchmark's CA): the TLS redis-server has no plain port.
        context = ssl.create_default_context(cafile=tls_ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args):
        try:
            reply = super().__call__(*args)
        except OSError as error:
            raise BenchError(f"redis: {error}") from error
        if isinstance(reply, Exception):
            raise BenchError(f"redis: {reply}")
        return reply

    def command_calls(self):
        """Calls per command since Redis started, from INFO commandstats (INFO itself left out)."""
        info = self("INFO", "commandstats").decode()
        calls = {}
        for m in re.finditer(r"^cmdstat_([^:]+):calls=(\d+)", info, re.M):
            if m.group(1) != "info":
                calls[m.group(1)] = int(m.group(2))
        return calls


# MARK: - Processes

def read_proc(pid):
    """(cpu seconds, VmRSS kB, VmHWM kB) of a process, threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
    hwm = int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1))
    return cpu, rss, hwm


def cpu_busy():
    """Busy seconds of each CPU since boot, from /proc/stat (everything but idle and iowait)."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            t = [int(x) for x in m.group(2).split()]
            busy[int(m.group(1))] = (sum(t[:8]) - t[3] - t[4]) / CLK_TCK
    return busy


def children_cpu():
    """CPU seconds of the children this process has waited for (wrk, once it has ended)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpus, cmd):
    return ["taskset", "-c", cpus] + cmd if cpus else cmd


class Server:
    """One server process, started fresh for each measurement so its peak RSS belongs to that run."""

    def __init__(self, label, binary, opts, tls=False):
        self.label, self.binary, self.opts, self.tls = label, binary, opts, tls
        self.proc = None

    def start(self):
        self.port = free_port()
        redis = (f"rediss://127.0.0.1:{self.opts.tls_redis_port}/0" if self.tls
                 else f"redis://127.0.0.1:{self.opts.redis_port}/0")
        cmd = [self.binary, "--port", str(self.port), "--threads", str(self.opts.threads), "--redis-url", redis,
               "--secret", self.opts.secret, "--instance", INSTANCE]
        env_tls = {}
        if self.tls:
            # The CA that signed the TLS redis-server's certificate: --redis-tls-ca where the binary has it, else
            # OpenSSL's default CA file (SSL_CERT_FILE), which evserver's default verification reads.
            if tls_ca_flag(self.binary):
                cmd += ["--redis-tls-ca", self.opts.tls_ca]
            else:
                env_tls["SSL_CERT_FILE"] = self.opts.tls_ca
        cmd = pinned(self.opts.server_cpus, cmd)
        self.log_path = Path(self.opts.work) / f"{self.label}.log"
        self.log_file = open(self.log_path, "ab")
        # taskset execs the server, so the pid is the server's.
        # evserver caps open connections per loop (10,000 by default); the idle check holds that many and then
        # asks for one more answer, so the cap is raised above it (the C reference has no cap and ignores this).
        env = dict(os.environ, EVSERVER_MAX_CONNECTIONS=str(self.opts.idle_connections + 1000), **env_tls)
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        self.pid_file = Path(self.opts.work) / "pids" / f"{self.label}.pid"
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode} at startup:\n{self.log_tail()}")
            try:
                if http_get(self.port, "/hello", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.label} did not answer GET /hello within 20 s:\n{self.log_tail()}")

    def log_tail(self):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log_file.close()
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


_tls_ca_flag = {}


def tls_ca_flag(binary):
    """Whether the binary takes --redis-tls-ca (its --help names it); older evservers only have SSL_CERT_FILE."""
    if binary not in _tls_ca_flag:
        try:
            run = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
            _tls_ca_flag[binary] = "--redis-tls-ca" in run.stdout + run.stderr
        except (OSError, subprocess.TimeoutExpired):
            _tls_ca_flag[binary] = False
    return _tls_ca_flag[binary]


# MARK: - HTTP

def http_get(port, path, cookie=None, conn=None, timeout=10):
    """GET over a fresh (or the given keep-alive) connection: (status, headers, body text)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        return r.status, r.getheaders(), body
    finally:
        if conn is None:
            c.close()


def header(headers, name):
    return next((v for k, v in headers if k.lower() == name.lower()), None)


def session_cookie(headers):
    """`connect.sid=...` from a Set-Cookie header, or None."""
    for k, v in headers:
        if k.lower() == "set-cookie" and v.startswith("connect.sid=s%3A"):
            return v.split(";", 1)[0]
    return None


def session_id(cookie):
    """The id inside `connect.sid=s%3A<id>.<signature>`."""
    return cookie.split("=", 1)[1][len("s%3A"):].rsplit(".", 1)[0]


def prime_sessions(port, count):
    """Creates `count` sessions through the server (GET /) and returns their cookies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    cookies = []
    try:
        for _ in range(count):
            status, headers, body = http_get(port, "/", conn=conn)
            cookie = session_cookie(headers)
            if status != 200 or not cookie or body != "Thanks for visiting":
                raise BenchError(f"GET / answered {status} {body!r}, Set-Cookie {header(headers, 'Set-Cookie')!r}")
            cookies.append(cookie)
    finally:
        conn.close()
    return cookies


def check_reply(scenario, port, cookie):
    """One request of the scenario, checked like a client would; returns the headers worth comparing."""
    path, _, expected = SCENARIOS[scenario]
    status, headers, body = http_get(port, path, cookie)
    ok = status == 200 and (VIEWS_BODY.match(body) if expected is None else body == expected)
    if scenario == "create":
        ok = ok and session_cookie(headers) is not None
    if not ok:
        raise BenchError(f"{scenario}: GET {path} answered {status} {body[:200]!r} with headers {headers}")
    return {"status": status, "content-type": header(headers, "Content-Type"),
            "x-instance": header(headers, "X-Instance"), "set-cookie": session_cookie(headers) is not None}


# MARK: - wrk

def wrk(opts, port, path, duration, cookie=None, cookie_file=None, connections=None):
    cmd = pinned(opts.client_cpus, ["wrk", "-t1", f"-c{connections or opts.connections}", f"-d{duration}", "--latency",
                                    "-s", str(WRK_DIR / ("rotate.lua" if cookie_file else "report.lua"))])
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    if cookie_file:
        cmd += ["--", str(cookie_file)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds(duration) + 60)
    with open(Path(opts.work) / "wrk.log", "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{run.stdout}{run.stderr}\n")
    m = re.search(r"^BENCH_JSON (\{.*\})$", run.stdout, re.M)
    if run.returncode != 0 or not m:
        raise BenchError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    return json.loads(m.group(1))


def seconds(duration):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", duration)
    if not m:
        raise BenchError(f"bad duration {duration!r} (examples: 10s, 1s, 2m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# MARK: - Scenarios mode

def sum_views(redis, ids):
    total = 0
    for value in redis("MGET", *[f"sess:{i}" for i in ids]):
        m = re.search(rb'"views":(\d+)', value or b"")
        total += int(m.group(1)) if m else 0
    return total


def wait_quiet(limit):
    """Waits (at most `limit` seconds) until the machine is idle: 3 s in a row below 10% of a core."""
    deadline, calm = time.monotonic() + limit, 0
    while time.monotonic() < deadline and calm < 3:
        before = cpu_busy()
        time.sleep(1)
        calm = calm + 1 if sum(cpu_busy().values()) - sum(before.values()) < 0.1 else 0
    if calm < 3 and limit > 0:
        log(f"warning: the machine did not go quiet within {limit:.0f} s; measuring anyway")


def base_scenario(scenario):
    """`hot@16` -> `hot`: the scenario's definition; the suffix is its connection count."""
    return scenario.partition("@")[0]


def scenario_connections(opts, scenario):
    count = scenario.partition("@")[2]
    return int(count) if count else opts.connections


def run_scenario(opts, redis, label, binary, scenario):
    path, needs, _ = SCENARIOS[base_scenario(scenario)]
    connections = scenario_connections(opts, scenario)
    tls = scenario in TLS_TWIN
    redis, redis_pid = (opts.tls_redis, opts.tls_redis_pid) if tls else (redis, opts.redis_pid)
    wait_quiet(opts.wait_quiet)
    redis("FLUSHALL")  # every run starts from the same, empty store
    with Server(label, binary, opts, tls=tls) as server:
        cookie, cookie_file, ids, cookies = None, None, [], []
        if needs == "one":
            cookie = prime_sessions(server.port, 1)[0]
            if base_scenario(scenario) == "hot":
                ids = [session_id(cookie)]
        elif needs == "many":
            cookies = prime_sessions(server.port, opts.sessions)
            ids = [session_id(c) for c in cookies]
            cookie_file = Path(opts.work) / f"cookies-{label}.txt"
            cookie_file.write_text("\n".join(cookies) + "\n")
        headers = check_reply(base_scenario(scenario), server.port, cookie or (cookies[0] if cookies else None))
        if opts.warmup != "0":
            wrk(opts, server.port, path, opts.warmup, cookie, cookie_file, connections)

        views_before = sum_views(redis, ids) if ids else 0
        keys_before = redis("DBSIZE")
        calls_before = redis.command_calls()
        cpu_before, _, _ = read_proc(server.proc.pid)
        redis_before, _, _ = read_proc(redis_pid)
        wrk_before, busy_before = children_cpu(), cpu_busy()
        t0 = time.monotonic()
        result = wrk(opts, server.port, path, opts.duration, cookie, cookie_file, connections)
        wall = time.monotonic() - t0
        cpu_after, rss, hwm = read_proc(server.proc.pid)
        redis_after, _, _ = read_proc(redis_pid)
        wrk_cpu, busy_after = children_cpu() - wrk_before, cpu_busy()
        calls_after = redis.command_calls()
        requests = max(result["requests"], 1)

        # (Without the harness's own INFO, which reads these counts.)
        calls = {k: (v - calls_before.get(k, 0)) / requests for k, v in calls_after.items()
                 if v != calls_before.get(k, 0) and k != "info"}
        # Commands that Redis ran inside the session script (one GET, at most one SET per EVALSHA) are
        # counted by commandstats too; "sent" leaves them out so it counts what the server put on the wire.
        scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
        inside = min(calls.get("get", 0), scripts) + min(calls.get("set", 0), scripts)
        row = {
            "scenario": scenario, "server": label, "requests": result["requests"], "connections": connections,
            "rps": result["requests"] / (result["duration_us"] / 1e6),
            "p50_us": result["p50_us"], "p99_us": result["p99_us"], "max_us": result["max_us"],
            "errors": sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors",
                                              "timeouts")),
            "status_errors": result["status_errors"],
            "redis_sent_per_req": sum(calls.values()) - inside, "redis_calls_per_req": calls,
            "cpu_us_per_req": (cpu_after - cpu_before) * 1e6 / requests,
            "cpu_percent": (cpu_after - cpu_before) * 100 / wall,
            "rss_kb": rss, "peak_rss_kb": hwm, "headers": headers,
            "tls_ca": ("--redis-tls-ca" if tls_ca_flag(binary) else "SSL_CERT_FILE") if tls else None,
            # Who used the CPUs during the run: with everything pinned, the busy time of the machine minus
            # the server, wrk and Redis is someone else's load, which skews the numbers.
            "wrk_cpu_percent": wrk_cpu * 100 / wall, "redis_cpu_percent": (redis_after - redis_before) * 100 / wall,
            "cpu_busy_percent": {n: (busy_after[n] - busy_before[n]) * 100 / wall for n in busy_after},
        }
        ours = row["cpu_percent"] + row["wrk_cpu_percent"] + row["redis_cpu_percent"]
        row["foreign_cpu_percent"] = max(0.0, sum(row["cpu_busy_percent"].values()) - ours)
        if base_scenario(scenario) in ("write", "hot"):
            row["views_added"] = sum_views(redis, ids) - views_before
            row["scripts_per_req"] = scripts
        if scenario == "create":
            row["keys_added"] = redis("DBSIZE") - keys_before
        if not server.alive():
            raise BenchError(f"{label} died during {scenario}:\n{server.log_tail()}")
    return row


def fmt_latency(us):
    return f"{us} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt_mb(kb):
    return f"{kb / 1024:.1f} MB"


def scenarios_report(opts, rows):
    subject, baseline = opts.labels[0], opts.labels[-1]
    by = {(r["scenario"], r["server"]): r for r in rows}
    out = [f"# EvServer benchmark: {opts.title}", "", metadata(opts), "",
           f"`wrk -t1 -c{opts.connections} -d{opts.duration} --latency` (keep-alive), {opts.warmup} warm-up; "
           f"server `--threads {opts.threads}`{pin_note(opts)}. "
           f"Ratios are {subject} / {baseline} (1.00 = parity, below 1 = {subject} slower)"
           + ("; on `read-tls` rows they are the same server's TLS / plain-text `read` of this run (the C reference "
              "has no TLS)." if any(s in TLS_TWIN for s in opts.scenarios) else "."), "",
           "| scenario | server | req/s | p50 | p99 | req/s ratio | Redis cmds/req | CPU µs/req | CPU ratio "
           "| server CPU | peak RSS | errors |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for scenario in opts.scenarios:
        for label in opts.labels:
            r = by.get((scenario, label))
            if r is None:
                continue
            if scenario in TLS_TWIN:
                base = by.get((TLS_TWIN[scenario], label))
                compare = base is not None
            else:
                base = by.get((scenario, baseline))
                compare = base is not None and label != baseline
            rps_ratio = cpu_ratio = ""
            if compare:
                rps_ratio = f"**{r['rps'] / base['rps']:.2f}**"
                cpu_ratio = f"{base['cpu_us_per_req'] / r['cpu_us_per_req']:.2f}" if r["cpu_us_per_req"] else "-"
            out.append(f"| {scenario} | {label} | {r['rps']:,.0f} | {fmt_latency(r['p50_us'])} | "
                       f"{fmt_latency(r['p99_us'])} | {rps_ratio} | {r['redis_sent_per_req']:.2f} | "
                       f"{r['cpu_us_per_req']:.1f} | {cpu_ratio} | {r['cpu_percent']:.0f}% | "
                       f"{fmt_mb(r['peak_rss_kb'])} | {r['errors']} |")
    out += tls_section(opts, by)
    out += hot_section(opts, rows)
    out += ["", "Redis commands per request, by command (`*` = run by Redis inside the session script, "
            "not sent by the server):", ""]
    for r in rows:
        scripts = r["redis_calls_per_req"].get("evalsha", 0) + r["redis_calls_per_req"].get("eval", 0)
        parts = [f"{k} {v:.2f}{'*' if k in ('get', 'set') and scripts else ''}"
                 for k, v in sorted(r["redis_calls_per_req"].items())]
        out.append(f"- {r['scenario']} / {r['server']}: {', '.join(parts) or 'none'}")
    out += ["", "CPU use during each run (100% = one core; `other` = the machine's busy time not used by the "
            "server, wrk or redis-server, i.e. someone else's load, which makes that run less trustworthy):", ""]
    for r in rows:
        cpus = ", ".join(f"CPU {n} {v:.0f}%" for n, v in sorted(r["cpu_busy_percent"].items()))
        flag = " **(noisy)**" if r["foreign_cpu_percent"] > 10 else ""
        out.append(f"- {r['scenario']} / {r['server']}: server {r['cpu_percent']:.0f}%, wrk {r['wrk_cpu_percent']:.0f}%, "
                   f"redis {r['redis_cpu_percent']:.0f}%, other {r['foreign_cpu_percent']:.0f}%{flag} ({cpus})")
    out += ["", "Checks:", ""]
    for r in rows:
        if "views_added" in r:
            answered = r["requests"] - r["status_errors"]
            lost = r["views_added"] < answered
            out.append(f"- {r['scenario']} / {r['server']}: views went up by {r['views_added']:,} for {answered:,} "
                       f"requests answered 200 ({'LOST UPDATES' if lost else 'no lost update'}; up to "
                       f"{r['connections']} more may have been in flight when wrk stopped)")
        if "keys_added" in r:
            out.append(f"- create / {r['server']}: {r['keys_added']:,} sessions stored for {r['requests']:,} "
                       "answered requests")
    for scenario in opts.scenarios:
        seen = {label: by[(scenario, label)]["headers"] for label in opts.labels if (scenario, label) in by}
        if len({json.dumps({k: v for k, v in h.items()}, sort_keys=True) for h in seen.values()}) > 1:
            out.append(f"- {scenario}: the servers' replies differ: {seen}")
    out += ["- every run answered 200 with the expected body before it was measured; `errors` counts wrk's "
            "socket errors, timeouts and non-2xx replies", ""]
    return "\n".join(out)


def hot_section(opts, rows):
    """All connections on one session: refusals, round trips and the counter, per connection count."""
    hot = [r for r in rows if base_scenario(r["scenario"]) == "hot"]
    if not hot:
        return []
    out = ["", "Hot session (`GET /views`, every connection on one session cookie; goal: 0 non-2xx and at most 2.0 "
           "Redis round trips per request at every count (allowing for the requests in flight when wrk stops, whose "
           "commands Redis counted but wrk did not); the counter gains one per answered request, plus at most those "
           "in flight):", "",
           "| connections | server | req/s | non-2xx | round trips/req | scripts/req | answered 200 | views added "
           "| verdict |", "|--:|---|--:|--:|--:|--:|--:|--:|---|"]
    for r in sorted(hot, key=lambda r: (r["connections"], opts.labels.index(r["server"]))):
        answered = r["requests"] - r["status_errors"]
        exact = answered <= r["views_added"] <= answered + r["connections"]
        # Requests still in flight when wrk stops sent their commands but are not counted as requests.
        in_flight = 2.0 * r["connections"] / max(r["requests"], 1)
        ok = r["status_errors"] == 0 and r["redis_sent_per_req"] <= 2.0 + in_flight and exact
        out.append(f"| {r['connections']} | {r['server']} | {r['rps']:,.0f} | {r['status_errors']:,} | "
                   f"{r['redis_sent_per_req']:.2f} | {r['scripts_per_req']:.2f} | {answered:,} | "
                   f"{r['views_added']:,} | {'pass' if ok else 'MISSED'} |")
    return out


def tls_section(opts, by):
    """TLS against plain text: each TLS scenario next to its plain-text twin, same server, same run."""
    pairs = [(tls, plain, label) for tls, plain in TLS_TWIN.items() if tls in opts.scenarios
             for label in opts.labels if (tls, label) in by and (plain, label) in by]
    skipped = [tls for tls in TLS_TWIN if tls in opts.scenarios and not any(t == tls for t, _, _ in pairs)]
    out = []
    if pairs:
        out += ["", "Redis over TLS (`rediss://`, a second redis-server with only a TLS port) against plain text, "
                "same server, same run; goal 0.80 or better by req/s:", "",
                "| scenario | server | plain req/s | TLS req/s | req/s ratio | plain CPU µs/req | TLS CPU µs/req "
                "| CPU ratio | redis CPU plain | redis CPU TLS | CA given by | verdict |",
                "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
        for tls, plain, label in pairs:
            t, p = by[(tls, label)], by[(plain, label)]
            ratio = t["rps"] / p["rps"]
            out.append(f"| {tls} | {label} | {p['rps']:,.0f} | {t['rps']:,.0f} | **{ratio:.2f}** | "
                       f"{p['cpu_us_per_req']:.1f} | {t['cpu_us_per_req']:.1f} | "
                       f"{p['cpu_us_per_req'] / t['cpu_us_per_req']:.2f} | {p['redis_cpu_percent']:.0f}% | "
                       f"{t['redis_cpu_percent']:.0f}% | `{t['tls_ca']}` | {'pass' if ratio >= 0.8 else 'MISSED'} |")
    for tls in skipped:
        if any(scenario == tls for scenario, _ in by):
            out += ["", f"`{tls}` has no plain-text `{TLS_TWIN[tls]}` of the same server beside it: no ratio."]
        else:
            out += ["", f"`{tls}` was not run: none of the servers measured here speaks TLS to Redis."]
    return out


# MARK: - Memory modes

def growth(opts, redis, label, binary):
    """Drives `write` until each checkpoint's request count, recording VmRSS at each."""
    redis("FLUSHALL")
    marks = []
    with Server(label, binary, opts) as server:
        cookie_file = Path(opts.work) / f"cookies-{label}.txt"
        cookie_file.write_text("\n".join(prime_sessions(server.port, opts.sessions)) + "\n")
        done, rate = 0, None
        for target in opts.checkpoints:
            while done < target:
                chunk = 1 if rate is None else min(10, max(1, round((target - done) / rate)))
                r = wrk(opts, server.port, "/views", f"{chunk}s", cookie_file=cookie_file)
                if r["requests"] == 0 or r["status_errors"]:
                    raise BenchError(f"{label}: write run failed: {r}")
                done += r["requests"]
                rate = r["requests"] / (r["duration_us"] / 1e6)
            _, rss, hwm = read_proc(server.proc.pid)
            marks.append({"requests": done, "rss_kb": rss, "peak_rss_kb": hwm})
            log(f"{label}: {done:,} requests, RSS {fmt_mb(rss)}")
    return {"server": label, "marks": marks, "ratio": marks[-1]["rss_kb"] / marks[0]["rss_kb"]}


def idle(opts, label, binary):
    """RSS before and while `opts.idle_connections` idle keep-alive connections are open."""
    with Server(label, binary, opts) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(200):  # warm: first-request allocations are not the connections' cost
            http_get(server.port, "/hello", conn=conn)
        conn.close()
        time.sleep(0.5)
        _, before, _ = read_proc(server.proc.pid)
        client = subprocess.Popen(
            pinned(opts.client_cpus, [sys.executable, str(ROOT / "scripts" / "bench_idle.py"), "--port",
                                      str(server.port), "--connections", str(opts.idle_connections)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        (Path(opts.work) / "pids" / "idle-client.pid").write_text(str(client.pid))
        try:
            ready = client.stdout.readline().strip()
            if not ready.startswith("READY"):
                raise BenchError(f"idle client failed: {ready!r}")
            log(f"{label}: {ready}")
            time.sleep(1)
            _, during, hwm = read_proc(server.proc.pid)
            client.stdin.write("CHECK\n")
            client.stdin.flush()
            still = int(client.stdout.readline().split()[1])
            answered = int(re.search(r"answered=(\d+)", ready).group(1))
            status = http_get(server.port, "/hello", timeout=5)[0]  # still serving with all of them open
            client.stdin.write("CLOSE\n")
            client.stdin.flush()
            client.wait(30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            (Path(opts.work) / "pids" / "idle-client.pid").unlink(missing_ok=True)
    return {"server": label, "rss_before_kb": before, "rss_during_kb": during, "peak_rss_kb": hwm,
            "answered": answered, "still_open": still, "hello_status": status}


def memory_report(opts, growth_rows, idle_rows):
    out = [f"# EvServer memory checks: {opts.title}", "", metadata(opts), ""]
    if growth_rows:
        a, b = opts.checkpoints[0], opts.checkpoints[-1]
        out += [f"## RSS after {a:,} vs {b:,} requests of `write` (target: within 5%)", "",
                "| server | requests | RSS | requests | RSS | ratio | verdict |", "|---|--:|--:|--:|--:|--:|---|"]
        for g in growth_rows:
            m0, m1 = g["marks"][0], g["marks"][-1]
            out.append(f"| {g['server']} | {m0['requests']:,} | {fmt_mb(m0['rss_kb'])} | {m1['requests']:,} | "
                       f"{fmt_mb(m1['rss_kb'])} | {g['ratio']:.3f} | {'pass' if g['ratio'] <= 1.05 else 'FAIL'} |")
        out.append("")
    if idle_rows:
        n = opts.idle_connections
        out += [f"## RSS added by {n:,} idle keep-alive connections (target: < 64 MB)", "",
                "| server | RSS before | RSS with them open | added | per connection | answered | still open "
                "| verdict |", "|---|--:|--:|--:|--:|--:|--:|---|"]
        for i in idle_rows:
            added = i["rss_during_kb"] - i["rss_before_kb"]
            ok = added < 64 * 1024 and i["answered"] == n and i["still_open"] == n and i["hello_status"] == 200
            out.append(f"| {i['server']} | {fmt_mb(i['rss_before_kb'])} | {fmt_mb(i['rss_during_kb'])} | "
                       f"{fmt_mb(added)} | {added * 1024 / max(i['answered'], 1) / 1024:.1f} kB | "
                       f"{i['answered']:,} | {i['still_open']:,} | {'pass' if ok else 'FAIL'} |")
        out.append("")
    return "\n".join(out)


# MARK: - Report helpers

def metadata(opts):
    model = re.search(r"^Model name:\s*(.+)$", subprocess.run(["lscpu"], capture_output=True, text=True).stdout,
                      re.M)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return (f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit `{commit or '?'}`, "
            f"{model.group(1) if model else platform.processor()}, {os.cpu_count()} CPUs, "
            f"Linux {platform.release()}, {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")


def pin_note(opts):
    if not opts.server_cpus:
        return ", no CPU pinning"
    return f", server on CPU {opts.server_cpus}, wrk and redis-server on CPU {opts.client_cpus}"


# MARK: - Main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["scenarios", "growth", "idle", "memory"], default="scenarios")
    p.add_argument("--server", action="append", required=True, metavar="LABEL=BINARY",
                   help="a server to measure (repeat; the last one is the baseline of the ratios)")
    p.add_argument("--work", required=True, help="scratch directory (logs, pid files)")
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--out", required=True, help="markdown report (a .json with the raw numbers goes beside it)")
    p.add_argument("--title", default="evserver vs the C reference")
    p.add_argument("--scenarios", default="hello,read,read-tls,write,hot,create")
    p.add_argument("--hot-connections", default="8,16,64", help="the hot scenario's connection counts")
    p.add_argument("--tls-redis-port", type=int, help="the TLS-only redis-server of the TLS scenarios")
    p.add_argument("--tls-ca", help="the CA file that signed that redis-server's certificate")
    p.add_argument("--tls-servers", default="", help="labels of the servers that run the TLS scenarios")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--duration", default="10s")
    p.add_argument("--warmup", default="2s")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sessions", type=int, default=256, help="primed sessions the write scenario rotates through")
    p.add_argument("--server-cpus", default="", help="taskset CPU list for servers ('' = no pinning)")
    p.add_argument("--client-cpus", default="", help="taskset CPU list for wrk and the idle client")
    p.add_argument("--checkpoints", default="200000,2000000", help="growth mode: request counts")
    p.add_argument("--idle-connections", type=int, default=10_000)
    p.add_argument("--retry-noisy", type=int, default=0,
                   help="repeat a run disturbed by other processes up to this many times, keeping the calmest")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="before each run, wait up to this many seconds for other processes to leave the CPUs idle")
    opts = p.parse_args()
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    for s in opts.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    hot_counts = [int(c) for c in opts.hot_connections.split(",") if c]
    opts.scenarios = [x for s in opts.scenarios for x in ([f"hot@{c}" for c in hot_counts] if s == "hot" else [s])]
    servers = []
    for spec in opts.server:
        label, _, binary = spec.partition("=")
        if not binary or not os.access(binary, os.X_OK):
            p.error(f"--server {spec}: not an executable")
        servers.append((label, binary))
    opts.labels = [label for label, _ in servers]
    if len(set(opts.labels)) != len(opts.labels):
        p.error("server labels must differ")
    opts.checkpoints = [int(x) for x in opts.checkpoints.split(",")]
    opts.tls_servers = [label for label in opts.tls_servers.split(",") if label]
    tls_wanted = opts.mode == "scenarios" and any(s in TLS_TWIN for s in opts.scenarios)
    if tls_wanted and opts.tls_servers and not (opts.tls_redis_port and opts.tls_ca):
        p.error("the TLS scenarios need --tls-redis-port and --tls-ca (or no --tls-servers)")
    opts.secret = os.urandom(18).hex()
    seconds(opts.duration), seconds(opts.warmup)
    (Path(opts.work) / "pids").mkdir(parents=True, exist_ok=True)
    # bench.sh's trap sends SIGTERM: unwind through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    before = cpu_busy()
    time.sleep(1)
    idle_load = sum(cpu_busy().values()) - sum(before.values())
    if idle_load > 0.2 and not opts.wait_quiet:
        log(f"warning: before starting, the machine was already busy ({idle_load * 100:.0f}% of a core): "
            "other processes will skew the numbers (runs they disturb are flagged in the report)")
    redis = Redis(opts.redis_port)
    opts.redis_pid = int(re.search(r"process_id:(\d+)", redis("INFO", "server").decode()).group(1))
    if tls_wanted and opts.tls_servers:
        try:
            opts.tls_redis = Redis(opts.tls_redis_port, tls_ca=opts.tls_ca)
        except (OSError, ssl.SSLError) as error:
            print(f"error: the TLS redis-server on port {opts.tls_redis_port}: {error}", file=sys.stderr)
            return 1
        opts.tls_redis_pid = int(re.search(r"process_id:(\d+)", opts.tls_redis("INFO", "server").decode()).group(1))
    elif tls_wanted:
        log("no server here speaks TLS to Redis (--tls-servers): the TLS scenarios are skipped")
    report, raw = "", {}
    try:
        if opts.mode == "scenarios":
            rows = []
            for scenario in opts.scenarios:
                for label, binary in servers:
                    if scenario in TLS_TWIN and label not in opts.tls_servers:
                        continue
                    log(f"{scenario} / {label}")
                    r = run_scenario(opts, redis, label, binary, scenario)
                    for attempt in range(opts.retry_noisy):
                        if r["foreign_cpu_percent"] <= 10:
                            break
                        log(f"  noisy (other processes used {r['foreign_cpu_percent']:.0f}% of a core): "
                            f"again ({attempt + 1}/{opts.retry_noisy})")
                        again = run_scenario(opts, redis, label, binary, scenario)
                        r = min(r, again, key=lambda x: x["foreign_cpu_percent"])
                    rows.append(r)
                    log(f"  {r['rps']:,.0f} req/s, p99 {fmt_latency(r['p99_us'])}, "
                        f"{r['cpu_us_per_req']:.1f} µs CPU/req, {r['redis_sent_per_req']:.2f} Redis cmds/req")
            report, raw = scenarios_report(opts, rows), {"rows": rows}
        else:
            g = [growth(opts, redis, l, b) for l, b in servers] if opts.mode in ("growth", "memory") else []
            i = [idle(opts, l, b) for l, b in servers] if opts.mode in ("idle", "memory") else []
            report, raw = memory_report(opts, g, i), {"growth": g, "idle": i}
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(report + "\n")
    Path(opts.out).with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(report)
    log(f"written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
