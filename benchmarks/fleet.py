"""A fleet of bot processes on one Indigo account: how many renewals does it cost?

N worker processes (16 by default) each run an ``AsyncTokenManager`` (inside
``async with``, so refreshed ahead) and ask it for a token every 20 ms, against the
emulator on a loopback port with a compressed token lifetime, a slow sign-in and
rotating refresh tokens. The fleet runs once per store:

- ``memory``: a ``MemoryStore`` per process, what a fleet gets without sharing;
- ``file``: one ``FileStore`` shared by every process;
- ``redis``: one ``RedisStore`` on a ``redis-server`` the benchmark starts on a free
  loopback port (skipped where ``redis-server`` is not installed).

For each it reports the sign-ins and refreshes the emulator served, and those per
token lifetime across the fleet (goal: exactly 1). A lifetime here is one
generation of the token: from its issue to its replacement, counted as the most
distinct tokens one process was handed. It also reports how long the processes
that did not renew waited for the one that did (the wait for the store's lock at
a renewal), how long the first token took, and the slowest ``get_token`` once
running.

Run: ``.venv/bin/python benchmarks/fleet.py [--workers 16] [--lifetime 3] [--duration 6]``.
Bounded in time (well under a minute by default); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

EMAIL = "fleet@example.com"
PASSWORD = "fleet-password"
SIGN_IN_LATENCY = 0.3
LATENCY = 0.01
STORES = ("memory", "file", "redis")


# -- the worker (a process of its own) ----------------------------------------------------


def _worker() -> None:
    """Run one fleet round per line of settings on stdin; print each round's result."""
    import anyio

    from indigo_auth import AsyncTokenManager, FileStore, MemoryStore, RedisStore, TokenState
    from indigo_auth import TokenStore as TokenStoreProtocol

    class TimedStore:
        """A store that times how long each renewal waited for the lock."""

        def __init__(self, inner: TokenStoreProtocol) -> None:
            self.inner = inner
            self.waits: list[tuple[float, float]] = []  # (when it began, how long)

        async def load(self, key: str) -> TokenState | None:
            return await self.inner.load(key)

        async def save(self, key: str, state: TokenState) -> None:
            await self.inner.save(key, state)

        async def delete(self, key: str) -> None:
            await self.inner.delete(key)

        @asynccontextmanager
        async def lock(self, key: str) -> AsyncIterator[None]:
            began = time.perf_counter()
            async with self.inner.lock(key):
                self.waits.append((began, time.perf_counter() - began))
                yield

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def run(settings: dict[str, Any]) -> dict[str, Any]:
        kind = settings["store"]
        inner: TokenStoreProtocol
        if kind == "file":
            inner = FileStore(settings["path"])
        elif kind == "redis":
            inner = RedisStore(settings["redis_url"], settings["prefix"])
        else:
            inner = MemoryStore()
        store = TimedStore(inner)
        manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=settings["base_url"], store=store)
        latencies: list[float] = []
        tokens: list[str] = []
        first_at = 0.0
        # Every process starts at the same moment, and the first token's latency
        # counts from it: for most, it is the wait for the one that signs in.
        await anyio.sleep(max(0.0, settings["start_at"] - time.time()))
        began = time.perf_counter() - max(0.0, time.time() - settings["start_at"])
        async with manager:
            stop_at = time.monotonic() + settings["duration"]
            while True:
                if latencies:
                    began = time.perf_counter()
                token = await manager.get_token()
                latencies.append(time.perf_counter() - began)
                if not tokens:
                    first_at = time.perf_counter()
                if not tokens or tokens[-1] != token:
                    tokens.append(token)
                if time.monotonic() >= stop_at:
                    break
                await anyio.sleep(0.02)
            # Let a renewal in flight land before the refresher is cancelled.
            with anyio.move_on_after(5.0):
                while True:
                    s = manager.stats
                    if s.renewals <= s.sign_ins + s.refreshes + s.adopted + s.failures:
                        break
                    await anyio.sleep(0.02)
            token = await manager.get_token()
            if tokens[-1] != token:
                tokens.append(token)
        stats = manager.stats
        await store.aclose()
        return {
            "generations": len(tokens),
            "first": latencies[0],
            "slowest": max(latencies[1:], default=0.0),
            # Waits for the lock at renewals, after the first token.
            "lock_waits": [wait for began, wait in store.waits if began > first_at],
            "sign_ins": stats.sign_ins,
            "refreshes": stats.refreshes,
            "failures": stats.failures,
        }

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(anyio.run(run, json.loads(line))), flush=True)


