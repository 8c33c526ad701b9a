"""Recording webhook receiver for scripts/compose_e2e.sh (test only).

POST <any path>: the body is recorded with its path (JSON when it parses)
and answered like the real service: Slack-like paths get 200 "ok", Discord-
like paths 204. GET /records: every record as a JSON array. GET /healthz: 200.
Paths carry the secret part of the webhook URL, so nothing is logged per
request; only the count of records goes to stdout.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDS = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server_version = "opsloop-e2e-receiver"

    def log_message(self, format, *args):  # noqa: A002 - quiet on purpose
        pass

    def _send(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        if code != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if code != 204:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        if self.path == "/healthz":
            self._send(200, b"ok")
        elif self.path == "/records":
            with LOCK:
                body = json.dumps(RECORDS).encode()
            self._send(200, body, "application/json")
        else:
            self._send(404, b"not found")

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        service = "discord" if "/discord" in self.path else "slack" if "/slack" in self.path else "other"
        with LOCK:
            RECORDS.append({"service": service, "path": self.path, "received_at": time.time(),
                            "content_type": self.headers.get("Content-Type", ""), "body": body})
            count = len(RECORDS)
        print(f"recorded {service} message #{count}", flush=True)
        if service == "discord":
            self._send(204)
        else:
            self._send(200, b"ok")


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
