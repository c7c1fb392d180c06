"""A real HTTP file server on 127.0.0.1 whose faults each test chooses."""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServedFile:
    body: bytes
    status: int = 200
    honour_range: bool = True
    # Cut the connection after this many body bytes, for this many requests.
    cut_after: int | None = None
    cuts_left: int = 0
    # Sleep between chunks, so a download lasts long enough to report progress.
    chunk: int = 64 * 1024
    delay_per_chunk: float = 0.0
    redirect_to: str | None = None  # answer 302 with this Location, as the Hub does to its CDN
    # Validators of this version of the file; "auto" derives a strong ETag from the body.
    etag: str | None = "auto"
    last_modified: str | None = None

    def __post_init__(self) -> None:
        if self.etag == "auto":
            self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'

    def change(self, body: bytes, etag: str | None = "auto", **options) -> None:
        """A new version of the file is published at the same URL."""
        self.body, self.etag = body, etag
        for name, value in options.items():
            setattr(self, name, value)
        self.__post_init__()

    def matches(self, validator: str) -> bool:
        return validator in (self.etag, self.last_modified)


@dataclass
class FileServer:
    """Serves `files` by path; records every request's path and headers."""

    files: dict[str, ServedFile] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def add(self, path: str, body: bytes, **options) -> str:
        self.files[path] = ServedFile(body, **options)
        return self.url + path


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append((self.path, dict(self.headers)))
            served = server.files.get(self.path)
            if served is not None and served.redirect_to:
                self.send_response(302)
                self.send_header("Location", served.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if served is None or served.status != 200:
                status = served.status if served else 404
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, start = served.body, 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            # If-Range names the version the client holds: another version is sent whole.
            if_range = self.headers.get("If-Range")
            if match and if_range is not None and not served.matches(if_range):
                match = None
            if match and served.honour_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            if served.etag:
                self.send_header("ETag", served.etag)
            if served.last_modified:
                self.send_header("Last-Modified", served.last_modified)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            limit = len(body)
            if served.cut_after is not None and served.cuts_left > 0:
                served.cuts_left -= 1
                limit = min(limit, start + served.cut_after)
            for offset in range(start, limit, served.chunk):
                self.wfile.write(body[offset : min(offset + served.chunk, limit)])
                self.wfile.flush()
                time.sleep(served.delay_per_chunk)
            if limit < len(body):
                self.close_connection = True
                self.connection.shutdown(2)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up mid-body (a cut, a stall timeout) is what tests cause


@contextmanager
def serving(tls: ssl.SSLContext | None = None):
    state = FileServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls else "http"
    state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
