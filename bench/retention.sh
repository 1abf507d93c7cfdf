#!/usr/bin/env bash
# Acknowledgements while retention runs over a large log: a log of COUNT recent entries
# (projected, none old enough to delete), retention looking every 2 s instead of every hour,
# and 16 connections of production-shaped load (--mix real) for 20 s. Each retention pass
# reads the log's oldest entries under the write lock that acknowledgements commit under, so
# a pass that scans far shows as the acknowledgements' max. The page cache is dropped first
# when this runs as root, so the first pass reads from disk, as the hourly one would.
#
#   bench/retention.sh [server binary, default target/release/ctwa-leads (built)] [COUNT, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=$(bench_server "${1:-}")
COUNT=${2:-1000000}
PORT=${BENCH_PORT:-18083}
LOADGEN=$(bench_loadgen)
bench_work
{ bench_config "$PORT" "sqlite://$WORK/db/leads.db"; cat <<TOML
[retention]
raw_events_days = 30
interval_secs = 2
TOML
} >"$WORK/config.toml"
"$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
bench_up "$PORT"; kill -TERM $!; wait $! || true
# Entries an hour old with ~700-byte bodies (about what a compressed delivery takes), all
# projected: the watermark is set past them, so the server does not read them at start.
python3 - "$WORK/db" "$COUNT" <<'PY'
import os, sqlite3, sys, time
db, count = sys.argv[1], int(sys.argv[2])
log, at = sqlite3.connect(f"{db}/leads-log.db"), int(time.time() * 1000) - 3_600_000
for start in range(0, count, 10_000):
    rows = [(i + 1, at, os.urandom(700)) for i in range(start, min(start + 10_000, count))]
    log.executemany("INSERT INTO log VALUES (?, ?, 0, 3, 0, 0, ?)", rows)
    log.commit()
log.execute("PRAGMA wal_checkpoint(TRUNCATE)")
leads = sqlite3.connect(f"{db}/leads.db")
leads.execute("UPDATE projection SET watermark = ?", (count,))
leads.commit()
PY
sync
[ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true
"$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
bench_up "$PORT"
"$LOADGEN" --url "http://127.0.0.1:$PORT" --secret bench-app-secret --connections 16 \
  --duration 20 --warmup 3 --mix real | tail -3
