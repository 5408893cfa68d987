#!/usr/bin/env python3
"""Side-by-side hot reload: Fulcrum, HAProxy and nginx, each reloaded 10 times under keep-alive load.

    benches/reload_compare.py [PROXY ...]      (PROXY: fulcrum, haproxy, nginx; default all three)

Three nginx backends (a, b, c) on 127.0.0.1 answer "hello from X". Each proxy in turn starts balancing
round robin over a and b, then 20 client threads, each holding ONE keep-alive HTTP/1.1 connection to
it, send GET / about 5 ms apart while the proxy is reloaded 10 times 0.5 s apart, alternating configs:
every reload adds or removes server c, every second one adds or removes a second listener. One second
after the last reload the clients stop. Each proxy is reloaded its own standard way:

  fulcrum  `fulcrum reload -c FILE --pid-file PIDFILE` (validates, signals, waits for the verdict)
  haproxy  as Debian's haproxy.service does (Type=notify, `haproxy -Ws`, ExecReload `haproxy -c`
           then `kill -USR2` to the master): `haproxy -Ws -db -f FILE` with NOTIFY_SOCKET a datagram
           socket this script reads; a reload is `haproxy -c -q -f FILE`, SIGUSR2, then the
           master's READY=1 that follows its RELOADING=1 (systemd 253+ waits for it too). Not `-sf`
           with a new process each time: one master PID to signal and stop, as the unit runs it
  nginx    `nginx -c FILE -s reload` (SIGHUP to the master), applied once it has forked new workers

The next reload starts SPACING after the previous one was applied (sent on a fixed 0.5 s clock
instead, without waiting for READY=1, a loaded HAProxy master ignored 2 of 10 SIGUSR2).

A client counts a connection closed by the proxy when it finds it closed before writing (EOF or
reset pending on the idle socket: the check HTTP client pools make before reusing one), when a read
or write on it fails (EOF or reset: the request also counts as failed), or when a response carries
`Connection: close`; it then reconnects and goes on. Failed requests: errors and non-200 answers.
A change took effect when, before the next reload: an added c served a request; a removed c served
nothing in the last 0.15 s; an added listener answered 200; a removed one refused connections.

The table, per proxy: seconds of load, requests, failed, closed (idle + on-request + conn-close:
how the proxy closed them), changes that took effect (of 20) and the slowest one (from the start
of its reload until it showed). What went wrong (changes that did not show, errors by kind) goes
to stderr.

FULCRUM=path picks the fulcrum binary (default: target/release/fulcrum, under CARGO_TARGET_DIR when
set). Needs haproxy and nginx (apt-get install haproxy nginx) and a release build of fulcrum
(cargo build --release). Ports 18201-18203 (backends), 18210/18211 (fulcrum), 18220/18221
(haproxy), 18230/18231 (nginx), all on 127.0.0.1. Everything it starts is stopped by PID (a
proxy's worker processes too); the temp dir goes.
"""
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

CLIENTS = 20
RELOADS = 10
SPACING = 0.5  # seconds between reloads
TAIL = 1.0  # seconds of load after the last reload
PACE = 0.005  # seconds between a response and the next request on a client
QUIET = 0.15  # a removed server must serve nothing in the last QUIET seconds before the next reload
WORKERS = 2  # fulcrum worker threads, haproxy threads, nginx worker processes
BACKENDS = {"a": 18201, "b": 18202, "c": 18203}
PORTS = {"fulcrum": (18210, 18211), "haproxy": (18220, 18221), "nginx": (18230, 18231)}
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

BACKENDS_CONF = """worker_processes 1;
daemon off;
pid {dir}/backends.pid;
error_log {dir}/backends.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
{servers}
}}
"""


