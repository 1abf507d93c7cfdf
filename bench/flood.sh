#!/usr/bin/env bash
# Overload: floods the durable server with far more concurrent deliveries than
# ingest.max_in_flight admits, samples its resident memory, then checks it serves normally
# right after. Prints the flood's rate, the 503 share, peak RSS and the first clean run after.
#
#   bench/flood.sh [connections, default 1500] [seconds, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-1500}
DURATION=${2:-8}
PORT=${BENCH_PORT:-18081}
URL="http://127.0.0.1:$PORT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true
cargo build --release --locked --quiet --bin ctwa-leads --example loadgen
cat > "$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[database]
url = "sqlite://$WORK/flood.db"
[webhook]
verify_token = "v"
app_secrets = ["flood-secret"]
[api]
token = "flood-token"
[graph]
access_token = "g"
waba_id = "1"
[ingest]
max_in_flight = ${MAX_IN_FLIGHT:-256}
TOML
RUST_LOG=error ./target/release/ctwa-leads serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 50); do ./target/release/ctwa-leads healthcheck --url "$URL/healthz" 2>/dev/null && break; sleep 0.1; done
echo "idle RSS: $(( $(ps -o rss= -p $SERVER) / 1024 )) MB"
( peak=0; while kill -0 $SERVER 2>/dev/null; do r=$(ps -o rss= -p $SERVER || echo 0); [ "$r" -gt "$peak" ] && peak=$r && echo $peak > "$WORK/peak"; sleep 0.2; done ) &
echo "== flood: $CONNS connections for $DURATION s (max_in_flight ${MAX_IN_FLIGHT:-256})"
./target/release/examples/loadgen --url "$URL" --connections "$CONNS" --duration "$DURATION" \
  --secret flood-secret --api-token flood-token
echo "peak RSS during the flood: $(( $(cat "$WORK/peak") / 1024 )) MB"
echo "== right after: 16 connections for 3 s"
./target/release/examples/loadgen --url "$URL" --connections 16 --duration 3 --secret flood-secret
kill -TERM $SERVER; wait $SERVER
