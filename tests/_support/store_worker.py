"""A bot process for the multi-process store tests.

Run as ``python store_worker.py '<json settings>'``. Prints JSON lines on stdout:
``{"ready": true}`` once imported (a ``run`` worker then waits for a line on stdin,
so that a test starts a whole fleet at once), ``{"locked": true}`` when a ``hold``
worker has the store's lock, and one final ``{"tokens": [...], ...}`` report from
a ``run`` worker.

Modes:
- ``run``: a manager on the shared store asks for a token every ``interval``
  seconds for ``run_for`` seconds from the go, then waits for a
  renewal in flight to land and reports every distinct token it was handed.
- ``hold``: take the account's renewal lock in the store, say so, then either hold
  it ``hold_for`` seconds and exit, or (``sign_in``) start a sign-in and wait to be
  killed in the middle of it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
import httpx

from indigo_auth import AsyncTokenManager, FileStore, MemoryStore, RedisStore, TokenStore
from indigo_auth._api import md5_hex
from indigo_auth._stores import store_key


def make_store(spec: dict[str, Any]) -> TokenStore:
    kind = spec["kind"]
    if kind == "file":
        return FileStore(spec["path"])
    if kind == "redis":
        return RedisStore(spec["url"], spec["prefix"], lock_ttl=spec.get("lock_ttl", 30.0))
    return MemoryStore()


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def idle(manager: AsyncTokenManager) -> bool:
    s = manager.stats
    return s.renewals <= s.sign_ins + s.refreshes + s.adopted + s.failures


async def run(settings: dict[str, Any]) -> None:
    store = make_store(settings["store"])
    manager = AsyncTokenManager(
        settings["email"], settings["password"], base_url=settings["base_url"], store=store
    )
    tokens: list[str] = []
    first_at: float | None = None
    waits: list[float] = []
    stop_at = time.time() + settings["run_for"]
    while True:
        began = time.perf_counter()
        token = await manager.get_token()
        waits.append(time.perf_counter() - began)
        if first_at is None:
            first_at = time.time()
        if not tokens or tokens[-1] != token:
            tokens.append(token)
        if time.time() >= stop_at:
            break
        await anyio.sleep(settings.get("interval", 0.05))
    # A renewal may be in flight in the background: let it land, so that every
    # token the emulator issued is one some process holds.
    with anyio.move_on_after(10.0):
        while not idle(manager):
            await anyio.sleep(0.02)
    token = await manager.get_token()
    ended_at = time.time()
    if tokens[-1] != token:
        tokens.append(token)
    stats = manager.stats
    await manager.aclose()
    await store.aclose()
    emit(
        {
            "tokens": tokens,
            "final": token,
            "ended_at": ended_at,
            "first_at": first_at,
            "max_wait": max(waits),
            "sign_ins": stats.sign_ins,
            "refreshes": stats.refreshes,
            "adopted": stats.adopted,
        }
    )


async def hold(settings: dict[str, Any]) -> None:
    store = make_store(settings["store"])
    manager = AsyncTokenManager(
        settings["email"], settings["password"], base_url=settings["base_url"], store=store
    )
    key = store_key(manager.base_url, manager.email, None)
    async with store.lock(key):
        emit({"locked": True})
        if settings.get("sign_in"):
            # A renewal of our own, killed midway by the test.
            async with httpx.AsyncClient(base_url=manager.base_url, timeout=60) as client:
                await client.post(
                    "/user/signin",
                    json={"email": manager.email, "password": md5_hex(settings["password"])},
                )
            await anyio.sleep(60)
        else:
            await anyio.sleep(settings["hold_for"])
    await store.aclose()
    emit({"released": True})


def main() -> None:
    settings = json.loads(sys.argv[1])
    if settings["mode"] == "run":
        emit({"ready": True})
        sys.stdin.readline()
    target = run if settings["mode"] == "run" else hold
    anyio.run(target, settings, backend=settings.get("backend", "asyncio"))


if __name__ == "__main__":
    main()
