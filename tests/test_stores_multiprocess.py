"""Shared stores across real processes, against the emulator over loopback.

Many worker processes (``_support/store_worker.py``) ask for tokens through one
FileStore or RedisStore while the emulator rotates refresh tokens, signs in slowly
and lets tokens live a few seconds. Of all of them exactly one renews per token
lifetime; every process ends with a valid token; two accounts never mix.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from indigo_auth import AsyncTokenManager, FileStore
from indigo_auth.testing import Fault, IndigoEmulator

WORKER = Path(__file__).parent / "_support" / "store_worker.py"
ALICE = "alice@example.com"
BOB = "bob@example.com"
PASSWORDS = {ALICE: "alice password", BOB: "bob password"}
LIFETIME = 4.0
SIGN_IN_LATENCY = 0.8


@pytest.fixture
def emu() -> IndigoEmulator:
    emu = IndigoEmulator(PASSWORDS, token_lifetime=LIFETIME, rate_limit=None)
    emu.inject("signin", Fault.latency(SIGN_IN_LATENCY))
    return emu


@pytest.fixture
def base_url(emu: IndigoEmulator) -> Iterator[str]:
    with emu.serve_in_thread() as url:
        yield url


def spawn(settings: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(settings)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_fleet(settings: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    """Spawn ``run`` workers, wait until all of them are ready, then start them at once."""
    workers = [spawn(one) for one in settings]
    for worker in workers:
        assert read_line(worker, timeout=30.0) == {"ready": True}
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    return workers


def report(process: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"worker failed ({process.returncode}):\n{err}"
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines, f"worker printed nothing:\n{err}"
    result: dict[str, Any] = lines[-1]
    return result


def stop(process: subprocess.Popen[str]) -> None:
    """Kill a worker (if it still runs) and close its pipes."""
    process.kill()
    process.communicate(timeout=10)


def read_line(process: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """The next JSON line of a worker, within ``timeout`` seconds."""
    box: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert box and box[0], "the worker did not report in time"
    line: dict[str, Any] = json.loads(box[0])
    return line


def valid_at_the_end(emu: IndigoEmulator, result: dict[str, Any]) -> bool:
    """Whether the worker's last token was one of the emulator's, alive when the worker ended.

    Checked against the time the worker ended, not now: tokens live seconds here, and
    the slowest worker of a loaded machine may end a while after the others.
    """
    claims = emu.decode(result["final"])
    return bool(claims["iat"] <= result["ended_at"] + 1 and result["ended_at"] < claims["exp"])


def check_renewals(emu: IndigoEmulator, tokens: set[str], email: str) -> int:
    """Tokens of ``email`` follow one another a renewal apart; returns how many."""
    issued = sorted(emu.decode(t)["iat"] for t in tokens if emu.decode(t)["sub"] == email)
    assert issued, f"no token of {email}"
    gaps = [later - earlier for earlier, later in itertools.pairwise(issued)]
    # One renewal per lifetime: the manager renews at most half a lifetime before
    # expiry; two processes renewing the same token would issue two tokens at once.
    assert all(gap > 0.4 * LIFETIME for gap in gaps), gaps
    return len(issued)


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> dict[str, Any]:
    if request.param == "file":
        return {"kind": "file", "path": str(tmp_path / "cache" / "tokens.json")}
    redis_url: str = request.getfixturevalue("redis_url")
    return {"kind": "redis", "url": redis_url, "prefix": redis_prefix, "lock_ttl": 2.0}


class FileWatcher:
    """Reads the token file in a tight loop and counts the reads that do not parse."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.bad: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                time.sleep(0.001)
                continue
            self.reads += 1
            try:
                data = json.loads(raw)
                assert isinstance(data["tokens"], dict)
            except (ValueError, KeyError, TypeError, AssertionError):
                self.bad.append(raw[:200])
            time.sleep(0.0005)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_fleet_shares_one_renewal_per_lifetime(
    emu: IndigoEmulator, base_url: str, store_spec: dict[str, Any]
) -> None:
    """10 processes, two accounts: one sign-in per account, then one refresh per
    lifetime per account, across a renewal or two; every process ends valid."""
    emails = [ALICE] * 8 + [BOB] * 2
    common = {"mode": "run", "base_url": base_url, "store": store_spec}
    watcher = FileWatcher(Path(store_spec["path"])) if store_spec["kind"] == "file" else None
    if watcher is not None:
        watcher.__enter__()
    try:
        workers = start_fleet(
            [{**common, "email": e, "password": PASSWORDS[e], "run_for": 4.5} for e in emails]
        )
        results = [report(w) for w in workers]
    finally:
        if watcher is not None:
            watcher.__exit__()

    assert emu.counters.revocations == 0
    for email, result in zip(emails, results, strict=True):
        assert valid_at_the_end(emu, result)
        for token in result["tokens"]:
            assert emu.decode(token)["sub"] == email, "a process got another account's token"
        assert len(result["tokens"]) >= 2, "the run did not cross a renewal"

    seen = {t for r in results for t in r["tokens"]}
    counters = emu.counters
    assert counters.sign_ins == 2, "one sign-in per account"
    renewals = check_renewals(emu, seen, ALICE) + check_renewals(emu, seen, BOB)
    assert counters.sign_ins + counters.refreshes == renewals == counters.tokens_issued
    assert counters.refreshes >= 2
    assert counters.refusals == 0, "nobody used a rotated-out refresh token"
    assert sum(r["sign_ins"] + r["refreshes"] for r in results) == renewals
    if watcher is not None:
        assert watcher.reads > 50
        assert watcher.bad == []
        assert os.stat(store_spec["path"]).st_mode & 0o777 == 0o600


