#!/usr/bin/env bash
# Two builds of ctwa-leads compared side by side: both servers run at once on the same cores,
# each on fresh files and under its own load generator (production-shaped --mix real by
# default), so this machine's drift from hour to hour hits both alike. It prints each
# server's acknowledged deliveries/s and CPU time (user + system, all threads) per acknowledged
# delivery and KB written per acknowledged delivery (/proc/PID/io write_bytes) over the measured
# seconds, each server's peak RSS (VmHWM, warm-up included), and B's CPU and bytes per delivery
# as ratios of A's. Run it
# several times and swap A and B: one pair of the same build differed by up to ±8% while the
# load generator drew its templates from the clock, and by 0.980-1.007 in four pairs since it
# keeps them fixed (2026-12-07). It compares our builds with each other, so there is no peer;
# bench/run.sh has the peer ratios.
#
#   bench/side_by_side.sh A_BINARY B_BINARY [connections each, default 32] [seconds, default 20]
#   MIX=statuses for the status-heavy mix; RUST_LOG for both servers (default info, the service's default)
#
# For example, the build before a change against the working tree:
#   git stash && cargo build --release --bin ctwa-leads && cp target/release/ctwa-leads /tmp/a
#   git stash pop && cargo build --release --bin ctwa-leads --example loadgen
#   for i in 1 2 3; do bench/side_by_side.sh /tmp/a target/release/ctwa-leads
#                      bench/side_by_side.sh target/release/ctwa-leads /tmp/a; done
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ $# -ge 2 ] || { sed -n '2,21s/^# \{0,1\}//p' "$0"; exit 2; }
A=$(readlink -f "$1")
B=$(readlink -f "$2")
CONNS=${3:-32}
SECS=${4:-20}
MIX=${MIX:-real}
LOADGEN=$(bench_loadgen)
bench_work

start() { # binary port dir: prints the server's pid
  mkdir -p "$3"
  bench_config "$2" "sqlite://$3/bench.db" >"$3/config.toml"
  RUST_LOG="${RUST_LOG:-info}" "$1" serve --config "$3/config.toml" >"$3/server.log" 2>&1 &
  echo $!
}
load() { # port seconds [extra loadgen flags]
  "$LOADGEN" --url "http://127.0.0.1:$1" --secret bench-app-secret --connections "$CONNS" \
    --duration "$2" --mix "$MIX" "${@:3}"
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
ok() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])['ok'])" "$1"; }

PA=$(start "$A" 18401 "$WORK/a")
PB=$(start "$B" 18402 "$WORK/b")
for port in 18401 18402; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
done
load 18401 4 >/dev/null & load 18402 4 >/dev/null; wait
CA=$(cpu "$PA"); CB=$(cpu "$PB"); WA=$(written "$PA"); WB=$(written "$PB")
load 18401 "$SECS" --json >"$WORK/a/out" & load 18402 "$SECS" --json >"$WORK/b/out"; wait
CA2=$(cpu "$PA"); CB2=$(cpu "$PB"); WA2=$(written "$PA"); WB2=$(written "$PB")
peak() { awk '/^VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
echo "peak RSS: A $(peak "$PA") MB, B $(peak "$PB") MB"
python3 - "$(ok "$WORK/a/out")" "$(ok "$WORK/b/out")" "$CA" "$CA2" "$CB" "$CB2" "$SECS" "$(getconf CLK_TCK)" \
  "$WA" "$WA2" "$WB" "$WB2" <<'PY'
import sys
oa, ob, ca, ca2, cb, cb2, secs, tck, wa, wa2, wb, wb2 = map(float, sys.argv[1:])
a = (ca2 - ca) / tck * 1e6 / oa
b = (cb2 - cb) / tck * 1e6 / ob
ka = (wa2 - wa) / 1024 / oa
kb = (wb2 - wb) / 1024 / ob
print(f"A {oa / secs:7.0f}/s {a:6.1f} µs {ka:5.2f} KB/delivery   "
      f"B {ob / secs:7.0f}/s {b:6.1f} µs {kb:5.2f} KB/delivery   B÷A CPU {b / a:.3f} KB {kb / ka:.3f}")
PY
kill -TERM "$PA" "$PB"
wait "$PA" "$PB" 2>/dev/null || true
