"""Workload 1, cold stampede: N tasks need a token at once and none is cached."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from peers import Setup
from servers import ServerProcess

from .common import Contender, Settings, Table, fmt_ms, fresh_account, percentile

__all__ = ["StampedeResult", "run_stampede"]


@dataclass(slots=True)
class StampedeResult:
    name: str
    size: int
    token_requests: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    unfinished: int = 0
    wall: float = 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    @property
    def max(self) -> float:
        return max(self.latencies, default=float("nan"))


async def _one(
    server: ServerProcess, contender: Contender, size: int, settings: Settings
) -> StampedeResult:
    email = await fresh_account(server, contender.name)
    setup = Setup(url=server.url, email=email, margin=settings.margin, floor=settings.floor)
    peer = contender.build(setup)
    await peer.start()
    await server.reset()
    gate = asyncio.Event()
    latencies: list[float] = []
    errors = 0

    began = 0.0

    async def caller() -> None:
        nonlocal errors
        await gate.wait()
        try:
            await peer.get_token()
        except Exception:
            errors += 1
            return
        latencies.append(time.perf_counter() - began)

    tasks = [asyncio.create_task(caller()) for _ in range(size)]
    await asyncio.sleep(0)  # every caller now waits at the gate
    began = time.perf_counter()
    gate.set()
    _, pending = await asyncio.wait(tasks, timeout=settings.stampede_cap)
    wall = time.perf_counter() - began
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await peer.close()
    await asyncio.sleep(0.1)  # let cancelled requests reach the server's counters
    token_requests = await server.token_requests()
    return StampedeResult(
        contender.name, size, token_requests, latencies, errors, len(pending), wall
    )


async def run_stampede(
    server: ServerProcess, contenders: list[Contender], baseline: Contender, settings: Settings
) -> tuple[Table, list[StampedeResult]]:
    await server.configure(
        token_lifetime=1800.0, token_latency=settings.token_latency, resource_latency=0.0
    )
    latency_ms = settings.token_latency * 1000
    table = Table(
        f"1. Cold stampede (token server latency {latency_ms:.0f} ms)",
        ["peer", "callers", "token requests", "p50 ms", "p99 ms", "max ms", "errors"],
    )
    results: list[StampedeResult] = []
    for size in settings.stampede_sizes:
        for contender in [*contenders, baseline]:
            reason = contender.cannot.get(f"stampede:{size}") or contender.cannot.get("stampede")
            if reason:
                table.add(contender.name, f"{size:,}", "n/a", "", "", "", reason)
                continue
            result = await _one(server, contender, size, settings)
            results.append(result)
            requests = f"{result.token_requests:,}"
            if result.unfinished:
                cap = settings.stampede_cap
                requests += f" ({result.unfinished:,} callers still waiting at the {cap:g} s cap)"
            table.add(
                contender.name,
                f"{size:,}",
                requests,
                fmt_ms(result.p50),
                fmt_ms(result.p99),
                fmt_ms(result.max),
                result.errors,
            )
    table.notes.append(
        "All callers wait on one event; a caller's latency runs from the event's release "
        "(when all of them need the token) to the token in its hand, so it includes "
        "waiting for the event loop. baseline: one sign-in request whose result every "
        "caller awaits (the physical limit). indigo-auth makes its own httpx client on "
        "its first renewal (loading the CA bundle on the way); the `http_client=` row "
        "hands it one made beforehand, as every other peer's is."
    )
    return table, results
