"""The default store: one process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from .._runtime import LoopLocal
from .._token import TokenState

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps tokens in this process's memory.

    Managers that share one ``MemoryStore`` (say, one per worker task, or a sync
    and an async manager) share one sign-in. The default store of every manager.
    """

    def __init__(self) -> None:
        self._states: dict[str, TokenState] = {}
        self._locks: dict[str, LoopLocal[anyio.Lock]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(keys={len(self._states)})"

    async def load(self, key: str) -> TokenState | None:
        return self._states.get(key)

    async def save(self, key: str, state: TokenState) -> None:
        self._states[key] = state

    async def delete(self, key: str) -> None:
        self._states.pop(key, None)

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        local = self._locks.get(key)
        if local is None:
            local = self._locks[key] = LoopLocal(anyio.Lock)
        async with local.get():
            yield

    async def aclose(self) -> None:
        return None
