"""``indigo-auth demo``: the main job, on the embedded emulator.

Starts the emulator on loopback with a short token lifetime and a sprinkle of
faults on the token endpoints, runs many concurrent bot tasks through one
:class:`AsyncTokenManager` and ``httpx.AsyncClient(auth=manager)``, and ends with a
report. The figure that matters is the number of 401s the bots saw: zero.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TextIO

import anyio
import httpx

from ._manager import AsyncTokenManager

__all__ = ["DemoReport", "add_demo_arguments", "run_demo", "run_demo_async"]

_EMAIL = "demo-bot@indigo-auth.test"
#: Bots share a few HTTP clients: one client carrying a thousand concurrent requests
#: spends its time in connection-pool bookkeeping.
_TASKS_PER_CLIENT = 100


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    parser.add_argument("--tasks", type=int, default=1000, help="concurrent bot tasks (1000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run (30)")
    parser.add_argument(
        "--token-lifetime", type=float, default=10.0, help="token lifetime on the emulator (10 s)"
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.3,
        help="share of token requests that fail transiently (0.3)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for faults and pacing")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop (asyncio)"
    )
    parser.add_argument("--quiet", action="store_true", help="no live progress")


@dataclass
class DemoReport:
    """What the demo measured."""

    tasks: int
    duration: float
    token_lifetime: float
    requests_served: int = 0
    bot_requests: int = 0
    sign_ins: int = 0
    refreshes: int = 0
    retries: int = 0
    faults: int = 0
    unauthorized: int = 0
    errors: int = 0
    token_latencies: list[float] = field(default_factory=list, repr=False)
    request_latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.unauthorized == 0 and self.errors == 0 and self.bot_requests > 0

    def percentile(self, share: float, *, requests: bool = False) -> float:
        data = sorted(self.request_latencies if requests else self.token_latencies)
        if not data:
            return math.nan
        index = min(len(data) - 1, max(0, math.ceil(share * len(data)) - 1))
        return data[index]

    def render(self) -> str:
        lifetimes = self.duration / self.token_lifetime
        rows = [
            ("bot tasks", f"{self.tasks:,}"),
            ("duration", f"{self.duration:.1f} s ({lifetimes:.1f} token lifetimes)"),
            ("requests served by the API", f"{self.requests_served:,}"),
            ("bot requests", f"{self.bot_requests:,}"),
            ("sign-ins", f"{self.sign_ins}"),
            ("refreshes", f"{self.refreshes}"),
            ("faults injected", f"{self.faults}"),
            ("retries", f"{self.retries}"),
            ("401s seen by bots", f"{self.unauthorized}"),
            ("other errors seen by bots", f"{self.errors}"),
            ("get_token() p50", f"{self.percentile(0.50) * 1e6:,.1f} us"),
            ("get_token() p99", f"{self.percentile(0.99) * 1e6:,.1f} us"),
            ("get_token() max", f"{self.percentile(1.0) * 1e3:,.2f} ms"),
            ("bot request p50", f"{self.percentile(0.50, requests=True) * 1e3:,.1f} ms"),
            ("bot request p99", f"{self.percentile(0.99, requests=True) * 1e3:,.1f} ms"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = ["", "indigo-auth demo report", "=" * (width + 20)]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        verdict = "OK: no bot ever saw a dead token" if self.ok else "FAILED"
        lines += ["=" * (width + 20), verdict, ""]
        return "\n".join(lines)


async def run_demo_async(
    *,
    tasks: int = 1000,
    duration: float = 30.0,
    token_lifetime: float = 10.0,
    fault_rate: float = 0.3,
    seed: int | None = None,
    progress: TextIO | None = None,
) -> DemoReport:
    """Run the demo in the current event loop and return its report.

    The emulator runs in a process of its own, as a remote API would, so that the
    bots and the server do not compete for one interpreter lock.
    """
    rng = random.Random(seed)  # noqa: S311 - pacing and faults, not cryptography
    password = secrets.token_urlsafe(16)
    settings = _ServerSettings(
        email=_EMAIL,
        password=password,
        token_lifetime=token_lifetime,
        fault_rate=fault_rate,
        seed=rng.randrange(2**32),
    )
    report = DemoReport(tasks=tasks, duration=duration, token_lifetime=token_lifetime)
    margin = token_lifetime / 4
    with _EmulatorProcess(settings) as server:
        base_url = server.base_url
        manager = AsyncTokenManager(
            _EMAIL,
            password,
            base_url=base_url,
            refresh_margin=margin,
            max_retry_delay=0.5,
        )
        clients = [
            httpx.AsyncClient(
                base_url=base_url,
                auth=manager,
                timeout=10.0,
                limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
            )
            for _ in range(max(1, math.ceil(tasks / _TASKS_PER_CLIENT)))
        ]
        started = time.monotonic()
        deadline = started + duration
        del password

        async def bot(index: int) -> None:
            client = clients[index % len(clients)]
            pace = random.Random(rng.randrange(2**32))  # noqa: S311 - pacing
            await anyio.sleep(min(pace.uniform(0, 6.0), duration))
            while time.monotonic() < deadline:
                before = time.perf_counter()
                await manager.get_token()
                report.token_latencies.append(time.perf_counter() - before)
                before = time.perf_counter()
                try:
                    response = await client.get("/workspace/folders")
                except httpx.HTTPError:
                    report.errors += 1
                else:
                    report.request_latencies.append(time.perf_counter() - before)
                    report.bot_requests += 1
                    if response.status_code == 401:
                        report.unauthorized += 1
                    elif response.status_code >= 400:
                        report.errors += 1
                await anyio.sleep(
                    min(pace.uniform(4.0, 8.0), max(0.0, deadline - time.monotonic()))
                )

        async def show_progress() -> None:
            if progress is None:
                return
            # A terminal gets one line rewritten every second; a log, a line every 5 s.
            live = progress.isatty()
            while True:
                await anyio.sleep(1.0 if live else 5.0)
                stats = manager.stats
                elapsed = time.monotonic() - started
                line = (
                    f"  {elapsed:5.1f}s  bot requests {report.bot_requests:>7,}  "
                    f"401s {report.unauthorized}  sign-ins {stats.sign_ins}  "
                    f"refreshes {stats.refreshes}  retries {stats.retries}   "
                )
                progress.write("\r" + line if live else line + "\n")
                progress.flush()

        try:
            async with manager, anyio.create_task_group() as bots:
                bots.start_soon(show_progress)
                async with anyio.create_task_group() as workers:
                    for index in range(tasks):
                        workers.start_soon(bot, index)
                bots.cancel_scope.cancel()
        finally:
            for client in clients:
                await client.aclose()
        if progress is not None:
            progress.write("\n")
        counters = server.stop()
    report.requests_served = sum(counters["requests"].values())
    report.sign_ins = counters["sign_ins"]
    report.refreshes = counters["refreshes"]
    report.faults = counters["faults"]
    report.retries = manager.stats.retries
    return report


@dataclass(frozen=True)
class _ServerSettings:
    email: str
    password: str = field(repr=False)
    token_lifetime: float
    fault_rate: float
    seed: int


def _serve(settings: _ServerSettings, conn: Connection) -> None:
    """The emulator process: serve until told to stop, then report the counters."""
    from .testing import Fault, IndigoEmulator

    emulator = IndigoEmulator(
        {settings.email: settings.password},
        token_lifetime=settings.token_lifetime,
        rate_limit=None,
    )
    if settings.fault_rate > 0:
        for endpoint in ("signin", "refresh_token"):
            emulator.inject(
                endpoint,
                Fault.status(503, retry_after=0.1),
                probability=settings.fault_rate,
                seed=settings.seed,
            )
    with emulator.serve_in_thread() as base_url:
        conn.send(base_url)
        conn.poll(3600)
    counters = emulator.counters
    conn.send(
        {
            "requests": dict(counters.requests),
            "sign_ins": counters.sign_ins,
            "refreshes": counters.refreshes,
            "faults": counters.faults,
        }
    )
    conn.close()


class _EmulatorProcess:
    def __init__(self, settings: _ServerSettings) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(settings, child), name="indigo-auth emulator", daemon=True
        )
        self.base_url = ""

    def __enter__(self) -> _EmulatorProcess:
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("the emulator process did not start")
        self.base_url = self._conn.recv()
        return self

    def stop(self) -> dict[str, Any]:
        self._conn.send("stop")
        if not self._conn.poll(30):
            raise RuntimeError("the emulator process did not report")
        counters: dict[str, Any] = self._conn.recv()
        return counters

    def __exit__(self, *exc_info: object) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; exit code 0 when no bot saw a 401."""
    if args.tasks < 1 or args.duration <= 0 or args.token_lifetime <= 0:
        print("demo: --tasks, --duration and --token-lifetime must be positive", file=sys.stderr)
        return 2
    if not 0 <= args.fault_rate < 1:
        print("demo: --fault-rate must be in [0, 1)", file=sys.stderr)
        return 2
    print(
        f"indigo-auth demo: {args.tasks:,} bot tasks for {args.duration:g} s through one "
        f"token manager; tokens live {args.token_lifetime:g} s on the emulator, "
        f"{args.fault_rate:.0%} of token requests fail transiently",
        file=sys.stderr,
    )

    async def main() -> DemoReport:
        return await run_demo_async(
            tasks=args.tasks,
            duration=args.duration,
            token_lifetime=args.token_lifetime,
            fault_rate=args.fault_rate,
            seed=args.seed,
            progress=None if args.quiet else sys.stderr,
        )

    report = anyio.run(main, backend=args.backend)
    print(report.render())
    return 0 if report.ok else 1
