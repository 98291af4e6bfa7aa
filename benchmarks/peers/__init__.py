"""The token managers compared, each behind the same small interface.

Every peer is driven the way its documentation recommends, against the same token
server, with a comparable refresh margin. A :class:`Peer` offers:

- :meth:`Peer.get_token`: the peer's "give me a valid token" (cached or renewed);
- :meth:`Peer.request`: one authenticated ``GET`` of the protected resource, made the
  way a user of that peer makes it (its httpx auth, its client, or its pipeline);
- :meth:`Peer.token_wait`: how long the current task's last request waited for its
  token, for peers that do not count their own waiters.
"""

from __future__ import annotations

import abc
import contextvars
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "BearerFrom",
    "Clients",
    "Peer",
    "Setup",
    "TimedBearerFrom",
    "TokenWait",
    "bearer_auth",
    "record_wait",
    "ssl_context",
    "start_wait",
]


@dataclass(frozen=True, slots=True)
class Setup:
    """What every peer is given.

    Attributes:
        url: the token server's base URL (the emulator and the OAuth server share it).
        email: the account (Indigo) or client id (OAuth) this peer uses alone.
        margin: seconds before expiry at which the peer should renew.
        floor: seconds before expiry at which callers must wait for the renewal
            (aiobotocore's mandatory refresh; indigo-auth derives its own).
        mock: an in-memory handler answering every route; ``None`` for the real server.
        limits: connection limits of the clients that carry the requests.
        instrument: time each request's token step (workload 2 only: it costs time).
        fanout: httpx clients that share the requests, where the peer allows it: one
            client carrying hundreds of concurrent requests spends seconds in its
            connection pool's bookkeeping, which is httpx's cost, not the peer's.
    """

    url: str
    email: str
    margin: float
    floor: float
    mock: Callable[[Any], Any] | None = None
    limits: httpx.Limits = field(
        # No cap on connections: a queue of thousands of requests in one httpx pool
        # costs seconds of bookkeeping, which would be measured instead of the peer.
        default_factory=lambda: httpx.Limits(max_connections=None, max_keepalive_connections=200)
    )
    instrument: bool = False
    fanout: int = 8

    def async_transport(self) -> httpx.AsyncBaseTransport | None:
        return None if self.mock is None else httpx.MockTransport(self.mock)

    def sync_transport(self) -> httpx.BaseTransport | None:
        return None if self.mock is None else httpx.MockTransport(self.mock)


@functools.cache
def ssl_context() -> ssl.SSLContext:
    # Each client would otherwise load the CA bundle again (tens of ms here), for
    # nothing: every server in the benchmarks is plain HTTP on loopback.
    return httpx.create_ssl_context()


class Clients:
    """``setup.fanout`` httpx clients taking turns, sharing one TLS context."""

    def __init__(self, setup: Setup, *, count: int | None = None, **kwargs: Any) -> None:
        self.all = [
            httpx.AsyncClient(
                transport=setup.async_transport(),
                limits=setup.limits,
                verify=ssl_context(),
                **kwargs,
            )
            for _ in range(max(1, setup.fanout if count is None else count))
        ]
        self._turn = 0

    def next(self) -> httpx.AsyncClient:
        turn = self._turn = (self._turn + 1) % len(self.all)
        return self.all[turn]

    async def aclose(self) -> None:
        for client in self.all:
            await client.aclose()


class TokenWait:
    """Per-task seconds spent getting a token, summed over one request."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


_WAIT: contextvars.ContextVar[TokenWait | None] = contextvars.ContextVar("token_wait", default=None)


def start_wait() -> TokenWait:
    """Start measuring the current task's token wait (the workload calls this)."""
    holder = TokenWait()
    _WAIT.set(holder)
    return holder


def record_wait(seconds: float) -> None:
    holder = _WAIT.get()
    if holder is not None:
        holder.seconds += seconds


class BearerFrom(httpx.Auth):
    """The httpx auth a user writes around a peer that has none: a bearer from a coroutine.

    No 401 handling: none of these peers has one to offer.
    """

    def __init__(self, get_token: Callable[[], Any]) -> None:
        self._get_token = get_token

    async def async_auth_flow(self, request: httpx.Request) -> Any:
        token = await self._get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class TimedBearerFrom(BearerFrom):
    """:class:`BearerFrom`, timing the token step (for workload 2)."""

    async def async_auth_flow(self, request: httpx.Request) -> Any:
        started = time.perf_counter()
        token = await self._get_token()
        record_wait(time.perf_counter() - started)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def bearer_auth(setup: Setup, get_token: Callable[[], Any]) -> BearerFrom:
    return TimedBearerFrom(get_token) if setup.instrument else BearerFrom(get_token)


class Peer(abc.ABC):
    """One token manager, set up against one server."""

    #: the row label in the tables
    name: str = ""
    #: which server it talks to: "indigo" (the emulator) or "oauth"
    server: str = "indigo"
    #: a note printed under the tables
    note: str = ""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.resource_url = setup.url + (
            "/oauth/resource" if self.server == "oauth" else "/workspace/folders"
        )

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients; no token is fetched here."""

    @abc.abstractmethod
    async def get_token(self) -> str:
        """A valid token, the peer's way (cached, or fetched now)."""

    @abc.abstractmethod
    async def request(self) -> int:
        """One authenticated GET of the protected resource; the HTTP status."""

    def hot_call(self) -> tuple[Callable[[], Any], bool]:
        """The peer's own "cached token" call, without this adapter around it, and
        whether it must be awaited (for the hot-path timing)."""
        return self.get_token, True

    def waiters(self) -> int | None:
        """Callers that waited on a renewal, where the peer counts them itself."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close what :meth:`start` opened."""
