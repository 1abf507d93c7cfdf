#!/usr/bin/env bash
# The acknowledgement tail of two builds of ctwa-leads, in alternating sequential runs: for
# each build in turn, a fresh server on fresh files with /metrics on, 5 s of load unmeasured,
# then SECONDS measured at CONNECTIONS, on the production-shaped --mix real by default (every
# contact its own wa_id and user_id, every click its own ctwa_clid, 50 ads, ~10% status-only).
# Each run prints its deliveries/s, its p99, the p99 as a multiple of the closed loop's mean
# (connections ÷ deliveries/s; *The p99 at 64 connections is the closed loop* in the README),
# its projection lag p99, and the share of log flushes (ctwa_writer_fsync_seconds, over the
# measured part) that took over 5 ms. Unlike bench/side_by_side.sh the two builds never share
# the machine, so it measures latency rather than CPU; compare within one call, since this
# machine drifts by a third from hour to hour. It compares our builds with each other, so
# there is no peer; bench/run.sh has the peer ratios.
#
#   bench/tail.sh A_BINARY B_BINARY [rounds, default 3] [connections, default 64] [seconds, default 20]
#   MIX=statuses for the status-heavy mix (75% status-only)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ $# -ge 2 ] || { sed -n '2,16s/^# \{0,1\}//p' "$0"; exit 2; }
A=$(readlink -f "$1")
B=$(readlink -f "$2")
ROUNDS=${3:-3}
CONNS=${4:-64}
SECS=${5:-20}
MIX=${MIX:-real}
LOADGEN=$(bench_loadgen)
bench_work

flushes() { curl -fs http://127.0.0.1:18702/metrics | grep '^ctwa_writer_fsync_seconds' || true; }

one() { # label binary
  local dir="$WORK/$1.$round"
  mkdir -p "$dir"
  bench_config 18701 "sqlite://$dir/bench.db" >"$dir/config.toml"
  CTWA_METRICS__LISTEN=127.0.0.1:18702 RUST_LOG="${RUST_LOG:-info}" "$2" serve \
    --config "$dir/config.toml" >"$dir/server.log" 2>&1 &
  local pid=$!
  bench_up 18701
  "$LOADGEN" --url http://127.0.0.1:18701 --secret bench-app-secret --connections "$CONNS" \
    --duration 5 --mix "$MIX" >/dev/null
  flushes >"$dir/before"
  "$LOADGEN" --url http://127.0.0.1:18701 --secret bench-app-secret --connections "$CONNS" \
    --duration "$SECS" --mix "$MIX" --json >"$dir/out"
  flushes >"$dir/after"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "$1" "$CONNS" "$dir" <<'PY'
import json, sys
label, conns, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = json.loads(open(f"{d}/out").read().strip().splitlines()[-1])
def series(name):
    out = {}
    for line in open(f"{d}/{name}"):
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out
before, after = series("before"), series("after")
delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
count = next((v for k, v in delta.items() if k.endswith("_count")), 0.0)
fast = next((v for k, v in delta.items() if 'le="0.005"' in k), None)
slow = f"{100 * (count - fast) / count:.3f}%" if count and fast is not None else "n/a"
rps, p99 = run["rps"], run["p99_ms"]
print(f"{label}  {rps:8.0f}/s  p99 {p99:6.2f} ms  {p99 / (conns * 1000 / rps):.2f}x its mean  "
      f"lag p99 {run['lag_p99_s']:.3f} s  flushes over 5 ms {slow} of {count:.0f}")
PY
}

for round in $(seq "$ROUNDS"); do
  one A "$A"
  one B "$B"
done
