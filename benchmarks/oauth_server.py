"""A small OAuth 2 token endpoint and protected resource, for the peers that speak only OAuth.

Authlib's ``AsyncOAuth2Client`` and httpx-auth's ``OAuth2ClientCredentials`` cannot talk
to the Indigo sign-in (a JSON body with an MD5 digest, an envelope around the answer),
so they are measured against this ASGI app instead. It behaves like the emulator where
the benchmarks look: the same latency on the token endpoint, tokens that live
``token_lifetime`` seconds to the millisecond, a protected resource that answers 401
to an expired or revoked token, and counters of what it served.

Routes:
    ``POST /oauth/token``: the client-credentials grant (RFC 6749 4.4), client
    authentication by HTTP Basic or in the form; answers
    ``{"access_token", "token_type": "Bearer", "expires_in"}``.
    ``GET /oauth/resource``: the protected resource (``Authorization: Bearer``).
    ``POST /oauth/revoke``: revoke one token (RFC 7009, ``token=`` in the form).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

__all__ = ["OAuthCounters", "OAuthServer"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PRUNE_AT = 4096


@dataclass(slots=True)
class OAuthCounters:
    """What the OAuth server served since the last reset."""

    token_requests: int = 0
    tokens_issued: int = 0
    resource_requests: int = 0
    unauthorized: int = 0
    revocations: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "token_requests": self.token_requests,
            "tokens_issued": self.tokens_issued,
            "resource_requests": self.resource_requests,
            "unauthorized": self.unauthorized,
            "revocations": self.revocations,
        }


@dataclass(slots=True)
class OAuthServer:
    """The ASGI app. Settings may change at any time (the control endpoint does)."""

    clients: dict[str, str]
    token_lifetime: float = 1800.0
    token_latency: float = 0.0
    resource_latency: float = 0.0
    counters: OAuthCounters = field(default_factory=OAuthCounters)
    _tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (wall clock)
    _revoked: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.counters = OAuthCounters()

    def issue(self, lifetime: float) -> str:
        """A token minted without a request (for the static-header baselines)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.time() + lifetime
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)
            self.counters.revocations += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        path = scope["path"]
        if path == "/oauth/token" and scope["method"] == "POST":
            await self._token(scope, body, send)
        elif path == "/oauth/resource":
            await self._resource(scope, send)
        elif path == "/oauth/revoke" and scope["method"] == "POST":
            form = parse_qs(body.decode("latin-1"))
            self.revoke(form.get("token", [""])[0])
            await _answer(send, 200, {})
        else:
            await _answer(send, 404, {"error": "not_found"})

    async def _token(self, scope: Scope, body: bytes, send: Send) -> None:
        with self._lock:
            self.counters.token_requests += 1
        if self.token_latency > 0:
            await asyncio.sleep(self.token_latency)
        form = {k: v[-1] for k, v in parse_qs(body.decode("latin-1")).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        header = _header(scope, b"authorization")
        if header.lower().startswith("basic "):
            decoded = base64.b64decode(header[6:]).decode("utf-8", "replace")
            client_id, _, client_secret = decoded.partition(":")
        if client_id is None or self.clients.get(client_id) != client_secret:
            await _answer(send, 401, {"error": "invalid_client"})
            return
        if form.get("grant_type") != "client_credentials":
            await _answer(send, 400, {"error": "unsupported_grant_type"})
            return
        lifetime = self.token_lifetime
        token = secrets.token_urlsafe(24)
        now = time.time()
        with self._lock:
            if len(self._tokens) >= _PRUNE_AT:
                self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = now + lifetime
            self.counters.tokens_issued += 1
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime)}
        await _answer(send, 200, answer)

    async def _resource(self, scope: Scope, send: Send) -> None:
        with self._lock:
            self.counters.resource_requests += 1
        if self.resource_latency > 0:
            await asyncio.sleep(self.resource_latency)
        scheme, _, token = _header(scope, b"authorization").partition(" ")
        with self._lock:
            expiry = self._tokens.get(token)
            valid = (
                scheme.lower() == "bearer"
                and expiry is not None
                and time.time() < expiry
                and token not in self._revoked
            )
            if not valid:
                self.counters.unauthorized += 1
        if not valid:
            challenge = (b"www-authenticate", b'Bearer error="invalid_token"')
            await _answer(send, 401, {"error": "invalid_token"}, extra=[challenge])
            return
        await _answer(send, 200, {"data": {"folders": [], "total_count": 0}})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


async def _answer(
    send: Send, status: int, data: object, *, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(data).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
