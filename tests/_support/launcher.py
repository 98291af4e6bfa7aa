"""A stand-in for Indigo's local launcher, on a loopback port.

It takes a request only with a bearer the emulator would take (as the real launcher
checks its bearer with the API), records what it was sent, and answers a profile
start with the envelope and the port a WebDriver would listen on. It starts nothing.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from indigo_auth.testing import IndigoEmulator

__all__ = ["FakeLauncher", "Seen"]

_START = re.compile(r"/api/v2/profile/f/(?P<folder>[^/]+)/p/(?P<profile>[^/]+)/start")
WEBDRIVER_PORT = "45678"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: bytes
    status: int


class FakeLauncher:
    """``with FakeLauncher(emulator) as url:``; :attr:`seen` lists the requests."""

    def __init__(self, emulator: IndigoEmulator) -> None:
        self.emulator = emulator
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        launcher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                authorization = self.headers.get("Authorization")
                token = (authorization or "").removeprefix("Bearer ").strip()
                url = urlsplit(self.path)
                match = _START.fullmatch(url.path)
                if not token or not launcher.emulator.is_valid(token):
                    status, data, message = 401, None, "unauthorized"
                elif match is not None:
                    status, message = 200, "Profile started"
                    data = {"id": match["profile"], "port": WEBDRIVER_PORT}
                else:
                    status, data, message = 200, {"echo": body.decode()}, "ok"
                with launcher._lock:
                    launcher.seen.append(
                        Seen(
                            self.command, url.path, parse_qs(url.query), authorization, body, status
                        )
                    )
                envelope = {
                    "status": {
                        "error_code": "" if status == 200 else "UNAUTHORIZED_REQUEST",
                        "http_code": status,
                        "message": message,
                    },
                    "data": data,
                }
                raw = json.dumps(envelope).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake launcher", daemon=True
        )

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
