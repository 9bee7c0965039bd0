"""The HTTP entry we did not build, kept to measure against: the standard library's threaded HTTP server in its
own process, each request handed to the orchestrator through the Python gateway (one ``private()`` actor-system
endpoint per thread). ``bin/bench --compare-entry`` runs it next to the HTTP shim; README.rst quotes the result.

Not part of the product: it implements only ``POST /v1/orchestrate`` and only well-formed requests.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from system.gateway import Gateway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gateway: Gateway

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        result = self.gateway.orchestrate(request["service"], request["payload"], request.get("request_id"),
                                          request.get("timeout", 30))
        body: dict[str, Any] = {"request_id": result.request_id, "service": result.service, "status": result.status}
        if result.ok:
            body.update(result=result.result, duration_ms=result.duration_ms)
        else:
            body["error"] = {"code": result.error_code, "message": result.error_message}
        data = json.dumps(body).encode()
        self.send_response(result.http_status if not result.ok else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-ID", result.request_id)
        self.end_headers()
        self.wfile.write(data)


def main() -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with Gateway.connect(admin_port=args.admin_port) as gateway:
        _Handler.gateway = gateway
        server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
        server.daemon_threads = True
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