def fulcrum_config(port, extra, with_c):
    """Listener `web` on `port` (and `extra` on `extra` when given), round robin over a, b (c)."""
    servers = ", ".join(f'{{ address = "127.0.0.1:{BACKENDS[s]}" }}' for s in servers_of(with_c))
    text = (f"[runtime]\nworker_threads = {WORKERS}\n\n"
            f'[listeners.web]\nbind = "127.0.0.1:{port}"\nmode = "http"\nupstream = "app"\n'
            'idle_timeout = "65s"\n\n'
            f'[upstreams.app]\nstrategy = "round_robin"\nservers = [ {servers} ]\n')
    if extra:
        text += f'\n[listeners.extra]\nbind = "127.0.0.1:{extra}"\nmode = "http"\nupstream = "app"\n'
    return text


def haproxy_config(port, extra, with_c):
    """The same as fulcrum_config, for HAProxy, with the keep-alive settings an SRE would use."""
    servers = "".join(f"  server {s} 127.0.0.1:{BACKENDS[s]}\n" for s in servers_of(with_c))
    # idle-close-on-response (2.6+): on soft-stop an idle connection gets one more answer, with
    # `Connection: close`, instead of being closed under a client that may be writing to it.
    text = (f"global\n  nbthread {WORKERS}\n  maxconn 8192\n  hard-stop-after 30s\n"
            "defaults\n  mode http\n  option http-keep-alive\n  option idle-close-on-response\n"
            "  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n"
            "  timeout http-keep-alive 30s\n  http-reuse always\n"
            f"frontend web\n  bind 127.0.0.1:{port}\n  default_backend app\n")
    if extra:
        text += f"frontend extra\n  bind 127.0.0.1:{extra}\n  default_backend app\n"
    return text + f"backend app\n  balance roundrobin\n{servers}"


def nginx_config(port, extra, with_c, dir):
    """The same as fulcrum_config, for nginx (upstream keep-alive as compare.sh sets it)."""
    servers = " ".join(f"server 127.0.0.1:{BACKENDS[s]};" for s in servers_of(with_c))
    location = ("location / { proxy_pass http://app; proxy_http_version 1.1; "
                'proxy_set_header Connection ""; }')
    listeners = "".join(f"  server {{ listen 127.0.0.1:{p}; {location} }}\n"
                        for p in ([port, extra] if extra else [port]))
    return (f"worker_processes {WORKERS};\ndaemon off;\npid {dir}/nginx.pid;\n"
            f"error_log {dir}/nginx.err;\nworker_shutdown_timeout 30s;\n"
            "events { worker_connections 4096; }\n"
            "http {\n  access_log off;\n  keepalive_timeout 65s;\n  keepalive_requests 1000000;\n"
            f"  upstream app {{ {servers} keepalive 64; }}\n{listeners}}}\n")


def servers_of(with_c):
    """Round robin over a and b, with c when the config adds it."""
    return ["a", "b", "c"] if with_c else ["a", "b"]


def children(pid):
    """The PIDs whose parent is `pid` (a proxy's worker processes), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def comm(pid):
    """The process's command name, or None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return None if stat.rsplit(")", 1)[1].split()[0] == "Z" else stat.split("(", 1)[1].rsplit(")", 1)[0]


def wait_until(deadline, check, step=0.01):
    """Polls `check` until it returns true or `deadline` (monotonic) passes; returns its last value."""
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(step)


def port_open(port):
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def probe(port):
    """One GET on a new connection: 'ok' on 200, 'refused' when nothing listens, else 'other'."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return "ok" if s.recv(12).startswith(b"HTTP/1.1 200") else "other"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "other"


class Closed(Exception):
    """The proxy closed the connection (EOF or reset) under a request."""


def read_response(sock, buf):
    """Reads one response with a Content-Length body; returns (status, close, body, leftover)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise Closed("EOF")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    length = int(headers["content-length"])
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise Closed("EOF in body")
        buf += chunk
    return status, headers.get("connection") == "close", buf[:length], buf[length:]


