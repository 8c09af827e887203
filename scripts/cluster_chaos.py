#!/usr/bin/env python3
"""Load generator, fault driver and judge for `make cluster-chaos` (scripts/cluster-chaos.sh starts the Redis
Cluster and two evserver processes first: `plain`, and `wait` with --redis-wait-replicas 1).

Standard library only. Keep-alive clients (one session each, half on each server) alternate POST /session
{"n": k} (a write, k counting up) and GET /session (a read) at a few hundred requests per second in all, through
the phases

    baseline 3 s | failover: kill -9 one primary, until its slots answer again + 3 s | rejoin: restart the killed
    node (it comes back as a replica) 3 s | reshard: `redis-cli --cluster reshard` moves slots between two primaries
    | recovery 2 s

Groups: server (plain, wait) x where the session's slot lives (the killed primary, the other primaries). Checks:
- sessions on the other primaries never get anything but 200, on either server;
- sessions on the killed primary's slots get only 200 or 503 (never another status, never a connection error,
  never an answer slower than --latency-limit) until they are served again; on `plain` that happens within
  cluster-node-timeout + 2 s of the replica's promotion. On `wait` writes cannot be confirmed until the promoted
  primary has a replica again (the killed node rejoining), so 503 is allowed there through the rejoin phase;
- during the resharding every answer is 200 (MOVED and ASK are handled inside the request);
- on `wait`, no write acknowledged with 200 is ever read back older (on `plain` such losses are counted only:
  replication is asynchronous).
Prints a table per phase and group; exits 1 when a property fails, 2 on a setup error.
"""

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse


def now():
    return time.monotonic()


# MARK: - Redis Cluster, spoken directly (the fault driver must not depend on the server under test)

from resp import command as redis_command  # noqa: E402


def text_reply(reply):
    """A bulk or status reply as text; anything else (an error reply, nil) as ""."""
    return reply if isinstance(reply, str) else ""


def is_master(role_reply):
    return isinstance(role_reply, list) and bool(role_reply) and role_reply[0] == "master"


def crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key):
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return crc16(data) % 16384


def cluster_nodes(port):
    """{port: (id, is_primary, [(start, end)])} from CLUSTER NODES."""
    text = text_reply(redis_command(port, "CLUSTER", "NODES", timeout=2.0))
    nodes = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or ":" not in fields[1]:
            continue
        node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        ranges = []
        for spec in fields[8:]:
            if spec.startswith("["):
                continue
            bounds = spec.split("-")
            ranges.append((int(bounds[0]), int(bounds[-1])))
        nodes[node_port] = (fields[0].lstrip("$"), "master" in fields[2] and "fail" not in fields[2], ranges)
    return nodes


def primary_of(nodes, slot):
    for port, (_, is_primary, ranges) in nodes.items():
        if is_primary and any(start <= slot <= end for start, end in ranges):
            return port
    return None


# MARK: - Clients

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.phase = "baseline"
        self.rows = {}          # (phase, group) -> {"200": n, "503": n, ...}
        self.slowest = {}       # (phase, group) -> seconds
        self.last_failure = {}  # group -> monotonic start time of the last request that did not get 200
        self.lost = {}          # server -> [(client, acknowledged n, read n)]

    def record(self, group, status, latency, started):
        with self.lock:
            key = (self.phase, group)
            row = self.rows.setdefault(key, {})
            row[status] = row.get(status, 0) + 1
            self.slowest[key] = max(self.slowest.get(key, 0.0), latency)
            if status != "200":
                self.last_failure[group] = max(started, self.last_failure.get(group, 0.0))


