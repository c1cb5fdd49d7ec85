#!/usr/bin/env python3
"""Open N idle client connections to a Redis endpoint and report the RSS a process gained.

Each connection sends one PING and reads +PONG (so a proxy has its backend connection up), then
stays open and idle while the target's RSS is read from /proc. Prints one line:
    <conns> <rss_before_kib> <rss_after_kib> <kib_per_conn>
Usage: idle_conns.py PORT PID N
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


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    before = rss_kib(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"PING\r\n")
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
    print(n, before, after, f"{(after - before) / n:.2f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
