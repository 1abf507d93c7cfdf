#!/usr/bin/env python3
"""A stand-in for Graph's WABA edges, for the API contract check (scripts/contract-check).

Answers the shapes Graph answers on success: it checks nothing, so every request that ctwa-leads
lets through gets a well-formed reply. Usage: fake-graph.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Graph(BaseHTTPRequestHandler):
    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drain(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def do_GET(self):
        if "welcome_message_sequences" in self.path:
            self._answer([])
        else:
            self._answer({"data": [], "paging": {"cursors": {"before": "b", "after": "a"}}})

    def do_POST(self):
        self._drain()
        if "welcome_message_sequences" in self.path:
            self._answer({"sequence_id": "186473890"})
        else:
            self._answer({"id": "594425479261596", "status": "PENDING", "category": "MARKETING"})

    def do_DELETE(self):
        self._drain()
        self._answer({"success": True})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Graph).serve_forever()
