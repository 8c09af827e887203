#!/usr/bin/env python3
"""Opens many idle keep-alive connections to a server, for the memory check of scripts/bench.sh --idle.

Each connection sends one `GET /hello` (HTTP/1.1, keep-alive), reads the whole reply, then stays open and idle.
Talks to its parent over stdin/stdout, one line each way:
    prints  READY opened=N answered=M failed=K seconds=S   once every connection has answered (or failed)
    reads   CHECK  -> prints OPEN n  (connections the server has not closed)
    reads   CLOSE or end of input -> closes everything and exits
Only ever connects to 127.0.0.1 (loopback).
"""
import argparse
import errno
import resource
import selectors
import socket
import sys
import time

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


def raise_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        sys.exit(f"bench_idle: need {wanted} file descriptors, the hard limit is {hard} (raise it with ulimit -Hn)")


def reply_complete(data):
    """True once `data` holds a full reply: headers plus Content-Length bytes of body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def open_connections(port, count, window, deadline):
    """Connects `count` sockets, at most `window` handshakes in flight (the listen backlog may be small)."""
    sel = selectors.DefaultSelector()
    idle, failed, started, pending = [], 0, 0, 0
    buffers = {}
    while len(idle) + failed < count:
        if time.monotonic() > deadline:
            failed += count - len(idle) - failed
            break
        while started < count and pending < window:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
            else:
                sel.register(s, selectors.EVENT_WRITE, "connect")
                pending += 1
            started += 1
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                if key.data == "connect":
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        raise OSError("connect failed")
                    s.send(REQUEST)  # tiny: fits the socket buffer in one call
                    buffers[s] = b""
                    sel.modify(s, selectors.EVENT_READ, "reply")
                    continue
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed before replying")
                buffers[s] += chunk
                if reply_complete(buffers[s]):
                    sel.unregister(s)
                    del buffers[s]
                    idle.append(s)
                    pending -= 1
            except OSError:
                sel.unregister(s)
                buffers.pop(s, None)
                s.close()
                failed += 1
                pending -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    return idle, failed


def still_open(sockets):
    """Counts the sockets the server has not closed (a closed one reads as EOF or an error)."""
    n = 0
    for s in sockets:
        try:
            n += s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=100, help="handshakes in flight at once")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to open everything")
    args = parser.parse_args()
    raise_fd_limit(args.connections + 64)

    start = time.monotonic()
    idle, failed = open_connections(args.port, args.connections, args.window, start + args.timeout)
    print(f"READY opened={len(idle) + failed} answered={len(idle)} failed={failed} "
          f"seconds={time.monotonic() - start:.1f}", flush=True)
    for line in sys.stdin:
        if line.strip() == "CHECK":
            print(f"OPEN {still_open(idle)}", flush=True)
        elif line.strip() == "CLOSE":
            break
    for s in idle:
        s.close()


if __name__ == "__main__":
    main()
