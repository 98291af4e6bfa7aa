"""The physical limits: what a workload costs with no token management at all."""

from __future__ import annotations

import asyncio

import httpx

from . import Clients, Peer, Setup
from ._signin import sign_in

__all__ = ["OneSharedRequest", "StaticToken"]


class StaticToken(Peer):
    """A token that never needs renewing: a bare coroutine returning a cached string,
    and requests with a static ``Authorization`` header."""

    name = "baseline"
    server = "indigo"

    def __init__(self, setup: Setup, token: str, *, server: str = "indigo") -> None:
        self.server = server
        super().__init__(setup)
        self._token = token

    async def start(self) -> None:
        self.clients = Clients(self.setup, headers={"Authorization": f"Bearer {self._token}"})

    async def get_token(self) -> str:
        return self._token

    async def request(self) -> int:
        response = await self.clients.next().get(self.resource_url)
        return response.status_code

    async def close(self) -> None:
        await self.clients.aclose()


class OneSharedRequest(Peer):
    """The cold-start limit: one sign-in request whose result every caller awaits."""

    name = "baseline"
    server = "indigo"

    async def start(self) -> None:
        self._http = httpx.AsyncClient(transport=self.setup.async_transport(), timeout=60.0)
        self._future: asyncio.Future[tuple[str, float]] | None = None

    async def get_token(self) -> str:
        future = self._future
        if future is None:
            future = self._future = asyncio.ensure_future(
                sign_in(self._http, self.setup.url, self.setup.email)
            )
        return (await future)[0]

    async def request(self) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        await self._http.aclose()