class Client(threading.Thread):
    """One keep-alive connection at a time, requests paced PACE apart, until `stop` is set."""

    def __init__(self, port, index, stop):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.pace = PACE + index % 3 * 0.001
        self.requests = self.failed = 0
        self.closed = Counter()  # how the proxy closed: idle, on-request, conn-close
        self.errors = Counter()
        self.served = []  # (monotonic time, backend letter) of every 200

    def connect(self):
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except OSError as e:
                self.requests += 1
                self.failed += 1
                self.errors[f"connect: {type(e).__name__}"] += 1
                time.sleep(self.pace)
        return None

    def idle_closed(self, sock):
        """True when the proxy closed the idle connection (EOF or reset already pending)."""
        if not select.select([sock], [], [], 0)[0]:
            return False
        try:
            if sock.recv(1, socket.MSG_PEEK):
                self.errors["bytes on an idle connection"] += 1
            return True
        except OSError:
            return True

    def run(self):
        sock, buf = self.connect(), b""
        while sock and not self.stop.is_set():
            time.sleep(self.pace)
            if self.idle_closed(sock):
                self.closed["idle"] += 1
                sock.close()
                sock, buf = self.connect(), b""
                continue
            self.requests += 1
            close = True
            try:
                sock.sendall(REQUEST)
                status, close, body, buf = read_response(sock, buf)
                if status == 200:
                    self.served.append((time.monotonic(), body[-2:-1].decode()))
                else:
                    self.failed += 1
                    self.errors[f"status {status}"] += 1
                self.closed["conn-close"] += close
            except (Closed, ConnectionError) as e:
                self.failed += 1
                self.closed["on-request"] += 1
                self.errors[f"{type(e).__name__} {e}"] += 1
            except (OSError, ValueError, KeyError, IndexError) as e:
                self.failed += 1
                self.errors[f"{type(e).__name__} {e}"] += 1
            if close:
                sock.close()
                sock, buf = self.connect(), b""
        if sock:
            sock.close()


