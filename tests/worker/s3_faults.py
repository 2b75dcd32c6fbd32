"""A fault-injecting HTTP proxy in front of the real S3 server (SeaweedFS) for the integration tests.

Every request is forwarded unchanged (the SigV4 signature covers the Host header, which is passed
on as the client sent it, so the server accepts it); the first ``times`` PUTs of a key ending in
``suffix`` are answered ``503 Service Unavailable`` instead, as S3 does when it sheds load.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}
UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>injected by the test proxy</Message></Error>"
)


class FaultyS3:
    def __init__(self, backend: str, suffix: str, times: int):
        target = urlparse(backend)
        self.backend = (target.hostname, target.port)
        self.suffix, self.times = suffix, times
        self.puts: list[tuple[float, int]] = []  # (time, status) of each PUT of a matching key
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fail(self, method: str, path: str) -> bool:
        if method != "PUT" or not urlparse(path).path.endswith(self.suffix):
            return False
        with self.lock:
            fail = sum(1 for _, status in self.puts if status == 503) < self.times
            self.puts.append((time.time(), 503 if fail else 200))
            return fail

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered for boto3's PUTs

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._fail(self.command, self.path):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(UNAVAILABLE)))
                    self.end_headers()
                    self.wfile.write(UNAVAILABLE)
                    return
                conn = http.client.HTTPConnection(*proxy.backend, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