def test_holder_killed_mid_renewal_blocks_no_longer_than_the_lock(
    emu: IndigoEmulator, base_url: str, store_spec: dict[str, Any]
) -> None:
    """A process killed with the lock in the middle of a sign-in frees the fleet:
    at once for a file (the kernel drops the lock), within the TTL for Redis."""
    account = {"email": ALICE, "password": PASSWORDS[ALICE], "base_url": base_url}
    emu.clear_faults()
    emu.inject("signin", Fault.latency(5.0), times=1)  # the holder's sign-in hangs
    holder = spawn({**account, "mode": "hold", "store": store_spec, "sign_in": True})
    try:
        assert read_line(holder) == {"locked": True}
        workers = start_fleet([{**account, "mode": "run", "store": store_spec, "run_for": 0.2}] * 8)
        time.sleep(0.5)
        killed_at = time.time()
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        stop(holder)
    results = [report(w) for w in workers]

    assert len({r["final"] for r in results}) == 1
    assert all(valid_at_the_end(emu, r) for r in results)
    ttl = store_spec.get("lock_ttl", 0.0)
    slowest = max(r["first_at"] for r in results) - killed_at
    assert slowest < ttl + 2.0, f"waiters got a token {slowest:.2f}s after the kill"
    # The dead holder's sign-in may have reached the server; the rest made one.
    assert emu.counters.sign_ins <= 2
    assert sum(r["sign_ins"] for r in results) == 1


@pytest.mark.anyio
async def test_waiting_on_the_file_lock_keeps_the_loop_responsive(
    emu: IndigoEmulator, base_url: str, tmp_path: Path
) -> None:
    """While another process holds the file lock, the waiting loop lags < 50 ms."""
    emu.clear_faults()
    path = tmp_path / "tokens.json"
    spec = {"kind": "file", "path": str(path)}
    account = {"email": ALICE, "password": PASSWORDS[ALICE], "base_url": base_url}
    holder = spawn({**account, "mode": "hold", "store": spec, "hold_for": 1.5})
    try:
        assert await anyio.to_thread.run_sync(read_line, holder) == {"locked": True}
        store = FileStore(path)
        # Made before the probe starts: building an httpx client loads certificates,
        # which takes a while and is not what this test measures.
        http = httpx.AsyncClient()
        manager = AsyncTokenManager(
            ALICE, PASSWORDS[ALICE], base_url=base_url, store=store, http_client=http
        )
        lags: list[float] = []
        token: str | None = None

        async def probe() -> None:
            while token is None:
                before = time.perf_counter()
                await anyio.sleep(0.005)
                lags.append(time.perf_counter() - before - 0.005)

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            token = await manager.get_token()
        waited = time.perf_counter() - began
        await manager.aclose()
        await http.aclose()
    finally:
        stop(holder)
    assert emu.is_valid(token)
    assert waited > 0.5, "the manager did not wait for the holder"
    assert len(lags) > 20
    assert max(lags) < 0.05, f"loop lag {max(lags) * 1000:.1f} ms"