class Proxy:
    """A proxy under test: writes its config, starts it, reloads it, stops it and its workers."""

    def __init__(self, name, dir, fulcrum):
        self.name, self.dir, self.fulcrum = name, dir, fulcrum
        self.port, self.extra = PORTS[name]
        self.config = os.path.join(dir, {"fulcrum": "fulcrum.toml", "haproxy": "haproxy.cfg",
                                         "nginx": "nginx.conf"}[name])
        self.pid_file = os.path.join(dir, "fulcrum.pid")
        self.log = open(os.path.join(dir, f"{name}.log"), "w")
        self.process = None
        self.workers = set()  # every worker PID seen, old ones included, to stop them all
        self.notify = None
        if name == "haproxy":
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(os.path.join(dir, "notify.sock"))

    def write(self, extra, with_c):
        port, extra = self.port, self.extra if extra else None
        text = {"fulcrum": lambda: fulcrum_config(port, extra, with_c),
                "haproxy": lambda: haproxy_config(port, extra, with_c),
                "nginx": lambda: nginx_config(port, extra, with_c, self.dir)}[self.name]()
        # Replaced whole, so that a reload never reads half a file.
        with open(self.config + ".new", "w") as f:
            f.write(text)
        os.replace(self.config + ".new", self.config)

    def command(self):
        return {"fulcrum": [self.fulcrum, "run", "-c", self.config, "--pid-file", self.pid_file],
                "haproxy": ["haproxy", "-Ws", "-db", "-f", self.config],
                "nginx": ["nginx", "-c", self.config, "-e", os.path.join(self.dir, "nginx.err")]}[self.name]

    def version(self):
        out = subprocess.run({"fulcrum": [self.fulcrum, "--version"], "haproxy": ["haproxy", "-v"],
                              "nginx": ["nginx", "-v"]}[self.name], capture_output=True, text=True)
        # "fulcrum 0.1.0", "HAProxy version 2.6.12-1 ...", "nginx version: nginx/1.22.1"
        words = (out.stdout + out.stderr).split()
        return words[1] if self.name == "fulcrum" else words[2].split("/")[-1]

    def start(self):
        self.write(extra=False, with_c=False)
        env = dict(os.environ)
        if self.notify:
            env["NOTIFY_SOCKET"] = self.notify.getsockname()
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=self.log, env=env)
        if self.notify and not self.ready():
            raise SystemExit(f"haproxy sent no READY=1; see {self.log.name}:\n" + open(self.log.name).read())
        if not wait_until(time.monotonic() + 10, lambda: port_open(self.port)):
            raise SystemExit(f"{self.name} never opened port {self.port}; see {self.log.name}:\n"
                             + open(self.log.name).read())
        if self.name != "fulcrum":
            wait_until(time.monotonic() + 5, lambda: self.new_workers(set()))
            self.workers |= set(children(self.process.pid))

    def ready(self):
        """Waits (10 s at most) for the HAProxy master's READY=1, skipping RELOADING=1."""
        deadline = time.monotonic() + 10
        while (left := deadline - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                    return True
            except socket.timeout:
                break
        return False

    def new_workers(self, before):
        return set(children(self.process.pid)) - before - {self.process.pid}

    def reload(self):
        """Reloads the standard way; returns an error text, or None once the new config runs."""
        if self.name == "fulcrum":
            out = subprocess.run([self.fulcrum, "reload", "-c", self.config, "--pid-file",
                                  self.pid_file], capture_output=True, text=True)
            return None if out.returncode == 0 else (out.stdout + out.stderr).strip()
        if self.name == "haproxy":
            out = subprocess.run(["haproxy", "-c", "-q", "-f", self.config], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                return (out.stdout + out.stderr).strip()
            os.kill(self.process.pid, signal.SIGUSR2)
            ready = self.ready()
            self.workers |= set(children(self.process.pid))
            return None if ready else "no READY=1 within 10 s"
        before = set(children(self.process.pid))
        out = subprocess.run(["nginx", "-c", self.config, "-e", os.path.join(self.dir, "nginx.err"),
                              "-s", "reload"], capture_output=True, text=True)
        if out.returncode != 0:
            return (out.stdout + out.stderr).strip()
        # Applied when the master has forked the workers that run the new config.
        fresh = wait_until(time.monotonic() + 5, lambda: self.new_workers(before))
        self.workers |= fresh
        return None if fresh else "no new worker process within 5 s"

    def stop(self):
        if self.process is not None:
            self.workers |= set(children(self.process.pid))
            stop_pid(self.process)
            self.process = None
        for pid in self.workers:
            # A worker the master did not take down (an old generation), checked by name so that
            # a recycled PID is left alone.
            if comm(pid) == self.name:
                os.kill(pid, signal.SIGTERM)
                if not wait_until(time.monotonic() + 5, lambda: comm(pid) != self.name):
                    os.kill(pid, signal.SIGKILL)
        self.workers.clear()
        self.log.close()
        if self.notify:
            self.notify.close()


def stop_pid(process):
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def effect(served, start, end, with_c):
    """When server c's change showed in [start, end): its first answer, or just after its last."""
    times = [t for t, letter in served if letter == "c" and start <= t < end]
    if with_c:
        return times[0] if times else None
    last = times[-1] if times else start
    return last if last < end - QUIET else None


def scenario(proxy):
    """Runs the reloads under load; returns the row of the table and the problems seen."""
    proxy.start()
    stop = threading.Event()
    clients = [Client(proxy.port, i, stop) for i in range(CLIENTS)]
    started = time.monotonic()
    for client in clients:
        client.start()
    try:
        if not wait_until(time.monotonic() + 10, lambda: all(c.served for c in clients)):
            raise SystemExit(f"{proxy.name}: not every client got an answer within 10 s")
        phases, problems, delays = reloads(proxy)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)
    seconds = time.monotonic() - started  # of load: requests / seconds is the clients' pace
    served = sorted(x for c in clients for x in c.served)
    for i, (issued, end, with_c) in enumerate(phases, 1):
        seen = effect(served, issued, end, with_c)
        if seen is None:
            problems.append(f"reload {i}: server c {'never served' if with_c else 'still served'}")
        else:
            delays.append(seen - issued)
    closed, errors = Counter(), Counter()
    for c in clients:
        closed += c.closed
        errors += c.errors
    row = {"seconds": f"{seconds:.1f}", "requests": sum(c.requests for c in clients),
           "failed": sum(c.failed for c in clients), "closed": sum(closed.values()),
           "idle": closed["idle"], "on-request": closed["on-request"],
           "conn-close": closed["conn-close"], "changes": f"{len(delays)}/{2 * RELOADS}",
           "slowest": f"{max(delays) * 1000:.0f} ms" if delays else "-"}
    return row, problems + [f"{n} x {e}" for e, n in errors.most_common()]


def reloads(proxy):
    """Reloads RELOADS times, each SPACING after the previous one was applied, probing the listener
    change; returns the phases (issued, end, with_c), the changes that did not show before the next
    reload and how long the others took."""
    phases, problems, delays = [], [], []
    for i in range(1, RELOADS + 1):
        with_c, extra = i % 2 == 1, (i // 2) % 2 == 1
        issued = time.monotonic()
        proxy.write(extra, with_c)
        error = proxy.reload()
        if error:
            problems.append(f"reload {i} refused: {error}")
        end = time.monotonic() + (SPACING if i < RELOADS else TAIL)
        want = "ok" if extra else "refused"
        if wait_until(end, lambda: probe(proxy.extra) == want):
            delays.append(time.monotonic() - issued)
        else:
            problems.append(f"reload {i}: listener {proxy.extra} not {want} before the next reload")
        time.sleep(max(0.0, end - time.monotonic()))
        phases.append((issued, end, with_c))
    return phases, problems, delays


def start_backends(dir):
    """Starts the nginx that plays servers a, b and c; returns its master."""
    body = 'location / {{ return 200 "hello from {}\\n"; }}'
    servers = "\n".join(f"  server {{ listen 127.0.0.1:{p}; {body.format(s)} }}"
                        for s, p in BACKENDS.items())
    conf = os.path.join(dir, "backends.conf")
    with open(conf, "w") as f:
        f.write(BACKENDS_CONF.format(dir=dir, servers=servers))
    process = subprocess.Popen(["nginx", "-c", conf, "-e", os.path.join(dir, "backends.err")],
                               stdin=subprocess.DEVNULL)
    for port in BACKENDS.values():
        if not wait_until(time.monotonic() + 10, lambda: port_open(port)):
            stop_pid(process)
            raise SystemExit(f"backend port {port} never opened")
    return process


def main():
    names = sys.argv[1:] or list(PORTS)
    if any(n not in PORTS for n in names):
        raise SystemExit(__doc__)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    fulcrum = os.environ.get("FULCRUM", os.path.join(target, "release", "fulcrum"))
    for tool in ("haproxy", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"reload_compare.py needs {tool} (apt-get install {tool})")
    if "fulcrum" in names and not os.access(fulcrum, os.X_OK):
        raise SystemExit(f"build fulcrum first: cargo build --release (or set FULCRUM=); no {fulcrum}")
    ports = list(BACKENDS.values()) + [p for n in names for p in PORTS[n]]
    busy = [p for p in ports if port_open(p)]
    if busy:
        raise SystemExit(f"ports in use on 127.0.0.1: {busy} (another run of reload_compare.py?)")
    rows = {}
    with tempfile.TemporaryDirectory() as dir:
        backends = start_backends(dir)
        try:
            for name in names:
                proxy = Proxy(name, dir, fulcrum)
                try:
                    rows[name], problems = scenario(proxy)
                finally:
                    proxy.stop()
                rows[name]["version"] = proxy.version()
                for problem in problems:
                    print(f"{name}: {problem}", file=sys.stderr)
        finally:
            stop_pid(backends)
    columns = ["version", "seconds", "requests", "failed", "closed", "idle", "on-request", "conn-close",
               "changes", "slowest"]
    print(f"{CLIENTS} keep-alive clients, {RELOADS} reloads each {SPACING} s after the last applied, "
          f"{WORKERS} workers each; closed = idle + on-request + conn-close")
    widths = {c: 2 + max([len(c)] + [len(str(row[c])) for row in rows.values()]) for c in columns}
    print(f"{'proxy':<8}" + "".join(f"{c:>{widths[c]}}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<8}" + "".join(f"{row[c]:>{widths[c]}}" for c in columns))


if __name__ == "__main__":
    main()
