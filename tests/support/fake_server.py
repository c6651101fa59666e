"""A scripted HTTP(S) server on loopback, for what a real Prefect server cannot be made to
do (echo the Authorization header back, answer with a login page, present a certificate
runner does not trust) while runner runs as a real process against it.

``answer`` gets each request and returns ``(status, headers, body)``; ``requests`` keeps
what was asked. ``tls=True`` serves HTTPS with a fresh self-signed certificate for
127.0.0.1 (made with the ``openssl`` command; its path is ``cert_file``).
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


def json_answer(status: int, data: Any, **headers: str) -> Answer:
    return status, {"content-type": "application/json", **headers}, json.dumps(data).encode()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


class FakeServer:
    def __init__(self, answer: Callable[[Seen], Answer], *, tls: bool = False) -> None:
        self.answer = answer
        self.requests: list[Seen] = []
        self._folder = Path(tempfile.mkdtemp(prefix="runner-fake-"))
        self.cert_file: Path | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                server.requests.append(seen)
                status, headers, body = server.answer(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if tls:
            cert, key = make_certificate(self._folder)
            self.cert_file = cert
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/api"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
        shutil.rmtree(self._folder, ignore_errors=True)
