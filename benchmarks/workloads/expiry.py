"""Workload 2, expiry under load: many tasks make authenticated requests across several
token lifetimes; what does each renewal cost the callers?"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field

from peers import Setup, start_wait
from peers.baselines import StaticToken
from servers import ServerProcess

from .common import Contender, Settings, Table, fmt_ms, fresh_account, percentile

__all__ = ["ExpiryResult", "run_expiry"]

#: A request whose token step took longer than this waited on a renewal.
WAITED = 0.005
#: How long after a token request's answer its window stays open.
WINDOW_TAIL = 0.100
#: Token requests closer together than this are one renewal.
SAME_RENEWAL = 0.5


@dataclass(slots=True)
class Sample:
    start: float  # seconds since the run began
    latency: float
    status: int
    token_wait: float


@dataclass(slots=True)
class ExpiryResult:
    name: str
    duration: float
    lifetime: float
    token_requests: int
    samples: list[Sample] = field(default_factory=list)
    renewals: list[tuple[float, float]] = field(default_factory=list)  # (start, end), run time
    own_waiters: int | None = None
    errors: int = 0

    @property
    def renewal_count(self) -> int:
        """Renewals: runs of token requests less than SAME_RENEWAL apart count as one."""
        count = 0
        last = -math.inf
        for start in sorted(start for start, _ in self.renewals):
            if start - last > SAME_RENEWAL:
                count += 1
            last = start
        return count

    @property
    def per_renewal(self) -> float:
        return self.token_requests / self.renewal_count if self.renewal_count else 0.0

    @property
    def unauthorized(self) -> int:
        return sum(1 for s in self.samples if s.status == 401)

    @property
    def waiters(self) -> int:
        if self.own_waiters is not None:
            return self.own_waiters
        return sum(1 for s in self.samples if s.token_wait > WAITED)

    def split(self) -> tuple[list[float], list[float]]:
        """Latencies of requests inside a renewal window, and outside all of them."""
        windows = [(start, end + WINDOW_TAIL) for start, end in self.renewals]
        inside: list[float] = []
        outside: list[float] = []
        for s in self.samples:
            end = s.start + s.latency
            if any(s.start < w_end and end > w_start for w_start, w_end in windows):
                inside.append(s.latency)
            else:
                outside.append(s.latency)
        return inside, outside


async def _one(
    server: ServerProcess,
    contender: Contender,
    settings: Settings,
    duration: float,
    *,
    static: bool = False,
) -> ExpiryResult:
    email = await fresh_account(server, contender.name)
    setup = Setup(
        url=server.url,
        email=email,
        margin=settings.margin,
        floor=settings.floor,
        instrument=True,
    )
    if static:
        token = await server.issue(server=contender.server, email=email, lifetime=3600.0)
        peer = StaticToken(setup, token, server=contender.server)
    else:
        peer = contender.build(setup)
    await peer.start()
    await peer.request()  # the first token: the cold start is workload 1's business
    reset_waiters = getattr(peer, "reset_waiters", None)
    if reset_waiters is not None:
        reset_waiters()
    await server.reset()
    wall0 = time.time()
    began = time.perf_counter()
    end = began + duration
    samples: list[Sample] = []
    errors = 0
    low, high = settings.think
    max_requests = int(duration / low) + 2

    async def pause(seconds: float) -> bool:
        """Sleep, but not past the end of the run; whether there is time left."""
        await asyncio.sleep(max(0.0, min(seconds, end - time.perf_counter())))
        return time.perf_counter() < end

    async def worker(rng: random.Random) -> None:
        nonlocal errors
        if not await pause(rng.uniform(0.0, high)):
            return
        for _ in range(max_requests):
            holder = start_wait()
            started = time.perf_counter()
            try:
                status = await peer.request()
            except Exception:
                errors += 1
                status = -1
            finished = time.perf_counter()
            samples.append(Sample(started - began, finished - started, status, holder.seconds))
            if not await pause(rng.uniform(low, high)):
                return

    tasks = [asyncio.create_task(worker(random.Random(i))) for i in range(settings.load_tasks)]
    _, pending = await asyncio.wait(tasks, timeout=duration + 30.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    counters = await server.counters()
    own = peer.waiters()
    await peer.close()
    renewals = [
        (start - wall0, stop - wall0)
        for _, start, stop in counters["events"]
        if start - wall0 < duration
    ]
    token_requests = len(renewals)
    return ExpiryResult(
        contender.name,
        duration,
        settings.lifetime,
        token_requests,
        samples,
        renewals,
        own,
        errors,
    )


async def run_expiry(
    server: ServerProcess, contenders: list[Contender], baseline: Contender, settings: Settings
) -> tuple[Table, list[ExpiryResult]]:
    await server.configure(
        token_lifetime=settings.lifetime,
        token_latency=settings.token_latency,
        resource_latency=settings.resource_latency,
    )
    duration = settings.lifetime * settings.lifetimes
    table = Table(
        f"2. Expiry under load ({settings.load_tasks:,} tasks, tokens of "
        f"{settings.lifetime:g} s, margin {settings.margin:g} s, {settings.lifetimes} "
        f"lifetimes)",
        [
            "peer",
            "requests",
            "renewals",
            "token requests (per renewal)",
            "401s seen",
            "waited on a renewal",
            "p50 / p99 ms in renewal windows",
            "p50 / p99 ms outside",
        ],
    )
    results: list[ExpiryResult] = []
    # The baseline runs first: the first run on a fresh server and fresh connections
    # pays for warming them up, and the baseline has no renewal to be blamed for it.
    first = await _one(server, baseline, settings, settings.lifetime, static=True)
    for contender in [*contenders, baseline]:
        if "expiry" in contender.cannot:
            table.add(contender.name, "n/a", "", "", "", "", "", contender.cannot["expiry"])
            continue
        if contender is baseline:
            result = first
        else:
            result = await _one(server, contender, settings, duration)
        results.append(result)
        inside, outside = result.split()
        requests = f"{len(result.samples):,}"
        if result.errors:
            requests += f" ({result.errors} errors)"
        table.add(
            contender.name,
            requests,
            result.renewal_count,
            f"{result.token_requests} ({result.per_renewal:.2f})",
            result.unauthorized,
            result.waiters,
            f"{fmt_ms(percentile(inside, 50))} / {fmt_ms(percentile(inside, 99))}"
            f" (n={len(inside)})",
            f"{fmt_ms(percentile(outside, 50))} / {fmt_ms(percentile(outside, 99))}",
        )
    table.notes += [
        f"Each task sleeps {settings.think[0]:g}-{settings.think[1]:g} s (uniform) between "
        f"requests; the protected resource answers in {settings.resource_latency * 1000:g} ms, "
        f"the token endpoint in {settings.token_latency * 1000:g} ms. The first token is "
        "fetched before the clock starts.",
        "A renewal window runs from a token request's arrival at the server to "
        f"{WINDOW_TAIL * 1000:g} ms after its answer. Token requests less than "
        f"{SAME_RENEWAL:g} s apart are one renewal. Renewing {settings.margin:g} s ahead, "
        f"a {settings.lifetime:g}-s token serves {settings.lifetime - settings.margin:g} s, "
        f"so one renewal per token is {duration / (settings.lifetime - settings.margin):g} "
        f"renewals in the {duration:g} s run.",
        "waited on a renewal: indigo-auth counts these itself (`manager.stats.waiters`); "
        f"for the other peers, requests whose token step took over {WAITED * 1000:g} ms.",
        "baseline: a static header with a token that outlives the run, for one lifetime.",
        "Authlib keeps expiry in whole seconds (`int(time()) + expires_in`), so on tokens "
        "this short it renews up to a second early; azure-core adds 0-60 s of jitter to "
        "`refresh_on`, capped at the whole-second `expires_on`, so it renews at expiry "
        "with every caller behind its lock. Both are fine on 30-minute tokens.",
    ]
    return table, results
