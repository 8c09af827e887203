"""RESP (the Redis protocol), spoken directly: the fault drivers (chaos_load.py, cluster_chaos.py,
sentinel_chaos.py) and bench_profile.py must not depend on the server under test, nor on a Redis client library.
Standard library only."""

import socket


def command(port, *args, timeout=1.0):
    """One command over a new connection; returns the reply: str (status, bulk), int, list, None, or an
    Exception for an error reply."""
    payload = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")

        def read():
            line = reader.readline()
            if not line:
                raise OSError("connection closed")
            kind, rest = line[:1], line[1:-2]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                return Exception(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                size = int(rest)
                return None if size < 0 else reader.read(size + 2)[:-2].decode(errors="replace")
            if kind == b"*":
                size = int(rest)
                return None if size < 0 else [read() for _ in range(size)]
            raise OSError("unexpected reply %r" % line)

        return read()
