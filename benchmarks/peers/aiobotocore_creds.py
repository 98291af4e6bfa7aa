"""aiobotocore's refreshable credentials, with a refresh function that signs in."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import httpx
from aiobotocore.credentials import AioDeferredRefreshableCredentials

from . import Clients, Peer, bearer_auth
from ._signin import sign_in

__all__ = ["AiobotocoreCredentials"]


class AiobotocoreCredentials(Peer):
    name = "aiobotocore"
    server = "indigo"
    note = (
        "aiobotocore: `AioDeferredRefreshableCredentials(refresh_using=sign_in)` with "
        "the advisory refresh at M and the mandatory one at indigo-auth's floor "
        "(past the advisory point one caller renews while the others keep the old "
        "token); the token is `(await creds.get_frozen_credentials()).token`, put on "
        "requests by a user-written httpx auth. No 401 handling."
    )

    async def start(self) -> None:
        setup = self.setup
        self._http = httpx.AsyncClient(
            transport=setup.async_transport(), limits=setup.limits, timeout=60.0
        )

        async def refresh() -> dict[str, str]:
            token, exp = await sign_in(self._http, setup.url, setup.email)
            expiry = datetime.datetime.fromtimestamp(exp, tz=datetime.timezone.utc)
            return {
                "access_key": "indigo",
                "secret_key": "unused",
                "token": token,
                "expiry_time": expiry.isoformat(),
            }

        class Credentials(AioDeferredRefreshableCredentials):  # type: ignore[misc]
            # The deferred class takes no timeouts; these are the attributes botocore's
            # own constructor sets from advisory_timeout and mandatory_timeout.
            _advisory_refresh_timeout = setup.margin
            _mandatory_refresh_timeout = setup.floor

        self.credentials = Credentials(refresh_using=refresh, method="indigo-signin")
        self.clients = Clients(setup, auth=bearer_auth(setup, self.get_token))

    async def get_token(self) -> str:
        frozen = await self.credentials.get_frozen_credentials()
        return str(frozen.token)

    def hot_call(self) -> tuple[Callable[[], Any], bool]:
        return self.credentials.get_frozen_credentials, True

    async def request(self) -> int:
        response = await self.clients.next().get(self.resource_url)
        return response.status_code

    async def close(self) -> None:
        await self.clients.aclose()
        await self._http.aclose()
