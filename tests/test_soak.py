"""The soak: thousands of tasks, short-lived tokens, a flaky API, over a loopback socket.

The emulator serves on loopback, in a process of its own (as the API would be: the
client's event loop does not share its interpreter), with a token lifetime of a few
seconds, and answers 10% of all requests (the token endpoints and the protected
resource alike) with a fault: 5xx, 429, a proxy's HTML page, a connection reset before
or in the middle of the body, a stalled body. Thousands of concurrent tasks make
authenticated requests through ``httpx.AsyncClient(auth=manager)``, one manager for
all of them, with the background refresher running. The test checks:

- no caller sees a 401, or any error but the faults injected into its own requests;
- one renewal per token: no renewal storm, no two renewals of one token;
- memory, task and thread counts do not grow from one token lifetime to the next;
- the manager closes cleanly: no task, thread or connection of its own left behind.

It lasts ``INDIGO_SOAK_SECONDS`` per event-loop backend (22 by default; asyncio and
Trio each); set it higher for a longer soak. Its figures are printed at the end
(``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import sniffio

from indigo_auth import AsyncTokenManager, IndigoAuthError

SECONDS = float(os.environ.get("INDIGO_SOAK_SECONDS", "22"))

# The timeout grows with the soak: a hang still fails it.
pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(SECONDS + 120)]

EMAIL = "soak@example.com"
PASSWORD = "soak password"
LIFETIME = 4.0
MARGIN = 1.5
TASKS = 2000
CLIENTS = 20
CONNECTIONS = 8  # per client
FAULT_RATE = 0.10
SEED = 20240607
#: How long a bot waits between two of its requests, on average: sets the load
#: (``TASKS / PACE`` requests a second), which a loaded 2-core machine must sustain.
PACE = 6.0
#: Statuses only an injected fault gives here (the emulator's rate limit is off).
INJECTED_STATUSES = frozenset({429, 500, 502, 503})

#: The API: the emulator in a process of its own, faulting 10% of requests, each kind
#: of fault as likely as the others. It prints its URL, serves until its stdin closes,
#: then prints its counters.
SERVER = textwrap.dedent(
    """
    import dataclasses, json, sys
    from indigo_auth.testing import Fault, IndigoEmulator

    email, password, lifetime, rate, seed = sys.argv[1:6]
    faults = [
        Fault.status(500),
        Fault.status(503),
        Fault.status(429, retry_after=0.1),
        Fault.html(502),
        Fault.drop_before(),
        Fault.drop_midway(),
        Fault.stall(seconds=0.3),
    ]
    emu = IndigoEmulator({email: password}, token_lifetime=float(lifetime), rate_limit=None)
    probability = 1 - (1 - float(rate)) ** (1 / len(faults))
    for i, fault in enumerate(faults):
        emu.inject("*", fault, probability=probability, seed=int(seed) + i)
    with emu.serve_in_thread() as url:
        print(url, flush=True)
        sys.stdin.read()
    print(json.dumps(dataclasses.asdict(emu.counters)), flush=True)
    """
)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]

    def stop(self) -> dict[str, object]:
        """Stop the server; its counters."""
        out, _ = self.process.communicate(input="", timeout=60)
        counters: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return counters


@pytest.fixture
def server() -> Iterator[Server]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, EMAIL, PASSWORD, str(LIFETIME), str(FAULT_RATE), str(SEED)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield Server(url, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def rss_bytes() -> int:
    """Resident memory of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def task_count() -> int:
    """Tasks alive in this event loop (Trio: the whole task tree, system tasks included)."""
    if sniffio.current_async_library() == "trio":
        import trio

        count = 0
        stack = [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            count += 1
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return count
    return len(asyncio.all_tasks())


#: Worker threads the event loop keeps for itself (DNS lookups, ``to_thread``).
_LOOP_THREADS = ("asyncio_", "AnyIO worker thread", "Trio thread")


def own_threads() -> set[str]:
    """Threads that are neither pytest's nor the event loop's worker pools."""
    return {
        thread.name for thread in threading.enumerate() if not thread.name.startswith(_LOOP_THREADS)
    }


@dataclass
class Sample:
    at: float
    rss: int
    tasks: int
    threads: int
    objects: int
    renewals: int


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


async def bot(client: httpx.AsyncClient, tally: Tally, stop_at: float, rng: random.Random) -> None:
    await anyio.sleep(rng.uniform(0, PACE))
    while anyio.current_time() < stop_at:
        try:
            response = await client.get("/workspace/folders")
        except IndigoAuthError as exc:
            tally.outcomes["manager error"] += 1
            tally.unexpected.append(repr(exc))
        except (httpx.ReadError, httpx.RemoteProtocolError):
            tally.outcomes["dropped (injected)"] += 1
        except httpx.HTTPError as exc:
            tally.outcomes["client error"] += 1
            tally.unexpected.append(repr(exc))
        else:
            status = response.status_code
            if status == 200:
                tally.outcomes["ok"] += 1
            elif status == 401:
                tally.outcomes["401"] += 1
            elif status in INJECTED_STATUSES:
                tally.outcomes["faulted (injected)"] += 1
            else:
                tally.outcomes[f"HTTP {status}"] += 1
                tally.unexpected.append(f"HTTP {status}")
        pause = rng.uniform(0.5 * PACE, 1.5 * PACE)
        await anyio.sleep(min(pause, max(0.0, stop_at - anyio.current_time())))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="measures memory on Linux")
