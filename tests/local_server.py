"""A small HTTP server on 127.0.0.1, in a thread, for tests whose code under test calls out over HTTP
(an agent's endpoint, a webhook receiver)."""

import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """Answers every POST with `respond(headers, body)` -> (status, content type, body bytes); `headers` is the
    request's (names in any case). `close()` stops it."""

    def __init__(self, respond: Callable[[Message, bytes], tuple[int, str, bytes]], *, path: str = "/"):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                status, content_type, data = respond(self.headers,
                                                     self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
