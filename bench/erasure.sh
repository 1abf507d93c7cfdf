#!/usr/bin/env bash
# Acknowledgements and the projection while an erasure runs: a log grown by FILL seconds of
# production-shaped deliveries, one lead each, as fast as the server takes them (about a
# million a minute), then production-shaped load (--mix real) on
# 16 connections for 20 s, paced at RATE deliveries/s (0: as fast as the server takes), and 8 s
# in, `DELETE /v1/contacts/{wa_id}` of a person who has a lead. The erasure reads every body in
# the log, so on a large log it takes seconds; what it holds up shows in the acknowledgements'
# max and the projection lag's max. Prints the erasure's time and answer, then the load's.
#
#   bench/erasure.sh [server binary, default target/release/ctwa-leads (built)] [FILL seconds, default 60] [RATE, default 6000]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=$(bench_server "${1:-}")
FILL=${2:-60}
RATE=${3:-6000}
PORT=${BENCH_PORT:-18084}
URL="http://127.0.0.1:$PORT"
LOADGEN=$(bench_loadgen)
bench_work
bench_config "$PORT" "sqlite://$WORK/db/leads.db" >"$WORK/config.toml"
"$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
bench_up "$PORT"
"$LOADGEN" --url "$URL" --secret bench-app-secret --connections 64 --duration "$FILL" --mix real |
  sed -n 1p
# The person to erase: the first lead's wa_id (the load generator gives each lead its own).
WA_ID=$(curl -fs -H 'Authorization: Bearer bench-api-token' "$URL/v1/leads?limit=1" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["wa_id"])')
# A restarted server on a synced disk, as a database grown over weeks would be.
kill -TERM $!
wait $! || true
sync
"$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
bench_up "$PORT"
(
  sleep 8
  curl -fs -o "$WORK/erased.json" -w 'erasure: HTTP %{http_code} in %{time_total} s, ' \
    -X DELETE -H 'Authorization: Bearer bench-api-token' "$URL/v1/contacts/$WA_ID"
  cat "$WORK/erased.json"
  echo
) &
ERASER=$!
"$LOADGEN" --url "$URL" --secret bench-app-secret --connections 16 --duration 20 \
  --warmup 0 --rate "$RATE" --mix real | tail -3
wait "$ERASER"
