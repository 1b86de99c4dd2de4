#!/usr/bin/env python3
"""An OTLP/HTTP sink for benchmarks: answers every POST /v1/traces with 200
and counts requests and bytes (it does not decode them; the test suite's
receiver does). usage: otlp_sink.py PORT"""

import http.server
import sys
import threading

lock = threading.Lock()
totals = {"requests": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        with lock:
            totals["requests"] += 1
            totals["bytes"] += length
            print(f"{totals['requests']} exports, {totals['bytes']} bytes", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
