#!/usr/bin/env python3
"""Slowloris check: does the server keep answering while many clients trickle their headers in?

Opens CONNECTIONS connections to a server on this machine, each sending a request head one byte every INTERVAL
seconds (and opening a new connection when the server closes one, as a slowloris attacker would), then times
REQUESTS requests to PATH on a separate keep-alive connection while they stay open. Prints the latency percentiles
and PASS when the 99th percentile is under the bound, FAIL otherwise (exit status 0 or 1; 2 for a usage error).

Loopback only, and bounded: it stops by itself within --time-limit seconds (at most 60).

    scripts/slowloris.py 3000                      # 1000 slow connections, 200 timed GET /healthz
    scripts/slowloris.py 3000 --connections 300 --interval 1 --requests 500
"""

import argparse
import ipaddress
import resource
import socket
import sys
import threading
import time

HEAD = b"GET %s HTTP/1.1\r\nHost: slowloris\r\n"
TRICKLE = b"X-Slowloris: a\r\n"   # sent one byte at a time, over and over; the head never ends


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--connections", type=int, default=1000, help="slow connections (default 1000)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between a connection's bytes (3)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests (default 200)")
    parser.add_argument("--path", default="/healthz", help="path of the timed requests (default /healthz)")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="pass bound for the p99 latency (100 ms)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="stop after this many seconds (<= 60)")
    args = parser.parse_args()
    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        parser.error(f"{args.host}: {error}")
    if not all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos):
        parser.error(f"{args.host} is not a loopback address: this check only targets this machine")
    if not 0 < args.time_limit <= 60:
        parser.error("--time-limit must be in (0, 60]")
    if args.connections < 0 or args.requests < 1 or args.interval <= 0:
        parser.error("--connections >= 0, --requests >= 1 and --interval > 0, please")
    args.address = infos[0][4][:2]
    args.family = infos[0][0]
    return args


def raise_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


class SlowClient:
    """One connection that sends its head a byte at a time."""

    def __init__(self, args):
        self.args = args
        self.sock = None
        self.sent = 0

    def open(self):
        self.close()
        sock = socket.socket(self.args.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(2)
            sock.connect(self.args.address)
            sock.sendall(HEAD % self.args.path.encode())
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.sent = 0

    def trickle(self):
        """Sends the next byte; False when the server has answered or closed (the caller reconnects)."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
            return False   # readable: an answer (408, 503...) or the end of the connection
        except BlockingIOError:
            pass           # nothing from the server: go on
        except OSError:
            return False
        try:
            self.sock.send(TRICKLE[self.sent % len(TRICKLE):][:1])
            self.sent += 1
            return True
        except OSError:
            return False

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def attack(args, clients, deadline, stop, stats):
    """Keeps every slow connection open and trickling until `stop` is set or the deadline passes."""
    count = len(clients)
    step = args.interval / max(count, 1)   # spread the bytes evenly over the interval
    index = 0
    next_send = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        client = clients[index]
        if not client.trickle():
            stats["reconnects"] += 1
            try:
                client.open()
            except OSError:
                stats["failed"] += 1
        index = (index + 1) % count
        next_send += step
        delay = next_send - time.monotonic()
        if delay > 0:
            stop.wait(min(delay, 0.5))


def read_response(sock, buffer):
    """Reads one response with a Content-Length body; returns (status, rest of buffer)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the measuring connection")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the measuring connection")
        rest += chunk
    return status, rest[length:]


def measure(args, deadline):
    """Times `requests` sequential requests on one keep-alive connection; returns the latencies in ms."""
    request = b"GET %s HTTP/1.1\r\nHost: measure\r\n\r\n" % args.path.encode()
    latencies = []
    sock, buffer = None, b""
    while len(latencies) < args.requests and time.monotonic() < deadline:
        if sock is None:
            try:
                sock = socket.create_connection(args.address, timeout=5)
            except OSError as error:
                print(f"cannot connect to {args.host}:{args.port}: {error}", file=sys.stderr)
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = b""
        start = time.monotonic()
        try:
            sock.sendall(request)
            status, buffer = read_response(sock, buffer)
        except (OSError, ConnectionError):
            sock.close()
            sock = None
            continue
        latencies.append((time.monotonic() - start) * 1000)
        if status != 200:
            print(f"warning: {args.path} answered {status}", file=sys.stderr)
        time.sleep(0.01)
    if sock is not None:
        sock.close()
    return latencies


def percentile(sorted_values, fraction):
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))   # nearest-rank
    return sorted_values[rank - 1]


def main():
    args = parse_arguments()
    started = time.monotonic()
    deadline = started + args.time_limit
    raise_file_limit(args.connections + 64)

    clients = [SlowClient(args) for _ in range(args.connections)]
    opened = 0
    for client in clients:
        if time.monotonic() > deadline - 5:
            break
        try:
            client.open()
            opened += 1
        except OSError as error:
            print(f"could only open {opened} connections: {error}", file=sys.stderr)
            break
    clients = [client for client in clients if client.sock is not None]
    print(f"{len(clients)} slow connections open after {time.monotonic() - started:.1f} s")

    stop = threading.Event()
    stats = {"reconnects": 0, "failed": 0}
    attacker = None
    if clients:
        attacker = threading.Thread(target=attack, args=(args, clients, deadline, stop, stats), daemon=True)
        attacker.start()
        # Let every connection send a byte or two before measuring.
        time.sleep(min(args.interval * 1.5, max(0.0, deadline - time.monotonic() - 5)))

    try:
        latencies = measure(args, deadline)
    finally:
        stop.set()
        if attacker is not None:
            attacker.join()
        for client in clients:
            client.close()

    if not latencies:
        print(f"FAIL: no answer from {args.path} within the time limit")
        return 1
    values = sorted(latencies)
    p50, p99, worst = percentile(values, 0.5), percentile(values, 0.99), values[-1]
    print(f"{len(values)} requests to {args.path}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms; "
          f"slow connections reopened after the server closed them: {stats['reconnects']}"
          + (f", failed to reopen: {stats['failed']}" if stats["failed"] else ""))
    complete = len(values) == args.requests
    if p99 < args.p99_ms and complete:
        print(f"PASS: p99 {p99:.2f} ms < {args.p99_ms:g} ms with {len(clients)} slow connections")
        return 0
    reason = f"p99 {p99:.2f} ms >= {args.p99_ms:g} ms" if p99 >= args.p99_ms else \
        f"only {len(values)} of {args.requests} requests answered in time"
    print(f"FAIL: {reason} with {len(clients)} slow connections")
    return 1


if __name__ == "__main__":
    sys.exit(main())
