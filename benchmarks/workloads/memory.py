"""Workload 5, memory: bytes per caller waiting on a cold-start renewal (tracemalloc)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from dataclasses import dataclass

from peers import Peer, Setup
from servers import ServerProcess

from .common import Contender, Settings, Table, fresh_account

__all__ = ["MemoryResult", "run_memory"]


@dataclass(slots=True)
class MemoryResult:
    name: str
    callers: int
    per_caller: float
    valid: bool


class _SharedFuture(Peer):
    """The limit: a caller that awaits one shared future."""

    name = "baseline"

    async def start(self) -> None:
        self._future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def get_token(self) -> str:
        return await self._future

    async def request(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        if not self._future.done():
            self._future.set_result("done")


async def _measure(peer: Peer, callers: int, wait_cap: float) -> tuple[float, bool]:
    started = 0
    all_started = asyncio.Event()

    async def caller() -> None:
        nonlocal started
        started += 1
        if started == callers:
            all_started.set()
        await peer.get_token()

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_started.wait(), wait_cap)
        await asyncio.sleep(0.02)  # the last callers reach their await
        after = tracemalloc.get_traced_memory()[0]
        valid = started == callers and not any(task.done() for task in tasks)
    finally:
        tracemalloc.stop()
    if isinstance(peer, _SharedFuture):
        await peer.close()  # releases its callers
    await asyncio.wait(tasks, timeout=wait_cap * 3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (after - before) / callers, valid


async def run_memory(
    server: ServerProcess, contenders: list[Contender], settings: Settings
) -> tuple[Table, list[MemoryResult]]:
    await server.configure(
        token_lifetime=1800.0, token_latency=settings.memory_latency, resource_latency=0.0
    )
    n = settings.memory_tasks
    results: list[MemoryResult] = []
    table = Table(
        f"5. Memory ({n:,} callers waiting on a cold start, tracemalloc)",
        ["peer", "bytes per waiting caller", "above the baseline"],
    )
    base_setup = Setup(url=server.url, email="-", margin=settings.margin, floor=settings.floor)
    base_peer = _SharedFuture(base_setup)
    await base_peer.start()
    base, _ = await _measure(base_peer, n, settings.memory_latency)
    for contender in contenders:
        if "memory" in contender.cannot:
            table.add(contender.name, "n/a", contender.cannot["memory"])
            continue
        email = await fresh_account(server, contender.name)
        setup = Setup(url=server.url, email=email, margin=settings.margin, floor=settings.floor)
        peer = contender.build(setup)
        await peer.start()
        try:
            per, valid = await _measure(peer, n, settings.memory_latency)
        finally:
            await peer.close()
        results.append(MemoryResult(contender.name, n, per, valid))
        flag = "" if valid else " (some callers were not waiting when measured)"
        table.add(contender.name, f"{per:,.0f}{flag}", f"{per - base:,.0f}")
    results.append(MemoryResult("baseline", n, base, True))
    table.add("baseline", f"{base:,.0f}", "0")
    table.notes.append(
        "Traced bytes allocated between creating the callers and the moment all of them "
        f"wait (the token server takes {settings.memory_latency:g} s), divided by the "
        "callers. Each caller is a task running `await peer.get_token()`; baseline: the "
        "same task awaiting one shared future, the least a waiting caller costs."
    )
    return table, results