# -- the benchmark ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _redis_server() -> Iterator[str | None]:
    """A redis-server on a free loopback port, or ``None`` where it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _read_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    box: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise RuntimeError("a worker did not answer in time")
    line: dict[str, Any] = json.loads(box[0])
    return line


@contextmanager
def _fleet(workers: int, timeout: float) -> Iterator[list[subprocess.Popen[str]]]:
    """Start the worker processes and wait until every one of them is ready."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    processes = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    try:
        for process in processes:
            _read_line(process, timeout)
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.communicate()


def _round(
    processes: list[subprocess.Popen[str]], settings: dict[str, Any], timeout: float
) -> list[dict[str, Any]]:
    """One run of the whole fleet, started at once; every process's result."""
    line = json.dumps({**settings, "start_at": time.time() + 1.0}) + "\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(line)
        process.stdin.flush()
    return [_read_line(process, timeout) for process in processes]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def _row(store: str, results: list[dict[str, Any]], counters: Any) -> list[str]:
    generations = max(r["generations"] for r in results)
    renewals = counters.sign_ins + counters.refreshes
    # Waits of processes that found the lock taken: longer than an uncontended take.
    waits = sorted(w for r in results for w in r["lock_waits"] if w > 0.005)
    firsts = [r["first"] for r in results]
    return [
        store,
        str(len(results)),
        str(counters.sign_ins),
        str(counters.refreshes),
        str(generations),
        f"{renewals / generations:.2f}",
        str(len(waits)),
        _ms(statistics.median(waits)) if waits else "-",
        _ms(max(waits)) if waits else "-",
        _ms(statistics.median(firsts)),
        _ms(max(r["slowest"] for r in results)),
        str(sum(r["failures"] for r in results)),
    ]


HEADER = [
    "store",
    "procs",
    "sign-ins",
    "refreshes",
    "lifetimes",
    "renewals/lifetime",
    "renewal waits",
    "wait p50 ms",
    "wait max ms",
    "first token p50 ms",
    "slowest get_token ms",
    "failures",
]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    head = " | ".join(cell.rjust(w) for cell, w in zip(HEADER, widths, strict=True))
    return "\n".join([head, "-+-".join("-" * w for w in widths), *lines])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fleet benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16, help="processes in the fleet")
    parser.add_argument("--lifetime", type=float, default=3.0, help="token lifetime, seconds")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds each fleet runs")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated stores")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return 0
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if unknown := set(stores) - set(STORES):
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    if args.workers < 1 or args.lifetime <= 0 or args.duration <= 0:
        parser.error("--workers, --lifetime and --duration must be positive")

    from indigo_auth.testing import Fault, IndigoEmulator

    emulator = IndigoEmulator({EMAIL: PASSWORD}, token_lifetime=args.lifetime, rate_limit=None)
    emulator.latency = LATENCY
    emulator.inject("signin", Fault.latency(SIGN_IN_LATENCY))
    timeout = 60.0 + args.duration
    rows: list[list[str]] = []
    notes: list[str] = []
    began = time.monotonic()
    with (
        emulator.serve_in_thread() as base_url,
        _redis_server() as redis_url,
        tempfile.TemporaryDirectory() as directory,
        _fleet(args.workers, timeout) as processes,
    ):
        for store in stores:
            if store == "redis" and redis_url is None:
                notes.append("redis: skipped, redis-server is not installed")
                continue
            settings = {
                "store": store,
                "base_url": base_url,
                "duration": args.duration,
                "path": os.path.join(directory, f"{uuid.uuid4().hex}.json"),
                "redis_url": redis_url,
                "prefix": f"fleet-{uuid.uuid4().hex[:8]}",
            }
            emulator.reset_counters()
            results = _round(processes, settings, timeout)
            rows.append(_row(store, results, emulator.counters))
    print(
        f"fleet of {args.workers} processes, token lifetime {args.lifetime:g}s, "
        f"{args.duration:g}s per store, sign-in latency {SIGN_IN_LATENCY * 1000:.0f} ms"
    )
    print(_table(rows))
    for note in notes:
        print(note)
    print(f"({time.monotonic() - began:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
