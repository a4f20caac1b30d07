"""A real HTTP server on 127.0.0.1 for zoo tests: serves files, honours Range, counts requests,
and can cut a transfer short the way a dropped connection does."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServedFile:
    """One file: its bytes, and how the server misbehaves with it."""

    data: bytes
    cut_first_at: int | None = None  # first GET: send this many bytes, then close
    ignore_range: bool = False  # answer Range requests with the whole file (200)
    wrong_range: bool = False  # answer Range requests with 206 but the whole file from byte 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class ZooServer:
    """``files`` by URL path; ``requests`` lists ``(path, Range header)`` of every GET."""

    files: dict[str, ServedFile] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def count(self, path: str) -> int:
        return sum(p == path for p, _ in self.requests)


def start(server_state: ZooServer) -> ThreadingHTTPServer:
    """Serve ``server_state`` on a free port of 127.0.0.1 (``server_state.url`` is set)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            rng = self.headers.get("Range")
            server_state.requests.append((self.path, rng))
            served = server_state.files.get(self.path)
            if served is None:
                self.send_error(404)
                return
            data, start_at = served.data, 0
            if rng and not served.ignore_range:
                start_at = int(rng.removeprefix("bytes=").split("-")[0])
                if start_at >= len(data):
                    self.send_error(416)
                    return
            resumed = bool(start_at)
            if served.wrong_range:
                start_at = 0
            body = data[start_at:]
            self.send_response(206 if resumed else 200)
            if start_at:
                self.send_header("Content-Range", f"bytes {start_at}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if served.cut_first_at is not None:
                cut, served.cut_first_at = served.cut_first_at, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd
