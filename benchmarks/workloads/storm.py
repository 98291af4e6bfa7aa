"""Workload 4, 401 storm: N concurrent requests are refused with the same revoked token."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from peers import Setup
from servers import ServerProcess

from .common import Contender, Settings, Table, fresh_account

__all__ = ["StormResult", "run_storm"]

_CAP = 60.0


@dataclass(slots=True)
class StormResult:
    name: str
    requests: int
    token_requests: int
    renewals: int | None
    statuses: Counter[int]
    unfinished: int = 0

    @property
    def unauthorized(self) -> int:
        return self.statuses.get(401, 0)


async def _one(server: ServerProcess, contender: Contender, settings: Settings) -> StormResult:
    email = await fresh_account(server, contender.name)
    setup = Setup(url=server.url, email=email, margin=settings.margin, floor=settings.floor)
    peer = contender.build(setup)
    await peer.start()
    await peer.request()
    token = await peer.get_token()
    await server.revoke(server=contender.server, token=token)
    manager = getattr(peer, "manager", None)
    renewals0 = manager.stats.renewals if manager is not None else 0
    await server.reset()
    statuses: Counter[int] = Counter()

    async def one() -> None:
        try:
            statuses[await peer.request()] += 1
        except Exception:
            statuses[-1] += 1

    tasks = [asyncio.create_task(one()) for _ in range(settings.storm_requests)]
    _, pending = await asyncio.wait(tasks, timeout=_CAP)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    renewals = manager.stats.renewals - renewals0 if manager is not None else None
    await peer.close()
    token_requests = await server.token_requests()
    return StormResult(
        contender.name, settings.storm_requests, token_requests, renewals, statuses, len(pending)
    )


async def run_storm(
    server: ServerProcess, contenders: list[Contender], settings: Settings
) -> tuple[Table, list[StormResult]]:
    await server.configure(
        token_lifetime=1800.0,
        token_latency=settings.token_latency,
        resource_latency=settings.resource_latency,
    )
    table = Table(
        f"4. 401 storm ({settings.storm_requests:,} concurrent requests, one revoked token)",
        ["peer", "renewals", "token requests", "401s seen by callers", "200s", "other"],
    )
    results: list[StormResult] = []
    for contender in contenders:
        if "storm" in contender.cannot:
            table.add(contender.name, "n/a", "", "", "", contender.cannot["storm"])
            continue
        r = await _one(server, contender, settings)
        results.append(r)
        other = sum(n for status, n in r.statuses.items() if status not in (200, 401))
        table.add(
            r.name,
            r.token_requests if r.renewals is None else r.renewals,
            r.token_requests,
            r.unauthorized,
            r.statuses.get(200, 0),
            other + r.unfinished,
        )
    table.add("baseline", 1, 1, 0, settings.storm_requests, 0)
    table.notes += [
        "The peer's current token is revoked server-side, then N requests go out at once. "
        "renewals: indigo-auth's own count (`stats.renewals`); for the others each renewal "
        "is one token request. baseline: the least any client can do (one renewal, "
        "every request retried once), not measured.",
        "Peers without 401 handling hand every 401 to the caller and renew nothing, since "
        "the token still looks valid to them.",
    ]
    return table, results
