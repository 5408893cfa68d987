#!/usr/bin/env bash
# Instructions per proxied request, which machine noise does not move: Fulcrum under callgrind
# with one worker, round robin over three nginx backends on 127.0.0.1, sequential keep-alive GETs
# from one client connection. Two runs (FEW and MANY requests) are subtracted, so start-up and
# shutdown cancel out: (Ir(MANY) - Ir(FEW)) / (MANY - FEW).
#
#   benches/callgrind.sh [FEW=1000] [MANY=6000]
#
# FULCRUM=path picks the binary (default target/release/fulcrum); run it once per build to compare.
# Needs valgrind and nginx. Stops everything it started, by PID.
set -euo pipefail
few=${1:-1000}
many=${2:-6000}
root=$(cd "$(dirname "$0")/.." && pwd)
fulcrum=${FULCRUM:-$root/target/release/fulcrum}
for tool in valgrind nginx python3; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh needs $tool" >&2; exit 1; }
done
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/backends.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/backends.pid;
error_log $dir/backends.err;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:18201; location / { return 200 "hello from a\n"; } }
  server { listen 127.0.0.1:18202; location / { return 200 "hello from b\n"; } }
  server { listen 127.0.0.1:18203; location / { return 200 "hello from c\n"; } }
}
CONF
cat >"$dir/fulcrum.toml" <<CONF
[runtime]
worker_threads = 1
shutdown_timeout = "1s"
[listeners.web]
bind = "127.0.0.1:18280"
mode = "http"
upstream = "app"
[upstreams.app]
servers = [ { address = "127.0.0.1:18201" }, { address = "127.0.0.1:18202" }, { address = "127.0.0.1:18203" } ]
CONF
nginx -c "$dir/backends.conf" -e "$dir/backends.err" & pids+=($!)

wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; exit 1
}
for port in 18201 18202 18203; do wait_port "$port"; done

# Sends N sequential keep-alive GETs on one connection and reads each response whole.
cat >"$dir/client.py" <<'PY'
import socket, sys
n = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", 18280))
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
for _ in range(n):
    s.sendall(req)
    data = b""
    while True:
        data += s.recv(65536)
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            continue
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        if len(body) >= length:
            break
s.close()
PY

run() {
  local n=$1 out="$dir/callgrind.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$fulcrum" run -c "$dir/fulcrum.toml" 2>"$dir/valgrind.$n.log" &
  local pid=$!
  wait_port 18280
  python3 "$dir/client.py" "$n"
  kill -TERM "$pid"
  wait "$pid" || true
  # Total instructions: the "summary:" (or "totals:") line of the output file.
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
ir_few=$(run "$few")
ir_many=$(run "$many")
per=$(( (ir_many - ir_few) / (many - few) ))
echo "instructions: $few requests $ir_few, $many requests $ir_many"
echo "instructions per proxied request: $per"
