#!/usr/bin/env bash
# Forwarding under sustained ingest: ctwa-leads as shipped, with one [[forward]] destination
# that answers in 5 ms (bench/receiver.js), against the same server without forwarding, in the
# same run, and beside the Node peer (bench/peer, ingest only), on production-shaped traffic
# (examples/loadgen's default mix: every contact its own wa_id and user_id, every click its own
# ctwa_clid, 50 ads, ~80% referral messages, ~10% plain, ~10% status-only; 64 connections). The outbox's
# pending count is sampled every second from the leads database; after the run, the time until
# every lead was delivered. Runs: both at the most the server takes, then forwarding at each of
# RATES (sustained deliveries/s, paced by the load generator): the queue is bounded at a rate
# when its pending count stops growing. Prints one table and the ratio of ingest with and
# without forwarding at full load. Each run also reports the CPU time its server used (utime +
# stime of every process and thread, over the measured run: ctwa-leads, or the peer's three
# processes) per acknowledged delivery, and the destination's per request: on one machine they
# share the cores, so these say what a rate costs.
#
#   bench/forward.sh [seconds, default 30] [warm-up seconds, default 10]
#   MAX_IN_FLIGHT=128 (the destination's concurrency), DELAY_MS=5, RATES="4000 6000"
# A destination takes at most max_in_flight ÷ (time per request) deliveries/s (Little's law);
# with the two cores busy, a 5 ms answer takes ~15 ms end to end, so 64 caps it near 4,300/s.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${1:-30}
WARMUP=${2:-10}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-128}
DELAY_MS=${DELAY_MS:-5}
RATES=${RATES:-4000 6000}
PORT=${BENCH_PORT:-18080}
RPORT=${RECEIVER_PORT:-19000}
URL="http://127.0.0.1:$PORT"
SECRET=bench-app-secret
TOKEN=bench-api-token
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true
cargo build --release --locked --quiet --bin ctwa-leads --example loadgen
if [ ! -d bench/peer/node_modules/better-sqlite3/build ]; then
  # better-sqlite3 builds from source against the local Node headers (no download).
  (cd bench/peer && npm_config_nodedir="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")" \
    npm install --no-audit --no-fund --silent)
fi

config() { # with-forwarding?
  bench_config "$PORT" "sqlite://$WORK/bench.db" >"$WORK/config.toml"
  if [ "$1" = yes ]; then
    cat >> "$WORK/config.toml" <<TOML
[[forward]]
name = "bench"
url = "http://127.0.0.1:$RPORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
max_in_flight = $MAX_IN_FLIGHT
TOML
  fi
}

pending() {
  python3 - "$WORK/bench.db" <<'PY'
import sqlite3, sys
try:
    c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)
    print(c.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0])
except Exception:
    print(0)
PY
}

. bench/cpu.sh

