#!/usr/bin/env bash
# Pre-auth starvation at scale: starts the release server, runs bench/trickle.py with N trickling
# attackers against a stream of signed deliveries, and reports latency and the server's RSS.
#
#   bench/trickle.sh [attackers, default 2000] [deliveries, default 500]
set -euo pipefail
cd "$(dirname "$0")/.."
ATTACKERS=${1:-2000}
DELIVERIES=${2:-500}
PORT=${BENCH_PORT:-18082}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true
cargo build --release --locked --quiet --bin ctwa-leads
cat > "$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[database]
url = "sqlite://$WORK/trickle.db"
[webhook]
verify_token = "v"
app_secrets = ["trickle-secret"]
[api]
token = "t"
[graph]
access_token = "g"
waba_id = "1"
TOML
RUST_LOG=error ./target/release/ctwa-leads serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 50); do ./target/release/ctwa-leads healthcheck --url "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break; sleep 0.1; done
echo "idle RSS: $(( $(ps -o rss= -p $SERVER) / 1024 )) MB"
python3 bench/trickle.py "http://127.0.0.1:$PORT" trickle-secret "$ATTACKERS" "$DELIVERIES"
echo "peak RSS: $(( $(grep VmHWM /proc/$SERVER/status | awk '{print $2}') / 1024 )) MB"
kill -TERM $SERVER; wait $SERVER
