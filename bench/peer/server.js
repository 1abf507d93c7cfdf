// Benchmark peer only (never run in CI): the ~60-line receiver the performance issue measured.
// whatsapp-api-js 6.3 on node:http verifies X-Hub-Signature-256 and dispatches messages;
// better-sqlite3 stores referral messages in one table keyed by wamid (no other index, no raw
// body), journal_mode=WAL, synchronous=NORMAL; a 2-process cluster.
//   node server.js PORT APP_SECRET DB_PATH [WORKERS=2]
import cluster from "node:cluster";
import { createServer } from "node:http";
import Database from "better-sqlite3";
import { WhatsAppAPI } from "whatsapp-api-js/middleware/node-http";

const [port, appSecret, dbPath, workers = "2"] = process.argv.slice(2);

function open() {
  const db = new Database(dbPath);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.pragma("busy_timeout = 5000");
  return db;
}

if (cluster.isPrimary) {
  open().exec(`CREATE TABLE IF NOT EXISTS leads (
    wamid TEXT PRIMARY KEY, wa_id TEXT, name TEXT, source_id TEXT, ctwa_clid TEXT,
    ref TEXT, headline TEXT, received_at INTEGER)`);
  for (let i = 0; i < +workers; i++) cluster.fork();
} else {
  const db = open();
  const insert = db.prepare(`INSERT OR IGNORE INTO leads
    (wamid, wa_id, name, source_id, ctwa_clid, ref, headline, received_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)`);
  const api = new WhatsAppAPI({ token: "unused", appSecret, v: "v21.0", secure: true });
  api.on.message = ({ from, name, message }) => {
    const r = message.referral;
    if (r) insert.run(message.id, from, name ?? null, r.source_id ?? null, r.ctwa_clid ?? null,
      r.ref ?? null, r.headline ?? null, Date.now());
  };
  api.on.status = () => {};
  createServer(async (req, res) => {
    if (req.method === "POST" && req.url === "/webhook") {
      res.statusCode = await api.handle_post(req);
      res.end();
    } else if (req.url === "/healthz" || req.url === "/readyz") {
      res.end("ok");
    } else {
      res.statusCode = 404;
      res.end();
    }
  }).listen(+port, "127.0.0.1");
}
