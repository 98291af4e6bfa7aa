"""Workload 3, hot path: the cost of a cached token, alone and on an httpx request.

No network: every peer's server is an in-memory handler (``httpx.MockTransport``)
that issues hour-long tokens, so what is timed is the peer's own code.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from peers import Peer, Setup
from peers.authlib_oauth2 import authlib_httpx_module
from peers.baselines import StaticToken

from .common import Contender, Settings, Table

__all__ = ["HotResult", "make_mock", "run_hot_path"]

_WORKSPACE = str(uuid.uuid4())
_TIME_CAP = 10.0  # seconds one peer may spend on one measurement


def make_mock(module: Any) -> Callable[[Any], Any]:
    """A handler for ``module.MockTransport`` answering every route of both servers."""

    def handler(request: Any) -> Any:
        path = request.url.path
        now = time.time()
        if path in ("/user/signin", "/user/refresh_token"):
            claims = {
                "sub": "bench",
                "workspace_id": _WORKSPACE,
                "iat": now,
                "exp": now + 3600,
                "jti": uuid.uuid4().hex,
            }
            token = jwt.encode(claims, "benchmark-key-not-a-secret-0123456789", "HS256")
            data = {"token": token, "refresh_token": uuid.uuid4().hex}
            body = {"status": {"error_code": "", "http_code": 200, "message": "ok"}, "data": data}
        elif path == "/oauth/token":
            body = {"access_token": uuid.uuid4().hex, "token_type": "Bearer", "expires_in": 3600}
        else:
            body = {"data": {"folders": [], "total_count": 0}}
        return module.Response(
            200, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )

    return handler


@dataclass(slots=True)
class HotResult:
    name: str
    ns_per_call: float | None
    request_us: float | None
    static_us: float | None
    note: str = ""

    @property
    def overhead(self) -> float | None:
        if self.request_us is None or self.static_us is None:
            return None
        return self.request_us / self.static_us - 1.0


async def _time_calls(
    calls: dict[str, tuple[Callable[[], Any], bool]], per_round: int, rounds: int
) -> dict[str, float]:
    """The best seconds per call of each entry of ``calls`` (a call and whether to
    await it), over ``rounds`` rounds of ``per_round`` calls, the entries interleaved
    round by round so that all of them see the same machine."""
    best = dict.fromkeys(calls, float("inf"))
    deadline = time.perf_counter() + _TIME_CAP * 2
    for _ in range(rounds):
        for name, (call, is_async) in calls.items():
            started = time.perf_counter()
            if is_async:
                for _ in range(per_round):
                    await call()
            else:
                for _ in range(per_round):
                    call()
            best[name] = min(best[name], (time.perf_counter() - started) / per_round)
        if time.perf_counter() > deadline:
            break
    return best


async def _time_requests(peer: Peer, static: Peer, requests: int) -> tuple[float, float]:
    """Median seconds per request of ``peer`` and of ``static``, interleaved one by one.

    Requests alternate so that both see the same machine, and the median of single
    requests shrugs off the preemptions a loaded machine inflicts on a few of them.
    """
    timer = time.perf_counter
    mine: list[float] = []
    theirs: list[float] = []
    deadline = timer() + _TIME_CAP
    for _ in range(requests):
        started = timer()
        await static.request()
        middle = timer()
        await peer.request()
        mine.append(timer() - middle)
        theirs.append(middle - started)
        if middle > deadline:
            break
    return statistics.median(mine), statistics.median(theirs)


def _module_of(contender: Contender) -> Any:
    return authlib_httpx_module() if contender.name == "Authlib" else httpx


async def _started(contender: Contender, email: str) -> tuple[Peer, Peer]:
    """The peer on an in-memory server, holding a cached token, and its static limit."""
    module = _module_of(contender)
    setup = Setup(
        url="http://127.0.0.1:9",
        email=email,
        margin=60.0,
        floor=30.0,
        mock=make_mock(module),
        fanout=1,
    )
    peer = contender.build(setup)
    await peer.start()
    token = await peer.get_token()
    status = await peer.request()
    if status != 200:
        raise RuntimeError(f"{contender.name}: the mock answered {status}")
    static: Peer = StaticToken(setup, token, server=contender.server)
    if module is not httpx:
        static = _AuthlibStatic(setup, token, module)
    await static.start()
    await static.request()
    return peer, static


class _AuthlibStatic(StaticToken):
    """The static-header limit on the httpx Authlib runs on (httpx2 where installed)."""

    def __init__(self, setup: Setup, token: str, module: Any) -> None:
        super().__init__(setup, token, server="oauth")
        self._module = module

    async def start(self) -> None:
        self.client = self._module.AsyncClient(
            headers={"Authorization": f"Bearer {self._token}"},
            transport=self._module.MockTransport(self.setup.mock),
        )

    async def request(self) -> int:
        response = await self.client.get(self.resource_url)
        return int(response.status_code)

    async def close(self) -> None:
        await self.client.aclose()


async def run_hot_path(
    contenders: list[Contender], baseline_email: str, settings: Settings
) -> tuple[Table, list[HotResult]]:
    bare_setup = Setup(url="http://127.0.0.1:9", email=baseline_email, margin=60.0, floor=30.0)
    bare = StaticToken(bare_setup, "cached-token")
    running: dict[str, tuple[Peer, Peer]] = {}
    results: list[HotResult] = []
    try:
        for contender in contenders:
            if "hot" not in contender.cannot:
                running[contender.name] = await _started(contender, baseline_email)
        calls = {name: peer.hot_call() for name, (peer, _) in running.items()}
        calls["baseline"] = (bare.get_token, True)
        best = await _time_calls(calls, settings.hot_calls, settings.hot_rounds)
        bare_ns = best["baseline"] * 1e9
        for contender in contenders:
            if contender.name not in running:
                note = contender.cannot["hot"]
                results.append(HotResult(contender.name, None, None, None, note))
                continue
            peer, static = running[contender.name]
            per_request, per_static = await _time_requests(peer, static, settings.httpx_requests)
            module = _module_of(contender)
            note = f"over {module.__name__}" if module is not httpx else ""
            ns = best[contender.name] * 1e9
            results.append(HotResult(contender.name, ns, per_request * 1e6, per_static * 1e6, note))
    finally:
        for peer, static in running.values():
            await static.close()
            await peer.close()
    table = Table(
        "3. Hot path (cached token; no network)",
        [
            "peer",
            "ns per get_token()",
            "x bare coroutine",
            "us per httpx request",
            "us static header",
            "overhead",
        ],
    )
    for r in results:
        if r.ns_per_call is None:
            table.add(r.name, "n/a", "", "", "", r.note)
            continue
        overhead = r.overhead
        table.add(
            r.name,
            f"{r.ns_per_call:,.0f}",
            f"{r.ns_per_call / bare_ns:.1f}x",
            f"{r.request_us:.1f}" + (f" ({r.note})" if r.note else ""),
            f"{r.static_us:.1f}",
            "-" if overhead is None else f"{overhead * 100:+.1f}%",
        )
    table.add("baseline", f"{bare_ns:,.0f}", "1.0x", "", "", "")
    results.append(HotResult("baseline", bare_ns, None, None))
    table.notes += [
        f"get_token: best of {settings.hot_rounds} rounds of {settings.hot_calls:,} calls "
        "in one task, all peers interleaved round by round; baseline: `await` of a "
        "coroutine that returns a cached string. "
        "Each peer's own call, unwrapped: indigo-auth `manager.get_token()`, vendor "
        "pattern its `get_token()`, Authlib `client.ensure_active_token(token)`, azure-core "
        "`policy.on_request(request)` (which sets the header too), aiobotocore "
        "`creds.get_frozen_credentials()`, httpx-auth `OAuth2.token_cache.get_token(...)` "
        "(synchronous: called, not awaited).",
        f"httpx request: median of {settings.httpx_requests:,} sequential GETs over "
        "`MockTransport`, each followed by one on the same kind of client with a static "
        "`Authorization` header (the limit). vendor pattern and aiobotocore use a "
        "four-line user-written `httpx.Auth`; azure-core is its policy's `send()` in front "
        "of httpx.",
    ]
    return table, results
