"""Checks every TokenStore must pass, shared by the tests of each store."""

from __future__ import annotations

import anyio

from indigo_auth import TokenStore


async def assert_lock_excludes(first: TokenStore, second: TokenStore) -> None:
    """While ``first`` holds the lock on a key, neither another store on the same
    backend nor another task of ``first`` gets it; both do once it is released."""
    order: list[str] = []
    held, release = anyio.Event(), anyio.Event()

    async def holder() -> None:
        async with first.lock("k"):
            order.append("first in")
            held.set()
            await release.wait()
            order.append("first out")

    async def waiter(store: TokenStore, name: str) -> None:
        await held.wait()
        async with store.lock("k"):
            order.append(f"{name} in")

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        tg.start_soon(waiter, second, "other store")
        tg.start_soon(waiter, first, "same store")
        await held.wait()
        await anyio.sleep(0.3)
        assert order == ["first in"]
        release.set()
    assert order[:2] == ["first in", "first out"]
    assert sorted(order[2:]) == ["other store in", "same store in"]
