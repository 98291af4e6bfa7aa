"""azure-core's ``AsyncBearerTokenCredentialPolicy`` over an ``AsyncTokenCredential`` that signs in.

The policy is the part of azure-core that caches the token, locks around its renewal
and handles a 401; the credential is what a user writes for a service azure-identity
does not know: it calls the Indigo sign-in through httpx and returns an
``AccessTokenInfo`` with ``refresh_on`` M seconds before expiry. The policy sends
through a small httpx sender in place of an azure transport, so every peer's requests
go through the same HTTP client library.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
from azure.core.rest import HttpRequest

from . import Clients, Peer, Setup, record_wait
from ._signin import sign_in

__all__ = ["AzureCorePolicy"]

_SCOPE = "https://api.indigobrowser.com/.default"


class IndigoCredential:
    """An ``AsyncTokenCredential`` (and ``AsyncSupportsTokenInfo``) for the Indigo sign-in."""

    def __init__(self, client: httpx.AsyncClient, setup: Setup) -> None:
        self._client = client
        self._setup = setup

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        token, exp = await sign_in(self._client, self._setup.url, self._setup.email)
        return AccessTokenInfo(token, int(exp), refresh_on=int(exp - self._setup.margin))

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        token, exp = await sign_in(self._client, self._setup.url, self._setup.email)
        return AccessToken(token, int(exp))

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> IndigoCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Response:
    """What the policy reads of a response: status and headers."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers = response.headers


class _HttpxSender:
    """The next policy in the pipeline: sends the request with httpx."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    async def send(self, request: PipelineRequest[HttpRequest]) -> PipelineResponse[Any, Any]:
        http_request = request.http_request
        response = await self._clients.next().request(
            http_request.method, http_request.url, headers=dict(http_request.headers)
        )
        return PipelineResponse(http_request, _Response(response), request.context)  # type: ignore[arg-type]


class _TimedPolicy(AsyncBearerTokenCredentialPolicy):  # type: ignore[type-arg]
    async def on_request(self, request: PipelineRequest[HttpRequest]) -> None:
        started = time.perf_counter()
        try:
            await super().on_request(request)
        finally:
            record_wait(time.perf_counter() - started)


class AzureCorePolicy(Peer):
    name = "azure-core"
    server = "indigo"
    note = (
        "azure-core: `AsyncBearerTokenCredentialPolicy` over a user-written "
        "`AsyncTokenCredential` returning `AccessTokenInfo(refresh_on=exp - M)`; the "
        "policy adds 0-60 s of jitter to `refresh_on`, capped at `expires_on`, so with "
        "tokens of a few seconds it renews at expiry, and `expires_on` is whole seconds. "
        "On a 401 it drops the token and retries only on a claims challenge. Its "
        "get-token equivalent is `policy.on_request()` (which also sets the header)."
    )

    async def start(self) -> None:
        setup = self.setup
        token_client = httpx.AsyncClient(
            transport=setup.async_transport(), limits=setup.limits, timeout=60.0
        )
        self.credential = IndigoCredential(token_client, setup)
        cls = _TimedPolicy if setup.instrument else AsyncBearerTokenCredentialPolicy
        self.policy = cls(self.credential, _SCOPE)
        self.clients = Clients(setup)
        self.policy.next = _HttpxSender(self.clients)  # type: ignore[assignment]
        self._probe = self._pipeline_request(self.resource_url)

    @staticmethod
    def _pipeline_request(url: str) -> PipelineRequest[HttpRequest]:
        # enforce_https=False: the benchmark's server is plain HTTP on loopback.
        return PipelineRequest(HttpRequest("GET", url), PipelineContext(None, enforce_https=False))

    async def get_token(self) -> str:
        request = self._probe
        await self.policy.on_request(request)
        return str(request.http_request.headers["Authorization"][7:])

    def hot_call(self) -> tuple[Callable[[], Any], bool]:
        return functools.partial(self.policy.on_request, self._probe), True

    async def request(self) -> int:
        response = await self.policy.send(self._pipeline_request(self.resource_url))
        return int(response.http_response.status_code)

    async def close(self) -> None:
        await self.clients.aclose()
        await self.credential.close()
