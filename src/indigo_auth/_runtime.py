"""What the manager needs to know about the event loop it is running in.

anyio primitives and httpx connections belong to one event loop. A manager outlives
loops (``asyncio.run`` twice, a test suite on asyncio then Trio), so everything it
keeps per loop is keyed by the loop's identity and rebuilt when that changes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import sniffio

__all__ = ["LoopLocal", "current_loop", "spawn_detached"]

T = TypeVar("T")

_background: set[Any] = set()


def current_loop() -> object:
    """The running event loop (asyncio) or run (Trio), as an identity to compare.

    Called by every caller that waits on a renewal, so the asyncio case is one C call.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    raise RuntimeError("no asyncio event loop or Trio run in this thread")


def spawn_detached(fn: Callable[[], Awaitable[None]], name: str) -> None:
    """Run ``fn()`` in a task that belongs to no caller.

    Cancelling the caller that spawned it does not cancel it; it ends with its
    event loop at the latest. ``fn`` must not raise: it records its own outcome.
    """
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        async def system_task() -> None:
            await fn()

        trio.lowlevel.spawn_system_task(system_task, name=name)
        return
    import asyncio

    async def task_body() -> None:
        await fn()

    task = asyncio.get_running_loop().create_task(task_body(), name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)


class LoopLocal(Generic[T]):
    """A value made anew for each event loop, such as a lock or an HTTP client."""

    __slots__ = ("_factory", "_loop", "_value")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._loop: weakref.ReferenceType[Any] | None = None
        self._value: T | None = None

    def get(self) -> T:
        loop = current_loop()
        if self._value is None or self._loop is None or self._loop() is not loop:
            self._value = self._factory()
            self._loop = weakref.ref(loop)
        return self._value

    def peek(self) -> T | None:
        """The value of the running loop, or ``None`` if it has none yet."""
        if self._value is not None and self._loop is not None and self._loop() is current_loop():
            return self._value
        return None

    def clear(self) -> None:
        self._loop = None
        self._value = None
