"""The token servers every peer is driven against, in a process of their own.

``python benchmarks/servers.py`` serves, on one loopback port, the Indigo emulator
(``/user/...``, ``/workspace/...``), the OAuth server of ``oauth_server.py``
(``/oauth/...``) and a control API (``/_bench/...``) that sets the token lifetime and
latencies, resets and reads the counters, and lists when each token request arrived
and left. It prints ``URL <base url>`` once it listens, and exits when its standard
input closes (when the benchmark that started it ends, however it ends).

The servers run in their own process so that a peer that blocks its event loop
(httpx-auth fetches tokens with a synchronous client) cannot freeze the server too,
and so that the server's work does not share a GIL with the client's.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

__all__ = ["CLIENT_SECRET", "PASSWORD", "ServerProcess"]

PASSWORD = "bench-password"
CLIENT_SECRET = "bench-secret"
_TOKEN_PATHS = frozenset({"/user/signin", "/user/refresh_token", "/oauth/token"})
_START_TIMEOUT = 20.0
_MAX_EVENTS = 200_000


def _build_app() -> Any:
    from indigo_auth.testing import Fault, IndigoEmulator
    from oauth_server import OAuthServer

    emulator = IndigoEmulator(rate_limit=None, automation_rate_limit=None)
    oauth = OAuthServer(clients={})
    events: list[tuple[str, float, float]] = []
    settings = {"token_latency": 0.0, "resource_latency": 0.0}

    def configure(token_lifetime: float, token_latency: float, resource_latency: float) -> None:
        emulator.token_lifetime = token_lifetime
        emulator.clear_faults()
        if token_latency > 0:
            emulator.inject("signin", Fault.latency(token_latency))
            emulator.inject("refresh_token", Fault.latency(token_latency))
        if resource_latency > 0:
            emulator.inject("folders", Fault.latency(resource_latency))
        oauth.token_lifetime = token_lifetime
        oauth.token_latency = token_latency
        oauth.resource_latency = resource_latency
        settings.update(token_latency=token_latency, resource_latency=resource_latency)

    def counters() -> dict[str, Any]:
        c = emulator.counters
        requests = dict(c.requests)
        return {
            "indigo": {
                "sign_ins": c.sign_ins,
                "refreshes": c.refreshes,
                "token_requests": requests.get("signin", 0) + requests.get("refresh_token", 0),
                "unauthorized": c.unauthorized,
                "folders": requests.get("folders", 0),
            },
            "oauth": oauth.counters.as_dict(),
            "events": list(events),
        }

    def control(path: str, query: dict[str, str]) -> object:
        if path == "/_bench/configure":
            configure(
                float(query["token_lifetime"]),
                float(query["token_latency"]),
                float(query["resource_latency"]),
            )
            return settings
        if path == "/_bench/account":
            email = query["email"]
            try:
                emulator.account(email)
            except KeyError:
                emulator.add_account(email, PASSWORD)
            oauth.clients[email] = CLIENT_SECRET
            return {"email": email}
        if path == "/_bench/reset":
            emulator.reset_counters()
            oauth.reset()
            events.clear()
            return {}
        if path == "/_bench/counters":
            return counters()
        if path == "/_bench/issue":
            lifetime = float(query["lifetime"])
            if query["server"] == "oauth":
                return {"token": oauth.issue(lifetime)}
            return {"token": emulator.issue_token(query["email"], lifetime=lifetime)}
        if path == "/_bench/revoke_oauth":
            oauth.revoke(query["token"])
            return {}
        raise KeyError(path)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await emulator(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/_bench/"):
            query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
            try:
                status, data = 200, control(path, query)
            except (KeyError, ValueError) as exc:
                status, data = 400, {"error": repr(exc)}
            body = json.dumps(data).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        target = oauth if path.startswith("/oauth/") else emulator
        if path not in _TOKEN_PATHS:
            await target(scope, receive, send)
            return
        started = time.time()
        try:
            await target(scope, receive, send)
        finally:
            if len(events) < _MAX_EVENTS:
                events.append((path, started, time.time()))

    return app


def _serve() -> None:
    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    app = _build_app()
    # IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP;
    # with proto 0 every answer waits ~40 ms on Nagle and delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=16384,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)

    def watch_stdin() -> None:
        # The parent holds our stdin open; EOF means it is gone.
        sys.stdin.buffer.read()
        server.should_exit = True

    threading.Thread(target=watch_stdin, daemon=True).start()

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(int(_START_TIMEOUT / 0.01)):
            if server.started:
                break
            await asyncio.sleep(0.01)
        print(f"URL http://127.0.0.1:{port}", flush=True)
        await task

    asyncio.run(main())


class ServerProcess:
    """The server process, seen from the benchmark: its URL and its control API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process
        self._control = httpx.AsyncClient(base_url=url, timeout=30.0)

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[ServerProcess]:
        here = Path(__file__).resolve().parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(here), *filter(None, [env.get("PYTHONPATH")])])
        process = subprocess.Popen(
            [sys.executable, str(here / "servers.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            url = _read_url(process)
            yield cls(url, process)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    async def _get(self, path: str, **query: object) -> Any:
        response = await self._control.get(path, params={k: str(v) for k, v in query.items()})
        response.raise_for_status()
        return response.json()

    async def configure(
        self, *, token_lifetime: float, token_latency: float, resource_latency: float
    ) -> None:
        await self._get(
            "/_bench/configure",
            token_lifetime=token_lifetime,
            token_latency=token_latency,
            resource_latency=resource_latency,
        )

    async def account(self, email: str) -> None:
        await self._get("/_bench/account", email=email)

    async def reset(self) -> None:
        await self._get("/_bench/reset")

    async def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._get("/_bench/counters")
        return result

    async def token_requests(self) -> int:
        """Token requests that reached either server since the last reset."""
        c = await self.counters()
        return int(c["indigo"]["token_requests"]) + int(c["oauth"]["token_requests"])

    async def issue(self, *, server: str, email: str, lifetime: float) -> str:
        result = await self._get("/_bench/issue", server=server, email=email, lifetime=lifetime)
        return str(result["token"])

    async def revoke(self, *, server: str, token: str) -> None:
        if server == "oauth":
            await self._get("/_bench/revoke_oauth", token=token)
            return
        response = await self._control.post(
            "/user/revoke_tokens",
            json={"token": token},
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()

    async def aclose(self) -> None:
        await self._control.aclose()


def _read_url(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    text = line.decode().strip()
    if not text.startswith("URL "):
        process.kill()
        raise RuntimeError(f"the token servers did not start (said {text!r})")
    return text[4:]


if __name__ == "__main__":
    _serve()
