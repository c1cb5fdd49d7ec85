#!/usr/bin/env python3
"""Open N idle client connections to a Redis endpoint and report the RSS a process gained.

Each connection sends one PING (as clients do, a RESP array: an inline command would pin a client
in pooled mode) and reads +PONG (so a proxy has its backend connection up), then stays open and
idle while the target's RSS is read from /proc, and, given the master's port, the number of
client connections the master then has (by CLIENT LIST, less the one asking). Prints one line:
    <conns> <rss_before_kib> <rss_after_kib> <kib_per_conn> [<master_connections>]
Usage: idle_conns.py PORT PID N [MASTER_PORT]
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def master_connections(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
    buf = b""
    while True:
        buf += s.recv(1 << 20)
        head, _, body = buf.partition(b"\r\n")
        if head.startswith(b"$") and len(body) >= int(head[1:]) + 2:
            break
    s.close()
    return body.decode().count("\n") - 1


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    before = rss_kib(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        socks.append(s)
    # Read every reply only after all are open: the connections are then all established and idle.
    for s in socks:
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                raise RuntimeError(f"connection closed by the target: {buf!r}")
            buf += chunk
        if buf != b"+PONG\r\n":
            raise RuntimeError(f"unexpected reply {buf!r}")
    time.sleep(1.0)  # let the target settle (lazy allocations, freed temporaries)
    after = rss_kib(pid)
    fields = [n, before, after, f"{(after - before) / n:.2f}"]
    if len(sys.argv) > 4:
        fields.append(master_connections(int(sys.argv[4])))
    print(*fields)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
