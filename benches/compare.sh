#!/usr/bin/env bash
# Side-by-side L7 throughput: wrk against a backend directly, and through Fulcrum, HAProxy and nginx,
# each balancing round robin over the same three backends, all on 127.0.0.1. Every proxy gets the
# same worker count. Rounds alternate between targets so machine noise hits all of them alike; the
# table reports the median of the rounds, the ratio to direct, and the proxy's CPU time per request
# (user + system, its threads and worker processes, from /proc, over the round).
#
#   benches/compare.sh [ROUNDS=3] [SECONDS=5] [CONNECTIONS=50]
#
# FULCRUM=path picks the fulcrum binary; BASELINE=path adds a second fulcrum build (e.g. the commit
# before a change, built into another target dir) as target "baseline", measured in the same
# alternating rounds, so a before/after comparison shares one run's noise.
#
# Needs wrk, haproxy and nginx (apt-get install wrk haproxy nginx) and a release build of fulcrum
# (cargo build --release). Stops everything it started, by PID.
set -euo pipefail
rounds=${1:-3}
secs=${2:-5}
conns=${3:-50}
workers=${WORKERS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
fulcrum=${FULCRUM:-$root/target/release/fulcrum}
baseline=${BASELINE:-}
for tool in wrk haproxy nginx; do
  command -v "$tool" >/dev/null || { echo "compare.sh needs $tool (apt-get install $tool)" >&2; exit 1; }
done
[ -x "$fulcrum" ] || { echo "build fulcrum first: cargo build --release" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Ports: backends 18101-18103, fulcrum 18080, haproxy 18081, nginx 18082, baseline 18083.
cat >"$dir/backends.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/backends.pid;
error_log $dir/backends.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:18101; location / { return 200 "hello from a\n"; } }
  server { listen 127.0.0.1:18102; location / { return 200 "hello from b\n"; } }
  server { listen 127.0.0.1:18103; location / { return 200 "hello from c\n"; } }
}
CONF
cat >"$dir/fulcrum.toml" <<CONF
[runtime]
worker_threads = $workers
[listeners.web]
bind = "127.0.0.1:18080"
mode = "http"
upstream = "app"
[upstreams.app]
servers = [ { address = "127.0.0.1:18101" }, { address = "127.0.0.1:18102" }, { address = "127.0.0.1:18103" } ]
CONF
cat >"$dir/haproxy.cfg" <<CONF
global
  nbthread $workers
  maxconn 8192
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend web
  bind 127.0.0.1:18081
  default_backend app
backend app
  balance roundrobin
  server a 127.0.0.1:18101
  server b 127.0.0.1:18102
  server c 127.0.0.1:18103
CONF
cat >"$dir/nginx.conf" <<CONF
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app {
    server 127.0.0.1:18101; server 127.0.0.1:18102; server 127.0.0.1:18103;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:18082;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF

declare -A pid_of
nginx -c "$dir/backends.conf" -e "$dir/backends.err" & pids+=($!)
"$fulcrum" run -c "$dir/fulcrum.toml" 2>"$dir/fulcrum.log" & pids+=($!); pid_of[fulcrum]=$!
if [ -n "$baseline" ]; then
  sed 's/127.0.0.1:18080/127.0.0.1:18083/' "$dir/fulcrum.toml" >"$dir/baseline.toml"
  "$baseline" run -c "$dir/baseline.toml" 2>"$dir/baseline.log" & pids+=($!); pid_of[baseline]=$!
fi
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 & pids+=($!); pid_of[haproxy]=$!
nginx -c "$dir/nginx.conf" -e "$dir/nginx.err" & pids+=($!); pid_of[nginx]=$!

# CPU ticks (user + system) of a process and its children (nginx's workers), from /proc.
cpu_ticks() {
  local total=0 p f
  for p in "$1" $(pgrep -P "$1" || true); do
    read -r -a f <"/proc/$p/stat" || continue
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; exit 1
}
for port in 18101 18102 18103 18080 18081 18082; do wait_port "$port"; done

declare -A port=([direct]=18101 [fulcrum]=18080 [haproxy]=18081 [nginx]=18082 [baseline]=18083)
targets=(direct fulcrum haproxy nginx)
if [ -n "$baseline" ]; then
  wait_port 18083
  targets=(direct baseline fulcrum haproxy nginx)
fi
declare -A results cpu
for round in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    before=0
    [ -n "${pid_of[$t]:-}" ] && before=$(cpu_ticks "${pid_of[$t]}")
    out=$(wrk -t2 -c"$conns" -d"${secs}s" "http://127.0.0.1:${port[$t]}/")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    results[$t]="${results[$t]:-} $rps"
    if [ -n "${pid_of[$t]:-}" ]; then
      ticks=$(( $(cpu_ticks "${pid_of[$t]}") - before ))
      us=$(echo "$ticks * 1000000 / $hz / $requests" | bc -l)
      cpu[$t]="${cpu[$t]:-} $us"
      echo "round $round $t $rps req/s, $(printf %.1f "$us") us CPU per request" >&2
    else
      echo "round $round $t $rps req/s" >&2
    fi
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
direct=$(echo "${results[direct]}" | median)
printf '%-8s %12s %8s %14s   (wrk -t2 -c%s -d%ss, median of %s rounds, %s workers each)\n' target "req/s" ratio "CPU us/req" "$conns" "$secs" "$rounds" "$workers"
for t in "${targets[@]}"; do
  m=$(echo "${results[$t]}" | median)
  c=-
  [ -n "${cpu[$t]:-}" ] && c=$(printf %.1f "$(echo "${cpu[$t]}" | median)")
  printf '%-8s %12.0f %8.2f %14s\n' "$t" "$m" "$(echo "$m / $direct" | bc -l)" "$c"
done
