#!/bin/sh
# A BASELINE for benches/compare.sh: the same fulcrum build with the access log on, so that one
# run measures the log on and off side by side:
#
#   FULCRUM=target/release/fulcrum BASELINE=benches/access_log_on.sh benches/compare.sh 5 5 50
#
# compare.sh starts it as `access_log_on.sh run -c CONFIG`; it adds `access_log` (JSON, to
# $ACCESS_LOG, default /tmp/fulcrum-bench-access.log, emptied first) to the listener and execs
# $FULCRUM_BIN (default: target/release/fulcrum), so the pid compare.sh measures is fulcrum's.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
log=${ACCESS_LOG:-/tmp/fulcrum-bench-access.log}
cfg=$3
sed "/^upstream = \"app\"/a access_log = \"$log\"" "$cfg" >"$cfg.log-on.toml"
: >"$log"
exec "${FULCRUM_BIN:-$root/target/release/fulcrum}" run -c "$cfg.log-on.toml"
