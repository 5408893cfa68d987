#!/usr/bin/env python3
"""Memory cost of idle client connections: HTTP keep-alive connections or L4 (tcp mode) sessions.

    benches/idle_connections.py PORT PID [N=5000]
    benches/idle_connections.py --tcp FULCRUM_BINARY [N=10000]

HTTP: opens N connections to an HTTP listener on 127.0.0.1:PORT and reports the RSS growth per
connection of process PID (the daemon's, or any proxy's: compare proxies by running it against
each) twice: silent (connected, nothing sent, after 1.5 s) and after one request on each (all N
requests written, then all responses read, then 5 s idle, the time a proxy that releases memory
after a burst, as Fulcrum and HAProxy do, needs to do so).

--tcp: starts FULCRUM_BINARY (2 workers) with one tcp listener over a server this script plays,
opens N sessions one after another, passes one byte each way through every one (so each session
has copied), holds them idle for a second, and reports the daemon's RSS growth per session: both of
its sockets, its task and whatever buffers it keeps. Compare builds by running it against each
binary. RLIMIT_NOFILE is raised to 2 N + 100, the hard limit too where that is allowed
(CAP_SYS_RESOURCE); the daemon inherits it.

Loopback only. The connections close when the script exits; the daemon it started is stopped by
its PID.
"""
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

TCP_CONFIG = """
[runtime]
worker_threads = 2
shutdown_timeout = "1s"

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "held"
idle_timeout = "1h"

[upstreams.held]
servers = [ {{ address = "127.0.0.1:{port}" }} ]
"""


def rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
    except (ValueError, PermissionError):
        raise SystemExit(f"need {need} file descriptors and the hard limit is {hard} "
                         "(raising it needs CAP_SYS_RESOURCE): lower N")


def report(what: str, count: int, before: int, after: int) -> None:
    print(f"{count} {what}: RSS {before} -> {after} KiB, "
          f"{(after - before) * 1024 / count:.0f} bytes each")


def http_connections(port: int, pid: str, count: int) -> None:
    raise_nofile(count + 100)
    before = rss_kib(pid)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    time.sleep(1.5)
    report("silent connections", count, before, rss_kib(pid))
    for conn in conns:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    for conn in conns:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                raise SystemExit("the server closed a connection")
            head += chunk
    time.sleep(5)
    report("idle keep-alive connections after one request", count, before, rss_kib(pid))


def start_daemon(binary: str, config: str) -> tuple:
    """Starts the daemon on `config`; returns it and the address its listener bound."""
    daemon = subprocess.Popen([binary, "run", "-c", config], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in daemon.stderr:
        found = re.search(r"listening listener=l4 addr=([0-9.]+):(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", line))
        if found:
            # Keep reading stderr so that the daemon never blocks on a full pipe.
            threading.Thread(target=daemon.stderr.read, daemon=True).start()
            return daemon, (found.group(1), int(found.group(2)))
    raise SystemExit(f"{binary} exited during startup with {daemon.wait()}")


def tcp_sessions(binary: str, count: int) -> None:
    raise_nofile(2 * count + 100)
    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "fulcrum.toml")
        with open(config, "w") as f:
            f.write(TCP_CONFIG.format(port=server.getsockname()[1]))
        daemon, proxy = start_daemon(binary, config)
        try:
            time.sleep(0.5)
            before = rss_kib(daemon.pid)
            held = []
            for _ in range(count):
                client = socket.create_connection(proxy)
                client.sendall(b"x")
                # Sessions are opened one at a time, so the one waiting is this client's.
                upstream, _ = server.accept()
                if upstream.recv(1) != b"x":
                    raise SystemExit("the byte did not reach the server")
                upstream.sendall(b"y")
                if client.recv(1) != b"y":
                    raise SystemExit("the byte did not reach the client")
                held += (client, upstream)
            time.sleep(1)
            report("idle L4 sessions", count, before, rss_kib(daemon.pid))
            for s in held:
                s.close()
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--tcp"] and len(args) in (2, 3):
        tcp_sessions(args[1], int(args[2]) if len(args) > 2 else 10000)
    elif len(args) in (2, 3) and not args[0].startswith("-"):
        http_connections(int(args[0]), args[1], int(args[2]) if len(args) > 2 else 5000)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
