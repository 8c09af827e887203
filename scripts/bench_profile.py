#!/usr/bin/env python3
"""Instructions per request under callgrind: the repeatable CPU figure on a shared, noisy machine.

For each server and scenario: start the server under `valgrind --tool=callgrind` (instrumentation off), prime
sessions, send a warm-up, switch instrumentation on (`callgrind_control -i on`), send exactly N requests over C
keep-alive connections, dump, and divide the instructions (Ir) of that dump by N. Both servers see the same
requests, so Ir/request compares them without wall-clock noise.

  scripts/bench_profile.py --redis-port 6421 --server evserver=.build/release/evserver \
      --server reference=.build-bench/reference [--scenarios hello,read] [--requests 4000] [--keep DIR]

`read-tls` is `read` over `rediss://` to a TLS-only redis-server given by --tls-redis-port and --tls-ca (as
bench.sh starts one, certificates from scripts/tls_certs.sh); only the servers named by --tls-servers (default:
those labelled evserver...) run it.

Needs valgrind, cc and strip, and a running redis-server on --redis-port (it is FLUSHALLed: use a private one).
With --keep, the callgrind files stay in DIR for `callgrind_annotate --inclusive=yes DIR/<server>-<scenario>.callgrind`
(symbols are mangled: pipe through `swift demangle --simplified`). See BENCHMARKS.md, "Profile".
"""
import argparse
import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import resp
from resp import command as redis_command

SCENARIOS = {"hello": "/hello", "read": "/login", "write": "/views", "create": "/", "read-tls": "/login"}
TLS_SCENARIOS = {"read-tls"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its whole response."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, path, cookie=None):
        extra = f"Cookie: {cookie}\r\n" if cookie else ""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())

    def receive(self):
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        status = int(head.split(b" ", 2)[1])
        cookie = re.search(rb"(?i)\r\nset-cookie: *(connect\.sid=[^;\r]*)", head)
        return status, body, cookie.group(1).decode() if cookie else None

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        self.buffer += chunk


def drive(port, path, count, connections, cookies):
    """`count` requests over `connections` connections, each keeping one request in flight."""
    conns = [Connection(port) for _ in range(connections)]
    sent = received = 0
    for c in conns:
        if sent < count:
            c.send(path, cookies[sent % len(cookies)] if cookies else None)
            sent += 1
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    while received < sent:
        for key, _ in sel.select():
            c = key.data
            status, body, _ = c.receive()
            if status != 200:
                raise RuntimeError(f"{path}: status {status}: {body[:200]!r}")
            received += 1
            if sent < count:
                c.send(path, cookies[sent % len(cookies)] if cookies else None)
                sent += 1
    for c in conns:
        c.sock.close()


def wait_for_store(port, deadline):
    """Waits until GET / answers 200: under valgrind, the first Redis connection (a TLS one above all: the CA file
    is read and the handshake runs instrumented) can outlast the server's connect timeout, and it retries."""
    while True:
        c = Connection(port)
        c.send("/")
        status, _, _ = c.receive()
        c.sock.close()
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET / still answers {status}")
        time.sleep(0.5)


def prime(port, count):
    c = Connection(port)
    cookies = []
    for _ in range(count):
        c.send("/")
        status, _, cookie = c.receive()
        assert status == 200 and cookie, "priming GET / did not set a cookie"
        cookies.append(cookie)
    c.sock.close()
    return cookies


def total_ir(path):
    for line in Path(path).read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


