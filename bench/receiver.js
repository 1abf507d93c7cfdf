// Benchmark only: a forwarding destination that answers 200 after a fixed delay (default 5 ms),
// counts requests and distinct webhook-ids, and reports them at GET /count.
//   node bench/receiver.js PORT [DELAY_MS]
import http from "node:http";

const port = Number(process.argv[2] ?? 19000);
const delay = Number(process.argv[3] ?? 5);
let requests = 0;
const ids = new Set();

http
  .createServer((req, res) => {
    if (req.method === "GET") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ requests, distinct: ids.size }));
      return;
    }
    req.on("data", () => {});
    req.on("end", () => {
      requests += 1;
      ids.add(req.headers["webhook-id"]);
      setTimeout(() => {
        res.writeHead(200, { "content-length": "0" });
        res.end();
      }, delay);
    });
  })
  .listen(port, "127.0.0.1");
