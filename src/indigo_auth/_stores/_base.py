"""The contract every token store fulfils."""

from __future__ import annotations

import hashlib
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from .._token import TokenState

__all__ = ["TokenStore", "store_key"]


def store_key(base_url: str, email: str, workspace_id: str | None) -> str:
    """The key of one account's token: base URL, email and workspace, hashed.

    Never derived from the password. Hashed so that keys and file names neither
    reveal the email nor depend on its characters.
    """
    material = "\x00".join(
        (base_url.rstrip("/").lower(), email.strip().lower(), workspace_id or "")
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


@runtime_checkable
class TokenStore(Protocol):
    """Keeps token state for keys, and a lock around check → renew → write.

    A manager renews like this, so that of all managers sharing a store exactly one
    renews and the others, once they have the lock, find its token::

        async with store.lock(key):
            state = await store.load(key)
            if state is None or it is stale:
                state = <refresh with state.refresh_token>
                # refused? a sibling may have rotated the refresh token:
                # load again and take its token, else sign in
                await store.save(key, state)

    Keys come from :func:`store_key` (base URL, email, workspace), never from the
    password. Implement these five methods to keep tokens in another backend;
    :class:`MemoryStore` (one process), :class:`FileStore` (one machine) and
    :class:`RedisStore` (a fleet) are the ones that ship. The lock must exclude
    every holder that shares the backend, tasks of one process included, must be
    released when its holder is cancelled, and must not block the event loop while
    it waits.
    """

    async def load(self, key: str) -> TokenState | None:
        """The state stored under ``key``, or ``None``. Never raises for bad data."""
        ...

    async def save(self, key: str, state: TokenState) -> None:
        """Store ``state`` under ``key``, replacing what was there."""
        ...

    async def delete(self, key: str) -> None:
        """Forget the state under ``key`` (after a revoke)."""
        ...

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """A lock on ``key`` shared by everyone using this store's backend."""
        ...

    async def aclose(self) -> None:
        """Release what the store opened (connections, file handles)."""
        ...