declare -A ROW RPS
run() { # key yes|no|peer (forwarding on, off, or the Node peer instead) [deliveries/s]
  local key=$1 fwd=$2 rate=${3:-0}
  rm -rf "$WORK"/bench*.db* "$WORK"/peer.db*
  config "$fwd"
  node bench/receiver.js "$RPORT" "$DELAY_MS" >"$WORK/receiver.log" 2>&1 &
  local receiver=$!
  if [ "$fwd" = peer ]; then
    node bench/peer/server.js "$PORT" "$SECRET" "$WORK/peer.db" 2 >"$WORK/server.log" 2>&1 &
  else
    RUST_LOG=warn ./target/release/ctwa-leads serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
  fi
  local server=$!
  for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 0.5
  ./target/release/examples/loadgen --url "$URL" --connections 64 --duration "$WARMUP" \
    --rate "$rate" --secret "$SECRET" >/dev/null
  local samples="$WORK/pending.txt"; : >"$samples"
  ( while true; do pending >>"$samples"; sleep 1; done ) &
  local sampler=$!
  local procs; procs="$server $({ pgrep -P "$server" || true; } | tr '\n' ' ')"
  local cpu0 rcpu0 got0
  cpu0=$(cpu_ticks $procs); rcpu0=$(cpu_ticks "$receiver")
  got0=$(curl -fs "http://127.0.0.1:$RPORT/count" || echo '{"requests": 0}')
  ./target/release/examples/loadgen --url "$URL" --connections 64 --duration "$DURATION" \
    --rate "$rate" --secret "$SECRET" --json --label "$key" >"$WORK/out.txt"
  local cpu1 rcpu1 got1
  cpu1=$(cpu_ticks $procs); rcpu1=$(cpu_ticks "$receiver")
  got1=$(curl -fs "http://127.0.0.1:$RPORT/count" || echo '{"requests": 0}')
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  local line; line=$(tail -1 "$WORK/out.txt")
  RPS[$key]=$(python3 -c "import json; print(round(json.loads('''$line''')['rps']))")
  local p99; p99=$(python3 -c "import json; print(json.loads('''$line''')['p99_ms'])")
  local cost; cost=$(python3 - "$line" "$cpu0" "$cpu1" "$rcpu0" "$rcpu1" "$got0" "$got1" "$CLK_TCK" <<'PY'
import json, sys
run = json.loads(sys.argv[1])
cpu0, cpu1, r0, r1 = (float(x) / float(sys.argv[8]) for x in sys.argv[2:6])
sent = json.loads(sys.argv[7])["requests"] - json.loads(sys.argv[6])["requests"]
server = (cpu1 - cpu0) * 1e6 / max(1, run["ok"])
receiver = f"{(r1 - r0) * 1e6 / sent:.0f}" if sent > 0 else "–"
print(f"{server:.0f} | {receiver}")
PY
)
  local at_end; at_end=$(pending)
  local start; start=$(date +%s.%N)
  local drain="-"
  if [ "$fwd" = yes ]; then
    for _ in $(seq 1200); do [ "$(pending)" = 0 ] && break; sleep 0.1; done
    drain=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  fi
  local stats; stats=$(python3 - "$samples" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]).read().split() or ["0"])
print(f"{v[len(v)//2]} | {v[min(len(v)-1, int(len(v)*0.99))]} | {v[-1]}")
PY
)
  local got; got=$(curl -fs "http://127.0.0.1:$RPORT/count" || echo '{}')
  local leads; leads=$(python3 -c "
import sqlite3
try: print(sqlite3.connect('file:$WORK/bench.db?mode=ro', uri=True).execute('SELECT COUNT(*) FROM leads').fetchone()[0])
except Exception: print('-')")
  ROW[$key]="| $key | ${RPS[$key]} | $p99 | $cost | $stats | $at_end | $drain | $leads | $got |"
  kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
  kill "$receiver" 2>/dev/null; wait "$receiver" 2>/dev/null || true
}

run peer peer
run plain no
run forwarding yes
for r in $RATES; do run "forwarding@$r/s" yes "$r"; done
echo
echo "| run | deliveries/s | p99 ms | server CPU µs / delivery | destination CPU µs / request | pending p50 | pending p99 | pending max | pending at end | all delivered after s | leads | receiver |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
echo "${ROW[peer]}"
echo "${ROW[plain]}"
echo "${ROW[forwarding]}"
for r in $RATES; do echo "${ROW[forwarding@$r/s]}"; done
python3 -c "print(f'ingest with forwarding ÷ without: {${RPS[forwarding]} / ${RPS[plain]}:.2f}')"
python3 -c "print(f'÷ the Node peer: without forwarding {${RPS[plain]} / ${RPS[peer]}:.2f}, with {${RPS[forwarding]} / ${RPS[peer]}:.2f}')"
for r in $RATES; do
  python3 -c "print(f'paced $r/s ÷ the Node peer: {${RPS[forwarding@$r/s]} / ${RPS[peer]}:.2f}')"
done
