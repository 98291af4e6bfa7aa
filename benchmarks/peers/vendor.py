"""The vendor's sample pattern: sign in whenever there is no valid token, no lock."""

from __future__ import annotations

import time

from . import Clients, Peer, bearer_auth
from ._signin import sign_in

__all__ = ["VendorPattern"]


class VendorPattern(Peer):
    name = "vendor pattern"
    server = "indigo"
    note = (
        "vendor pattern: the sample's sign-in wrapped in `if no valid token: sign in` "
        "(valid = more than M seconds left), no lock, no 401 handling."
    )

    async def start(self) -> None:
        setup = self.setup
        # Many clients for the sign-ins: each caller sends its own, all at once.
        self._http = Clients(setup, count=64, timeout=60.0)
        self._token: str | None = None
        self._exp = 0.0
        self.clients = Clients(setup, auth=bearer_auth(setup, self.get_token))

    async def get_token(self) -> str:
        token = self._token
        if token is not None and time.time() < self._exp - self.setup.margin:
            return token
        client = self._http.next()
        token, self._exp = await sign_in(client, self.setup.url, self.setup.email)
        self._token = token
        return token

    async def request(self) -> int:
        response = await self.clients.next().get(self.resource_url)
        return response.status_code

    async def close(self) -> None:
        await self.clients.aclose()
        await self._http.aclose()
