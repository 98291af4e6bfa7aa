"""httpx-auth's ``OAuth2ClientCredentials``: a token cache behind an httpx auth."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
from httpx_auth import OAuth2, OAuth2ClientCredentials

from servers import CLIENT_SECRET

from . import Clients, Peer, record_wait

__all__ = ["HttpxAuthClientCredentials"]


class _TimedClientCredentials(OAuth2ClientCredentials):  # type: ignore[misc]
    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        started = time.perf_counter()
        flow = super().auth_flow(request)
        authed = next(flow)
        record_wait(time.perf_counter() - started)
        response = yield authed
        try:
            flow.send(response)
        except StopIteration:
            return


class HttpxAuthClientCredentials(Peer):
    name = "httpx-auth"
    server = "oauth"
    note = (
        "httpx-auth: `httpx.AsyncClient(auth=OAuth2ClientCredentials(..., "
        "early_expiry=M))`; it has only a synchronous flow, so it fetches tokens with a "
        "blocking `httpx.Client` inside the event loop (every task stalls meanwhile), "
        "and its token cache is process-wide. No 401 handling."
    )

    async def start(self) -> None:
        setup = self.setup
        OAuth2.token_cache.clear()
        cls = _TimedClientCredentials if setup.instrument else OAuth2ClientCredentials
        self._sync = httpx.Client(transport=setup.sync_transport(), timeout=60.0)
        self.auth = cls(
            setup.url + "/oauth/token",
            client_id=setup.email,
            client_secret=CLIENT_SECRET,
            early_expiry=setup.margin,
            client=self._sync,
        )
        self.clients = Clients(setup, auth=self.auth)

    async def get_token(self) -> str:
        auth = self.auth
        return str(
            OAuth2.token_cache.get_token(
                auth.state, early_expiry=auth.early_expiry, on_missing_token=auth.request_new_token
            )
        )

    def hot_call(self) -> tuple[Callable[[], Any], bool]:
        auth = self.auth
        call = functools.partial(
            OAuth2.token_cache.get_token,
            auth.state,
            early_expiry=auth.early_expiry,
            on_missing_token=auth.request_new_token,
        )
        return call, False

    async def request(self) -> int:
        response = await self.clients.next().get(self.resource_url)
        return response.status_code

    async def close(self) -> None:
        await self.clients.aclose()
        self._sync.close()
        OAuth2.token_cache.clear()
