#!/usr/bin/env bash
# Start-up over an earlier version's raw deliveries: an earlier version kept every delivery's
# body, uncompressed, in an `events` table of the leads database, and the first start of this
# version moves them into the log. This writes such a table (COUNT deliveries, each a batch of
# 1,000 plain messages, ~2 MB), starts the server on it once, and prints how long start-up
# took, its peak RSS (VmHWM) and what was moved.
#
#   bench/legacy_move.sh [server binary, default target/release/ctwa-leads (built)] [COUNT, default 600]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=$(bench_server "${1:-}")
COUNT=${2:-600}
PORT=${BENCH_PORT:-18082}
bench_work
bench_config "$PORT" "sqlite://$WORK/db/leads.db" >"$WORK/config.toml"
# The schema as it is now, which still has the (empty) `events` table; then the old rows.
"$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
bench_up "$PORT"; kill -TERM $!; wait $! || true
python3 - "$WORK/db/leads.db" "$COUNT" <<'PY'
import json, sqlite3, sys
db, count = sqlite3.connect(sys.argv[1]), int(sys.argv[2])
for i in range(1, count + 1):
    messages = [{"from": "4915100000000", "id": f"wamid.legacy{i}-{k}", "timestamp": "1732262400",
                 "type": "text", "text": {"body": "x" * 2000}} for k in range(1000)]
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "messages": messages}}]}]})
    db.execute("INSERT INTO events (id, received_at, status, lead_count, body) "
               "VALUES (?, 1732262400000, 'parsed', 0, ?)", (i, body.encode()))
db.commit()
PY
sync
started=$(date +%s.%N)
"$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
SERVER=$!
bench_up "$PORT"
python3 - "$started" "$(awk '/^VmHWM/{print $2}' /proc/$SERVER/status)" "$WORK/db" <<'PY'
import sqlite3, sys, time
started, hwm_kb, db = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
moved = sqlite3.connect(f"{db}/leads-log.db").execute("SELECT COUNT(*) FROM log").fetchone()[0]
left = sqlite3.connect(f"{db}/leads.db").execute("SELECT COUNT(*) FROM events").fetchone()[0]
print(f"up after {time.time() - started:.1f} s, peak RSS {hwm_kb / 1024:.0f} MB; "
      f"{moved} deliveries in the log, {left} left in events")
PY
kill -TERM $SERVER; wait $SERVER || true
