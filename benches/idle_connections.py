#!/usr/bin/env python3
"""Memory cost of idle keep-alive client connections.

Opens N connections to an HTTP listener on 127.0.0.1, sends one request on each, reads the
responses, holds them idle for a second, and reports the daemon's RSS growth per connection.

    benches/idle_connections.py PORT PID [N=5000]

PID is the daemon's (or any proxy's) process id, read from /proc; compare proxies by running it
against each. The connections close when the script exits.
"""
import resource
import socket
import sys
import time


def rss_kib(pid: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def main() -> None:
    port, pid = int(sys.argv[1]), sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
    before = rss_kib(pid)
    conns = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        conns.append(conn)
    for conn in conns:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                raise SystemExit("the server closed a connection")
            head += chunk
    time.sleep(1)
    after = rss_kib(pid)
    print(f"{count} idle keep-alive connections: RSS {before} -> {after} KiB, "
          f"{(after - before) * 1024 / count:.0f} bytes each")


if __name__ == "__main__":
    main()