class Client(threading.Thread):
    def __init__(self, index, server, port, rate, stats, stop):
        super().__init__(daemon=True)
        self.index, self.server, self.port, self.rate, self.stats, self.stop = index, server, port, rate, stats, stop
        self.cookie = None
        self.session_id = None
        self.group = "?"
        self.acknowledged = 0

    def connect(self):
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def request(self, method, path, body=None):
        headers = {"Cookie": "connect.sid=" + self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        for header, value in response.getheaders():
            if header.lower() == "set-cookie" and value.startswith("connect.sid="):
                self.cookie = value.split(";", 1)[0].split("=", 1)[1]
        return response.status, data

    def start_session(self):
        self.connect()
        status, _ = self.request("POST", "/session", json.dumps({"n": 0}))
        if status != 200 or not self.cookie:
            raise RuntimeError("could not start a session: status %d" % status)
        value = urllib.parse.unquote(self.cookie)
        self.session_id = value[2:value.rindex(".")]

    def run(self):
        interval = 1.0 / self.rate
        step = 0
        while not self.stop.is_set():
            started = now()
            step += 1
            write = step % 2 == 1
            try:
                if write:
                    status, _ = self.request("POST", "/session", json.dumps({"n": self.acknowledged + 1}))
                    if status == 200:
                        self.acknowledged += 1
                else:
                    status, body = self.request("GET", "/session")
                    if status == 200:
                        read = json.loads(body).get("data", {}).get("n", -1)
                        if read < self.acknowledged:
                            with self.stats.lock:
                                self.stats.lost.setdefault(self.server, []).append((self.index, self.acknowledged, read))
                label = str(status)
            except (OSError, http.client.HTTPException) as error:
                label = "conn-error"
                try:
                    self.connection.close()
                except OSError:
                    pass
                self.connect()
            self.stats.record(self.group, label, now() - started, started)
            time.sleep(max(0.0, interval - (now() - started)))


# MARK: - Phases

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plain-port", type=int, required=True, help="the evserver without WAIT")
    parser.add_argument("--wait-port", type=int, required=True, help="the evserver with --redis-wait-replicas 1")
    parser.add_argument("--latency-limit", type=float, required=True, help="slowest acceptable answer, seconds")
    parser.add_argument("--nodes", required=True, help="comma-separated node ports")
    parser.add_argument("--cluster-dir", required=True, help="scripts/redis-cluster.sh's directory")
    parser.add_argument("--node-timeout", type=int, default=2000)
    parser.add_argument("--redis-timeout", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--client-rate", type=float, default=20.0)
    parser.add_argument("--reshard-slots", type=int, default=1000)
    args = parser.parse_args()
    ports = [int(p) for p in args.nodes.split(",")]

    stats = Stats()
    stop = threading.Event()
    nodes = cluster_nodes(ports[0])
    primaries = sorted(p for p, (_, is_primary, _) in nodes.items() if is_primary)
    if len(primaries) != 3:
        print("setup: expected 3 primaries, CLUSTER NODES shows %s" % primaries)
        return 2
    victim = primaries[0]
    victim_id = nodes[victim][0]
    replica_port = None
    for line in text_reply(redis_command(ports[1], "CLUSTER", "NODES", timeout=2.0)).splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == victim_id:
            replica_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
    if replica_port is None:
        print("setup: no replica of the primary :%d" % victim)
        return 2

    clients = [Client(i, "plain" if i % 2 == 0 else "wait", args.plain_port if i % 2 == 0 else args.wait_port,
                      args.client_rate, stats, stop) for i in range(args.clients)]
    for client in clients:
        client.start_session()
        owner = primary_of(nodes, key_slot("sess:" + client.session_id))
        client.group = client.server + (" killed primary" if owner == victim else " other primaries")
    groups = sorted({c.group for c in clients})
    print("%d clients (half on each server): %d on the primary to be killed (:%d, replica :%d), %d on the others; "
          "~%.0f requests/s" % (len(clients), sum("killed" in c.group for c in clients), victim, replica_port,
                                sum("other" in c.group for c in clients), args.clients * args.client_rate))
    for client in clients:
        client.start()

    failures = []

    def phase(name, seconds=None, until=None, cap=30.0):
        with stats.lock:
            stats.phase = name
        started = now()
        while now() - started < cap:
            if seconds is not None and now() - started >= seconds:
                break
            if until is not None and until():
                break
            time.sleep(0.05)
        return now() - started

    phase("baseline", 3)

    # Failover: kill -9 the victim; watch its replica's promotion; go on until the plain server's sessions on the
    # victim's slots have had 2 s without a failure (or a cap), then 3 s more.
    pid = int(open("%s/node-%d/redis.pid" % (args.cluster_dir, victim)).read().strip())
    subprocess.run(["kill", "-9", str(pid)], check=True)
    killed = now()
    with stats.lock:
        stats.phase = "failover"
    promoted = {}

    def watch_promotion():
        while "at" not in promoted and now() - killed < 60:
            try:
                if is_master(redis_command(replica_port, "ROLE", timeout=0.5)):
                    promoted["at"] = now()
            except OSError:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_promotion, daemon=True)
    watcher.start()

    def recovered():
        with stats.lock:
            last = stats.last_failure.get("plain killed primary")
        return "at" in promoted and last is not None and now() - max(last, promoted["at"]) > 2.0

    phase("failover", until=recovered, cap=3 * args.node_timeout / 1000.0 + 15)
    phase("failover", 3)
    with stats.lock:
        last = stats.last_failure.get("plain killed primary", killed)
    if "at" not in promoted:
        failures.append("failover: the replica :%d was never promoted" % replica_port)
    else:
        to_promotion = promoted["at"] - killed
        after = max(0.0, last - promoted["at"])
        limit = args.node_timeout / 1000.0 + 2.0
        print("failover: replica promoted %.2f s after the kill (cluster-node-timeout %d ms); the plain server's "
              "last failed request on those slots started %.2f s after the promotion (limit %.1f s)"
              % (to_promotion, args.node_timeout, after, limit))
        if after > limit:
            failures.append("failover: served again only %.2f s after the promotion (limit %.1f s)" % (after, limit))

    # Rejoin: the killed node restarts from its config and comes back as a replica of the promoted one.
    subprocess.run(["redis-server", "%s/node-%d/redis.conf" % (args.cluster_dir, victim)], check=True,
                   stdout=subprocess.DEVNULL)
    phase("rejoin", 3)

    # Reshard: move slots from one primary to another under load.
    nodes = cluster_nodes(ports[1])
    primaries = sorted(p for p, (_, is_primary, _) in nodes.items() if is_primary)
    source, target = primaries[0], primaries[1]
    result = {}

    def reshard():
        started = now()
        completed = subprocess.run(
            ["redis-cli", "--cluster", "reshard", "127.0.0.1:%d" % source, "--cluster-from", nodes[source][0],
             "--cluster-to", nodes[target][0], "--cluster-slots", str(args.reshard_slots), "--cluster-yes",
             "--cluster-pipeline", "20"], capture_output=True, text=True)
        result["status"] = completed.returncode
        result["output"] = completed.stdout[-600:] + completed.stderr[-600:]
        result["took"] = now() - started

    worker = threading.Thread(target=reshard)
    with stats.lock:
        stats.phase = "reshard"
    worker.start()
    phase("reshard", until=lambda: not worker.is_alive(), cap=120)
    worker.join()
    print("reshard: %d slots :%d -> :%d in %.1f s (redis-cli exit %s)"
          % (args.reshard_slots, source, target, result.get("took", 0), result.get("status")))
    if result.get("status") != 0:
        failures.append("reshard: redis-cli failed: " + result.get("output", ""))
    phase("recovery", 2)
    stop.set()
    for client in clients:
        client.join(timeout=5)

    # The table, and the judgement.
    statuses = sorted({s for row in stats.rows.values() for s in row})
    print()
    print("%-9s %-22s %s %9s" % ("phase", "group", " ".join("%10s" % s for s in statuses), "slowest"))
    for phase_name in ("baseline", "failover", "rejoin", "reshard", "recovery"):
        for group in groups:
            row = stats.rows.get((phase_name, group), {})
            print("%-9s %-22s %s %8.0fms" % (phase_name, group, " ".join("%10d" % row.get(s, 0) for s in statuses),
                                            1000 * stats.slowest.get((phase_name, group), 0)))
    for (phase_name, group), row in stats.rows.items():
        bad = {s: n for s, n in row.items() if s != "200"}
        if (phase_name == "failover" and group.endswith("killed primary")) or \
                (phase_name == "rejoin" and group == "wait killed primary"):
            bad = {s: n for s, n in bad.items() if s != "503"}
        if bad:
            failures.append("%s / %s: %s" % (phase_name, group, bad))
        if stats.slowest.get((phase_name, group), 0) > args.latency_limit:
            failures.append("%s / %s: an answer took %.0f ms (limit %.0f ms)" % (
                phase_name, group, 1000 * stats.slowest[(phase_name, group)], 1000 * args.latency_limit))
    print("acknowledged writes read back older: wait %d, plain %d (plain is informational: asynchronous replication)"
          % (len(stats.lost.get("wait", [])), len(stats.lost.get("plain", []))))
    if stats.lost.get("wait"):
        failures.append("with WAIT 1, acknowledged writes read back older: %s" % stats.lost["wait"][:5])
    print()
    if failures:
        for failure in failures:
            print("FAIL " + failure)
        return 1
    print("PASS: other primaries never failed; the killed primary's slots answered only 503 until served again; "
          "the resharding cost no error; with WAIT 1 no acknowledged write was lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
