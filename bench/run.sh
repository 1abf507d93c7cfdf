#!/usr/bin/env bash
# Ingest benchmark: builds release, then for the ceiling (verify + parse, no storage) and the
# durable configuration (synchronous=FULL) at 16 and 64 connections, starts the server on a
# fresh temporary database, drives it with examples/loadgen (which checks exactly-once
# storage), and prints one table with durable ÷ ceiling. Also reports resident memory idle and
# under load, and the acknowledgement time of 1000-message deliveries.
#
#   bench/run.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
PORT=${BENCH_PORT:-18080}
URL="http://127.0.0.1:$PORT"
SECRET=bench-app-secret
TOKEN=bench-api-token
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build --release --locked --quiet --bin ctwa-leads --example loadgen

cat > "$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[database]
url = "sqlite://$WORK/bench.db"
[webhook]
verify_token = "bench-verify-token"
app_secrets = ["$SECRET"]
[api]
token = "$TOKEN"
[graph]
access_token = "bench-graph-token"
waba_id = "1"
TOML

start() { # ceiling_mode
  rm -f "$WORK"/bench.db*
  CTWA_INGEST__CEILING_MODE=$1 RUST_LOG=warn ./target/release/ctwa-leads serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do ./target/release/ctwa-leads healthcheck --url "$URL/healthz" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start:"; cat "$WORK/server.log"; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; }
rss_mb() { echo "$(( $(ps -o rss= -p "$SERVER") / 1024 ))"; }

declare -A RPS P50 P99 MAX CHECK RSS
for mode in ceiling durable; do
  for conns in 16 64; do
    if [ "$mode" = ceiling ]; then start true; check=(); else start false; check=(--api-token "$TOKEN"); fi
    [ "$mode$conns" = durable16 ] && IDLE_RSS=$(rss_mb)
    ./target/release/examples/loadgen --url "$URL" --connections "$conns" --duration "$DURATION" \
      --secret "$SECRET" "${check[@]}" --json --label "$mode$conns" >"$WORK/out.txt" &
    LOADGEN=$!
    sleep $(( DURATION / 2 )); peak=$(rss_mb)
    wait "$LOADGEN" || { cat "$WORK/out.txt"; echo "loadgen failed"; exit 1; }
    line=$(tail -1 "$WORK/out.txt")
    key="$mode$conns"
    RPS[$key]=$(python3 -c "import json,sys; print(round(json.loads(sys.argv[1])['rps']))" "$line")
    for f in p50 p99 max; do
      v=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['${f}_ms'])" "$line")
      case $f in p50) P50[$key]=$v;; p99) P99[$key]=$v;; max) MAX[$key]=$v;; esac
    done
    CHECK[$key]=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['check'].split(' (')[0])" "$line")
    RSS[$key]=$peak
    stop
  done
done

start false
BATCH=$(./target/release/examples/loadgen --url "$URL" --secret "$SECRET" --batch-probes 20)
stop

echo
echo "| configuration | connections | deliveries/s | p50 ms | p99 ms | max ms | RSS MB | exactly-once |"
echo "|---|---|---|---|---|---|---|---|"
for key in ceiling16 ceiling64 durable16 durable64; do
  echo "| ${key%%[0-9]*} | ${key##*[a-z]} | ${RPS[$key]} | ${P50[$key]} | ${P99[$key]} | ${MAX[$key]} | ${RSS[$key]} | ${CHECK[$key]} |"
done
for c in 16 64; do
  python3 -c "print(f'durable ÷ ceiling at $c connections: {${RPS[durable$c]} / ${RPS[ceiling$c]}:.2f}')"
done
echo "idle RSS: ${IDLE_RSS} MB"
echo "$BATCH"