async def test_soak(anyio_backend: str, server: Server) -> None:
    rng = random.Random(SEED)
    gc.collect()
    threads_before = own_threads()
    tasks_before = task_count()
    samples: list[Sample] = []
    tally = Tally()

    manager = AsyncTokenManager(
        EMAIL,
        PASSWORD,
        base_url=server.url,
        refresh_margin=MARGIN,
        max_retry_delay=0.5,  # a token of seconds cannot wait out long backoffs
        timeout=10.0,
    )
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    clients = [
        httpx.AsyncClient(base_url=server.url, auth=manager, limits=limits, timeout=30.0)
        for _ in range(CLIENTS)
    ]
    started = anyio.current_time()
    stop_at = started + SECONDS

    async def sample() -> None:
        while True:
            samples.append(
                Sample(
                    at=anyio.current_time() - started,
                    rss=rss_bytes(),
                    tasks=task_count(),
                    threads=len(own_threads()),
                    objects=len(gc.get_objects()),
                    renewals=manager.stats.renewals,
                )
            )
            await anyio.sleep(LIFETIME)

    async with manager:
        owned = await manager._http()
        await manager.get_token()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            async with anyio.create_task_group() as bots:
                for i in range(TASKS):
                    bots.start_soon(
                        bot, clients[i % CLIENTS], tally, stop_at, random.Random(rng.random())
                    )
            tg.cancel_scope.cancel()
        elapsed = anyio.current_time() - started
        stats = manager.stats
        for client in clients:
            await client.aclose()
    left_running = task_count() - tasks_before
    threads_left = own_threads() - threads_before
    flight = manager._flight
    counters = server.stop()

    served = counters["requests"]
    assert isinstance(served, dict)
    total = sum(served.values())
    faults = counters["faults"]
    assert isinstance(faults, int)
    # A token is replaced MARGIN (plus up to a tenth of it in jitter) before it expires:
    # after the first sign-in, one renewal per such working life is one per token.
    working_life = LIFETIME - MARGIN * 1.05
    renewals_per_lifetime = (stats.renewals - 1) / (elapsed / working_life)
    # While every bot is alive, after two lifetimes of warming up.
    steady = [s for s in samples if 2 * LIFETIME <= s.at < SECONDS]
    half = max(1, len(steady) // 2)
    early, late = steady[:half], steady[half:] or steady[-1:]
    rss_growth = statistics.median(s.rss for s in late) - statistics.median(s.rss for s in early)
    objects_growth = statistics.median(s.objects for s in late) / statistics.median(
        s.objects for s in early
    )
    gaps = [b.at - a.at for a, b in itertools.pairwise(samples)]
    per_sample = [b.renewals - a.renewals for a, b in itertools.pairwise(samples)]
    calls = sum(tally.outcomes.values())
    report = {
        "backend": anyio_backend,
        "seconds": round(elapsed, 1),
        "tasks": TASKS,
        "requests by callers": calls,
        "outcomes": dict(tally.outcomes),
        "requests served": total,
        "faults injected": faults,
        "fault rate": round(faults / max(1, total), 3),
        "401 served (the re-auth absorbed them)": counters["unauthorized"],
        "sign-ins": stats.sign_ins,
        "refreshes": stats.refreshes,
        "renewals": stats.renewals,
        "renewals per token lifetime": round(renewals_per_lifetime, 2),
        "renewals per lifetime-long sample": per_sample,
        "retries": stats.retries,
        "failures": stats.failures,
        "callers that waited": stats.waiters,
        "rss MB (first, last)": (samples[0].rss >> 20, samples[-1].rss >> 20),
        "rss growth MB": round(rss_growth / 2**20, 1),
        "gc objects growth": round(objects_growth, 3),
        "tasks (min, max)": (min(s.tasks for s in steady), max(s.tasks for s in steady)),
        "threads (min, max)": (min(s.threads for s in steady), max(s.threads for s in steady)),
        "tasks left running": left_running,
        "threads left running": sorted(threads_left),
    }
    print(f"\nsoak figures: {report}")  # noqa: T201 - the figures are the point of a soak

    # No caller sees a 401, or an error that is not a fault injected into its request.
    assert tally.outcomes["401"] == 0
    assert not tally.unexpected, tally.unexpected[:5]
    injected_seen = tally.outcomes["faulted (injected)"] + tally.outcomes["dropped (injected)"]
    assert injected_seen <= faults
    assert calls >= TASKS * SECONDS / PACE * 0.5
    assert 0.05 <= faults / total <= 0.15
    # One renewal per token lifetime: none missed (no 401), none doubled.
    assert 0.6 <= renewals_per_lifetime <= 1.1
    assert all(n <= 3 for n in per_sample), per_sample
    assert stats.failures <= 1
    # Nothing grows from one lifetime to the next.
    assert max(gaps) < 4 * LIFETIME, "the event loop stalled"
    assert rss_growth < 32 * 2**20
    assert objects_growth < 1.1
    assert max(s.tasks for s in steady) - min(s.tasks for s in steady) <= 10
    assert max(s.threads for s in steady) == min(s.threads for s in steady)
    # Closed cleanly: nothing of the manager's is left running.
    assert left_running == 0
    assert not threads_left
    assert flight is None
    assert owned.is_closed
