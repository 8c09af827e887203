"""RESP (the Redis protocol), spoken directly: the fault drivers (chaos_load.py, cluster_chaos.py,
sentinel_chaos.py) and bench_profile.py must not depend on the server under test, nor on a Redis client library.
Standard library only."""

import socket


def encode(args):
    """A command as RESP: an array of bulk strings (bytes as they are, anything else as its str's UTF-8)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """One kept connection. Call it with a command's arguments; the reply comes back as str (status), int, list,
    None, bytes (bulk strings; str with decode=True), or an Exception for an error reply. OSError when the
    connection closes or the reply is not RESP."""

    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args, decode=False):
        self.sock.sendall(encode(args))
        return self._read(decode)

    def _read(self, decode):
        line = self.reader.readline()
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
            if size < 0:
                return None
            data = self.reader.read(size + 2)[:-2]
            return data.decode(errors="replace") if decode else data
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read(decode) for _ in range(size)]
        raise OSError("unexpected reply %r" % line)

    def close(self):
        self.reader.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def command(port, *args, timeout=1.0):
    """One command over a new connection; returns the reply as Connection does, bulk strings decoded."""
    with Connection(port, timeout=timeout) as connection:
        return connection(*args, decode=True)