# Valgrind 3.19 writes to sigsuspend's mask argument; libdispatch (the Swift main thread parks in it) passes a const
# mask in read-only memory, which crashes valgrind. Preloading this copies the mask to the stack first.
SIGSUSPEND_SHIM = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
int sigsuspend(const sigset_t *mask) { sigset_t copy = *mask; return syscall(SYS_rt_sigsuspend, &copy, 8); }
"""


def build_shim(out_dir):
    source, library = out_dir / "sigsuspend_shim.c", out_dir / "sigsuspend_shim.so"
    source.write_text(SIGSUSPEND_SHIM)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def callgrind_binary(label, binary, out_dir):
    """Valgrind 3.19 cannot read the DWARF 5 that Swift emits: profile a copy without debug info (symbols stay).
    The copy is named after the label: two builds of one binary (evserver before and after a change) keep apart."""
    stripped = out_dir / f"{label}.stripped"
    subprocess.run(["strip", "--strip-debug", "-o", str(stripped), binary], check=True)
    return str(stripped)


def flushall(opts, tls):
    if not tls:
        redis_command(opts.redis_port, "FLUSHALL", timeout=10)
        return
    context = ssl.create_default_context(cafile=opts.tls_ca)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", opts.tls_redis_port), timeout=10),
                             server_hostname="127.0.0.1") as sock:
        sock.sendall(resp.encode(["FLUSHALL"]))
        if not sock.recv(64).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL over TLS failed")


def measure(label, binary, scenario, opts, out_dir):
    port = free_port()
    base = out_dir / f"{label}-{scenario}"
    for old in out_dir.glob(f"{label}-{scenario}.out*"):
        old.unlink()
    tls = scenario in TLS_SCENARIOS
    redis_url = (f"rediss://127.0.0.1:{opts.tls_redis_port}/0" if tls
                 else f"redis://127.0.0.1:{opts.redis_port}/0")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={base}.out",
           binary, "--port", str(port), "--threads", "1", "--redis-url", redis_url,
           "--secret", "bench-secret", "--instance", "bench"]
    env = dict(os.environ, LD_PRELOAD=str(opts.shim))
    if tls:
        # --redis-tls-ca where the binary has it, else OpenSSL's default CA file, which evserver reads by default.
        help_text = subprocess.run([opts.originals[label], "--help"], capture_output=True, text=True).stdout
        if "--redis-tls-ca" in help_text:
            cmd += ["--redis-tls-ca", opts.tls_ca]
        else:
            env["SSL_CERT_FILE"] = opts.tls_ca
    log = open(f"{base}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                c = Connection(port)
                c.send("/hello")
                c.receive()
                c.sock.close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{label} did not start; see {base}.log")
                time.sleep(0.2)
        wait_for_store(port, deadline)
        flushall(opts, tls)
        path = SCENARIOS[scenario]
        cookies = prime(port, 256) if scenario in ("read", "write", "read-tls") else None
        drive(port, path, opts.warmup, opts.connections, cookies)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        drive(port, path, opts.requests, opts.connections, cookies)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    # The instrumented part is the dump's counts (the program's end adds a second file with nothing in it).
    dumps = sorted(out_dir.glob(f"{label}-{scenario}.out*"), key=lambda p: p.stat().st_mtime)
    best = max(dumps, key=total_ir)
    best.rename(f"{base}.callgrind")
    for d in dumps:
        if d.exists():
            d.unlink()
    return total_ir(f"{base}.callgrind") / opts.requests


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", action="append", required=True, help="label=path")
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--scenarios", default="hello,read,write,create")
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--keep", help="directory for the callgrind files (default: a temporary one, removed)")
    p.add_argument("--tls-redis-port", type=int, help="read-tls: a redis-server with only a TLS port")
    p.add_argument("--tls-ca", help="read-tls: the CA file that signed its certificate")
    p.add_argument("--tls-servers", help="read-tls: labels of the servers that run it (default: evserver*)")
    opts = p.parse_args()
    scenarios = opts.scenarios.split(",")
    for scenario in scenarios:
        if scenario not in SCENARIOS:
            p.error(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    if TLS_SCENARIOS & set(scenarios) and not (opts.tls_redis_port and opts.tls_ca):
        p.error("read-tls needs --tls-redis-port and --tls-ca")
    for tool in ("valgrind", "callgrind_control", "cc", "strip"):
        if not shutil.which(tool):
            sys.exit(f"bench_profile: {tool} not found (apt-get install valgrind gcc binutils)")
    out_dir = Path(opts.keep or tempfile.mkdtemp(prefix="evserver-profile."))
    out_dir.mkdir(parents=True, exist_ok=True)
    opts.shim = build_shim(out_dir)
    specs = [s.split("=", 1) for s in opts.server]
    opts.originals = {label: os.path.abspath(path) for label, path in specs}
    if len({label for label, _ in specs}) != len(specs):
        p.error("server labels must differ")
    servers = [(label, callgrind_binary(label, os.path.abspath(path), out_dir)) for label, path in specs]
    tls_servers = (opts.tls_servers.split(",") if opts.tls_servers
                   else [label for label, _ in servers if label.startswith("evserver")])
    results = {}
    for scenario in scenarios:
        for label, binary in servers:
            if scenario in TLS_SCENARIOS and label not in tls_servers:
                continue
            ir = measure(label, binary, scenario, opts, out_dir)
            results[(label, scenario)] = ir
            print(f"{scenario:7} {label:12} {ir:10,.0f} Ir/request", flush=True)
    print()
    print("| scenario | " + " | ".join(label for label, _ in servers) + " |")
    print("|---|" + "--:|" * len(servers))
    for scenario in scenarios:
        print(f"| {scenario} | " + " | ".join(f"{results[(l, scenario)]:,.0f}" if (l, scenario) in results else "-"
                                                for l, _ in servers) + " |")
    if not opts.keep:
        for f in out_dir.iterdir():
            f.unlink()
        out_dir.rmdir()
    else:
        print(f"\ncallgrind files in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
