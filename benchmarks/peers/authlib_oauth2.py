"""Authlib's ``AsyncOAuth2Client``: auto-update of a client-credentials token, with leeway."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.httpx_client import oauth2_client as _authlib_httpx

from servers import CLIENT_SECRET

from . import Peer, record_wait

__all__ = ["AuthlibOAuth2", "authlib_httpx_module"]


def authlib_httpx_module() -> Any:
    """The httpx Authlib runs on: ``httpx2`` where it is installed, else ``httpx``."""
    return _authlib_httpx.httpx2


class _TimedClient(AsyncOAuth2Client):  # type: ignore[misc]
    async def ensure_active_token(self, token: Any) -> None:
        started = time.perf_counter()
        try:
            await super().ensure_active_token(token)
        finally:
            record_wait(time.perf_counter() - started)


class AuthlibOAuth2(Peer):
    name = "Authlib"
    server = "oauth"
    note = (
        "Authlib: one `AsyncOAuth2Client(grant_type='client_credentials', "
        "token_endpoint=..., leeway=M)` shared by all tasks, which re-fetches an expired "
        "token under its `anyio.Lock`. A client without a token raises "
        "`MissingTokenError`, so the cold start is an expired token in the client (its "
        "auto-update path). Authlib's `expires_at` is whole seconds. No 401 handling."
    )

    async def start(self) -> None:
        setup = self.setup
        mod = authlib_httpx_module()
        transport = None if setup.mock is None else mod.MockTransport(setup.mock)
        cls = _TimedClient if setup.instrument else AsyncOAuth2Client
        self.client = cls(
            client_id=setup.email,
            client_secret=CLIENT_SECRET,
            token_endpoint=setup.url + "/oauth/token",
            grant_type="client_credentials",
            leeway=setup.margin,
            token={"access_token": "cold", "token_type": "Bearer", "expires_at": 0},
            transport=transport,
            limits=mod.Limits(
                max_connections=setup.limits.max_connections,
                max_keepalive_connections=setup.limits.max_keepalive_connections,
            ),
            timeout=60.0,
        )

    async def get_token(self) -> str:
        client = self.client
        await client.ensure_active_token(client.token)
        return str(client.token["access_token"])

    def hot_call(self) -> tuple[Callable[[], Any], bool]:
        client = self.client
        return functools.partial(AsyncOAuth2Client.ensure_active_token, client, client.token), True

    async def request(self) -> int:
        response = await self.client.get(self.resource_url)
        return int(response.status_code)

    async def close(self) -> None:
        await self.client.aclose()
