"""indigo-auth itself: ``AsyncTokenManager`` as ``httpx.AsyncClient(auth=manager)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from indigo_auth import AsyncTokenManager
from servers import PASSWORD

from . import Clients, Peer, Setup, ssl_context

__all__ = ["IndigoAuth"]


class IndigoAuth(Peer):
    """indigo-auth, inside ``async with manager`` (background refresh) or lazily."""

    server = "indigo"
    note = (
        "indigo-auth: `AsyncTokenManager(refresh_margin=M)`, used as "
        "`httpx.AsyncClient(auth=manager)` (8 clients share one manager); inside "
        "`async with manager` (background refresh ahead) unless marked lazy; waiters are "
        "`manager.stats.waiters`. Every peer's requests are spread over 8 httpx clients "
        "where its design allows (Authlib's token lives in its one client), since one "
        "client carrying hundreds of concurrent requests spends seconds in its pool."
    )

    def __init__(self, setup: Setup, *, background: bool = True, own_client: bool = False) -> None:
        super().__init__(setup)
        self.background = background
        self.own_client = own_client
        self.name = "indigo-auth" if background else "indigo-auth (lazy)"

    async def start(self) -> None:
        setup = self.setup
        token_client = None
        transport = setup.async_transport()
        if transport is not None or self.own_client:
            # The manager's own client is made on its first renewal; this one, like
            # every other peer's, is made before the clock starts.
            token_client = httpx.AsyncClient(transport=transport, verify=ssl_context())
        self._token_client = token_client
        self.manager = AsyncTokenManager(
            setup.email,
            PASSWORD,
            base_url=setup.url,
            refresh_margin=setup.margin,
            http_client=token_client,
        )
        if self.background:
            await self.manager.__aenter__()
        self.clients = Clients(setup, auth=self.manager)
        self._waiters0 = 0

    async def get_token(self) -> str:
        return await self.manager.get_token()

    def hot_call(self) -> tuple[Callable[[], Any], bool]:
        return self.manager.get_token, True

    async def request(self) -> int:
        response = await self.clients.next().get(self.resource_url)
        return response.status_code

    def reset_waiters(self) -> None:
        self._waiters0 = self.manager.stats.waiters

    def waiters(self) -> int | None:
        return self.manager.stats.waiters - self._waiters0

    async def close(self) -> None:
        await self.clients.aclose()
        if self.background:
            await self.manager.__aexit__(None, None, None)
        else:
            await self.manager.aclose()
        if self._token_client is not None:
            await self._token_client.aclose()
