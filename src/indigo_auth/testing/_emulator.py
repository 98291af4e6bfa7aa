"""An in-memory Indigo API: the token endpoints, as a plain ASGI 3 app.

The emulator issues real HS256 JWTs signed with a key of its own, rotates
single-use refresh tokens, revokes, rate-limits per account, and injects faults
(see :mod:`._faults`). It runs on whatever event loop drives it (asyncio or Trio:
it awaits anyio only), in process through :meth:`IndigoEmulator.transport` or over a
loopback socket through :meth:`IndigoEmulator.serve`.

Token times: ``iat`` is the clock reading and ``exp`` is ``iat + lifetime``, both to
the millisecond (RFC 7519 NumericDates may carry a fraction). So ``exp - iat`` is
the lifetime exactly, a 1-second token lives 1 second and never longer, and a whole
clock reading with a whole lifetime gives whole-number claims.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import secrets
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol
from urllib.parse import parse_qs

import anyio
import httpx
import jwt

from ._faults import Fault, FaultSchedule, default_error_code

__all__ = ["Account", "Counters", "IndigoEmulator"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: ``expiration_period`` values of the automation token endpoint, in seconds (``None``: never).
EXPIRATION_PERIODS: dict[str, float | None] = {
    "1h": 3600.0,
    "3h": 3 * 3600.0,
    "5h": 5 * 3600.0,
    "16h": 16 * 3600.0,
    "24h": 24 * 3600.0,
    "48h": 48 * 3600.0,
    "1w": 7 * 86400.0,
    "2w": 14 * 86400.0,
    "3w": 21 * 86400.0,
    "1mo": 30 * 86400.0,
    "no_exp": None,
}
_DEFAULT_PERIOD = "24h"

# path -> (endpoint name, method)
_ROUTES: dict[str, tuple[str, str]] = {
    "/user/signin": ("signin", "POST"),
    "/user/refresh_token": ("refresh_token", "POST"),
    "/workspace/automation_token": ("automation_token", "GET"),
    "/user/workspaces": ("workspaces", "GET"),
    "/user/revoke_tokens": ("revoke_tokens", "POST"),
    "/workspace/restrictions": ("restrictions", "GET"),
    "/workspace/folders": ("folders", "GET"),
}
_PUBLIC = frozenset({"signin", "refresh_token"})
#: The key of :attr:`Counters.requests` for paths the API does not have.
UNKNOWN_ENDPOINT = "unknown"

_MAX_BODY = 64 * 1024
#: How long the app waits for the server to notice a connection it closed.
_CLOSE_GRACE = 5.0
_PRUNE_AT = 512

_PROXY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True, eq=False)
class Account:
    """An account of the emulator, as :meth:`IndigoEmulator.add_account` made it.

    The password is not here: the emulator keeps only its MD5 digest, privately.

    Attributes:
        email: what the account signs in with.
        workspaces: ``(workspace_id, name, role)`` of each workspace, the default first.
        automation: whether the account may get automation tokens.
    """

    email: str
    workspaces: list[tuple[str, str, str]]
    automation: bool = True

    @property
    def default_workspace_id(self) -> str:
        """The workspace a sign-in lands in."""
        return self.workspaces[0][0]

    @property
    def workspace_ids(self) -> list[str]:
        """The ids of all the account's workspaces, the default first."""
        return [workspace_id for workspace_id, _, _ in self.workspaces]


@dataclass(slots=True)
class Counters:
    """What the emulator saw and did since it started or since the last reset.

    Attributes:
        requests: requests that reached the app, by endpoint name (paths the API
            does not have count as ``"unknown"``), faulted ones included.
        sign_ins: successful sign-ins.
        refreshes: successful refreshes.
        refusals: 401 and 403 answers the emulator gave on its own judgement: bad
            credentials, bad refresh tokens, bad bearers, a foreign workspace, no
            automation (not those of injected faults).
        tokens_issued: regular tokens handed out by sign-ins and refreshes.
        automation_tokens_issued: automation tokens handed out.
        revocations: successful revocations (the endpoint, and :meth:`IndigoEmulator.revoke_all`).
        rate_limited: 429 answers of the rate limiter (not those of injected faults).
        faults: injected faults applied.
        unauthorized: 401 answers on endpoints that need a bearer.
    """

    requests: dict[str, int] = field(default_factory=dict)
    sign_ins: int = 0
    refreshes: int = 0
    refusals: int = 0
    tokens_issued: int = 0
    automation_tokens_issued: int = 0
    revocations: int = 0
    rate_limited: int = 0
    faults: int = 0
    unauthorized: int = 0

    @property
    def total_requests(self) -> int:
        """All requests that reached the app."""
        return sum(self.requests.values())

    def reset(self) -> None:
        """Set every counter back to zero, in place."""
        for f in fields(self):
            setattr(self, f.name, {} if f.name == "requests" else 0)


@dataclass(slots=True)
class _AccountRecord:
    account: Account
    password_md5: str = field(repr=False)
    live: dict[str, float | None] = field(default_factory=dict)  # jti -> exp


@dataclass(frozen=True, slots=True)
class _Grant:
    email: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Bearer:
    record: _AccountRecord
    workspace_id: str
    automation: bool


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class _Refusal(Exception):
    """An error answer, raised from deep in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = default_error_code(status) if error_code is None else error_code
        self.headers = list(headers)


class _SocketTransport(Protocol):
    """What the app needs of the connection the server exposes (an asyncio transport)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _envelope(data: object, *, http_code: int = 200, error_code: str = "", message: str) -> bytes:
    return _dumps(
        {
            "status": {"error_code": error_code, "http_code": http_code, "message": message},
            "data": data,
        }
    )


def _ok(data: object, message: str) -> _Answer:
    return _Answer(200, _envelope(data, message=message))


def _error(refusal: _Refusal) -> _Answer:
    body = _envelope(
        None, http_code=refusal.status, error_code=refusal.error_code, message=refusal.message
    )
    return _Answer(refusal.status, body, headers=refusal.headers)


def _numeric_date(ms: int) -> int | float:
    """A NumericDate from milliseconds: whole seconds as an int, else a float."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _retry_after_value(retry_after: float | str) -> bytes:
    if isinstance(retry_after, str):
        return retry_after.encode("latin-1")
    number = float(retry_after)
    return str(int(number) if number.is_integer() else number).encode()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise _Refusal(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise _Refusal(400, "the body is not a JSON object")
    return data


def _required_string(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _Refusal(400, f"the field {name!r} is missing or not a string")
    return value


def _socket_transport(scope: Scope) -> _SocketTransport | None:
    extension = (scope.get("extensions") or {}).get("indigo.transport")
    if isinstance(extension, dict):
        transport: _SocketTransport | None = extension.get("transport")
        return transport
    return None


def _request_from_scope(scope: Scope) -> httpx.Request:
    """A stand-in for the client's request, for the transport errors raised in process."""
    host, port = scope.get("server") or ("emulator", None)
    netloc = host if port is None else f"{host}:{port}"
    url = f"{scope.get('scheme', 'http')}://{netloc}{scope['path']}"
    query = scope.get("query_string", b"").decode("latin-1")
    return httpx.Request(scope["method"], f"{url}?{query}" if query else url)


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or ``None`` if the client went away first.

    At most one byte past the limit is kept: enough for the handler to refuse it.
    """
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")[: _MAX_BODY + 1 - len(body)]
        if not message.get("more_body", False):
            return bytes(body)


async def _wait_for_disconnect(receive: Receive, seconds: float) -> bool:
    """Wait up to ``seconds``; ``True`` as soon as the client goes away.

    Only called once the body is read, when ``receive`` has nothing left but the
    disconnect: a server that closes a slow answer on shutdown thus ends it at once.
    """
    if seconds <= 0:
        return False
    with anyio.move_on_after(seconds):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return True
    return False


def _reset(transport: _SocketTransport) -> None:
    """Close the connection with a TCP reset: the client reads ECONNRESET, not an EOF."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # l_onoff=1, l_linger=0 makes close() send RST; Windows packs two u_shorts.
        linger = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
        # Already dead: an abort is as good.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    transport.abort()


async def _send_answer(send: Send, answer: _Answer) -> None:
    await _send_start(send, answer)
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


async def _send_start(send: Send, answer: _Answer) -> None:
    headers = [
        (b"content-type", answer.content_type),
        (b"content-length", str(len(answer.body)).encode()),
        *answer.headers,
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})


def _static_answer(fault: Fault) -> _Answer:
    """The answer of a fault that replaces the request's own."""
    if fault.kind == "status":
        headers = []
        if fault.retry_after is not None:
            headers.append((b"retry-after", _retry_after_value(fault.retry_after)))
        body = _envelope(
            None, http_code=fault.http_code, error_code=fault.error_code, message=fault.message
        )
        return _Answer(fault.status_code, body, headers=headers)
    if fault.kind == "html":
        return _Answer(fault.status_code, _PROXY_PAGE, content_type=b"text/html")
    if fault.kind == "empty":
        return _Answer(fault.status_code, b"")
    if fault.kind == "truncated":
        body = _envelope({"token": "eyJhbGciOiJIUzI1NiJ9"}, message="Successful signin")
        return _Answer(fault.status_code, body[: len(body) // 2])
    if fault.kind == "wrong_shape":
        return _Answer(200, _dumps({"data": {"token": 5}}))
    if fault.kind == "error_in_200":
        body = _envelope(
            None, http_code=fault.http_code, error_code=fault.error_code, message=fault.message
        )
        return _Answer(200, body)
    raise AssertionError(f"not a static fault: {fault.kind}")  # pragma: no cover


class IndigoEmulator:
    """An emulator of the Indigo API token endpoints, as an ASGI 3 app.

    Use it in process through :meth:`transport`, or over a loopback socket through
    :meth:`serve` (async) or :meth:`serve_in_thread` (sync)::

        emu = IndigoEmulator(accounts={"bot@example.com": "s3cret"})
        async with httpx.AsyncClient(transport=emu.transport(), base_url="http://indigo") as c:
            r = await c.post("/user/signin", json={"email": "bot@example.com",
                                                    "password": md5_hex("s3cret")})

    Every answer is the documented envelope. The emulator is safe to drive from
    several threads at once (a server thread and the test's own, say); all its
    settings (``token_lifetime``, ``rate_limit``, ``latency``, ``clock``, ...) can be
    changed at any time.

    Args:
        accounts: email -> plain password; each becomes an account with
            automation enabled and one workspace. Only the MD5 digest is kept.
        token_lifetime: seconds a regular token lives (30 minutes, as Indigo's do).
        refresh_token_lifetime: seconds a refresh token stays usable.
        rate_limit: requests per ``rate_window`` per account for sign-ins, refreshes
            and requests with a regular token; ``None`` turns the limit off.
        automation_rate_limit: the same for requests made with an automation token,
            counted apart; ``None`` turns it off.
        rate_window: the sliding window of both limits, in seconds.
        latency: seconds added to every request.
        clock: the wall clock for ``iat``, ``exp``, expiry checks and the rate
            window; skew it to test a client whose clock disagrees with the server's.
    """

    def __init__(
        self,
        accounts: Mapping[str, str] | None = None,
        *,
        token_lifetime: float = 1800.0,
        refresh_token_lifetime: float = 30 * 86400.0,
        rate_limit: int | None = 50,
        automation_rate_limit: int | None = 500,
        rate_window: float = 60.0,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_lifetime = token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self.rate_limit = rate_limit
        self.automation_rate_limit = automation_rate_limit
        self.rate_window = rate_window
        self.latency = latency
        self.clock = clock
        self._key = secrets.token_bytes(64)
        self._lock = threading.RLock()
        self._accounts: dict[str, _AccountRecord] = {}
        self._grants: dict[str, _Grant] = {}
        self._revoked: dict[str, float | None] = {}  # jti -> exp
        self._hits: dict[tuple[str, bool], deque[float]] = {}
        self._faults = FaultSchedule()
        self._counters = Counters()
        for email, password in (accounts or {}).items():
            self.add_account(email, password)

    def __repr__(self) -> str:
        return f"<IndigoEmulator accounts={len(self._accounts)}>"

    # --- set-up -----------------------------------------------------------------

    def add_account(
        self,
        email: str,
        password: str,
        *,
        workspaces: Sequence[tuple[str, str]] = (),
        automation: bool = True,
    ) -> Account:
        """Add an account; it gets a default workspace plus the ``workspaces`` given.

        The default workspace is ``"<local part>'s workspace"`` with role ``"owner"``.

        Args:
            email: the account's email.
            password: its plain password; only its MD5 hex digest is kept.
            workspaces: ``(name, role)`` of extra workspaces the account belongs to.
            automation: whether the account's plan allows automation tokens.

        Raises:
            ValueError: the email is empty or already has an account.
        """
        if not email:
            raise ValueError("email must not be empty")
        local_part = email.partition("@")[0]
        rows = [(str(uuid.uuid4()), f"{local_part}'s workspace", "owner")]
        rows += [(str(uuid.uuid4()), name, role) for name, role in workspaces]
        account = Account(email=email, workspaces=rows, automation=automation)
        digest = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
        with self._lock:
            if email in self._accounts:
                raise ValueError(f"an account for {email!r} already exists")
            self._accounts[email] = _AccountRecord(account, digest)
        return account

    def account(self, email: str) -> Account:
        """The account of ``email``.

        Raises:
            KeyError: there is no such account.
        """
        with self._lock:
            return self._accounts[email].account

    # --- faults -----------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        fault: Fault,
        *,
        times: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Make requests to ``endpoint`` fail with ``fault``.

        With ``times=N`` the next N matching requests fail; with ``probability=p``
        each matching request fails independently with chance ``p``, drawn from a
        ``random.Random(seed)`` of its own (both together: with chance ``p``, at most
        N times); with neither, every matching request fails until
        :meth:`clear_faults`. Injections queue in order: each request gets the first
        one that strikes.

        Args:
            endpoint: ``"signin"``, ``"refresh_token"``, ``"automation_token"``,
                ``"workspaces"``, ``"revoke_tokens"``, ``"restrictions"``,
                ``"folders"``, or ``"*"`` for all of them.
            fault: what happens, see :class:`Fault`.
            times: how many requests fail, at least 1.
            probability: the chance, between 0 and 1, that a request fails.
            seed: the seed of the draws; needs ``probability``.

        Raises:
            ValueError: an unknown endpoint, or a setting out of range.
        """
        self._faults.add(endpoint, fault, times=times, probability=probability, seed=seed)

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        self._faults.clear()

    # --- observation ------------------------------------------------------------

    @property
    def counters(self) -> Counters:
        """The live counters; see :class:`Counters`."""
        return self._counters

    def reset_counters(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counters.reset()

    # --- tokens, directly -------------------------------------------------------

    def issue_token(
        self, email: str, *, workspace_id: str | None = None, lifetime: float | None = None
    ) -> str:
        """Mint a regular token for ``email`` without a request (not counted).

        Args:
            email: an existing account.
            workspace_id: one of its workspaces; its default one if ``None``.
            lifetime: seconds the token lives; :attr:`token_lifetime` if ``None``.

        Raises:
            KeyError: there is no such account.
            ValueError: the workspace is not one of the account's.
        """
        with self._lock:
            record = self._accounts[email]
            account = record.account
            workspace = account.default_workspace_id if workspace_id is None else workspace_id
            if workspace not in record.account.workspace_ids:
                raise ValueError(f"{workspace!r} is not a workspace of {email!r}")
            life = self.token_lifetime if lifetime is None else lifetime
            return self._mint(record, workspace, life, automation=False)

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a token this emulator signed; expired or revoked ones too.

        Raises:
            jwt.InvalidTokenError: the token is not one of this emulator's.
        """
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key,
            algorithms=["HS256"],
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["sub", "jti", "iat", "workspace_id"],
            },
        )
        return claims

    def is_valid(self, token: str) -> bool:
        """Whether the API would take ``token``: signed here, not expired, not revoked."""
        try:
            self._verify_bearer(token)
        except _Refusal:
            return False
        return True

    def revoke_all(self, email: str) -> None:
        """Revoke every token and refresh token of ``email``, as another client could.

        Raises:
            KeyError: there is no such account.
        """
        with self._lock:
            self._revoke_everything(self._accounts[email])
            self._counters.revocations += 1

    # --- serving ----------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        """An ``httpx`` transport that hands requests to this app in process.

        App exceptions reach the client: injected drops raise ``httpx.ReadError``
        or ``httpx.RemoteProtocolError`` as a dropped connection would.
        """
        return httpx.ASGITransport(app=self)

    @asynccontextmanager
    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, allow_non_loopback: bool = False
    ) -> AsyncIterator[str]:
        """Serve the emulator over HTTP with uvicorn; yields the base URL.

        On asyncio the server runs in the current event loop; on Trio (which uvicorn
        does not support) in a thread of its own. Port 0 picks a free port. Needs
        the ``emulator`` extra.

        Raises:
            ImportError: uvicorn is not installed.
            ValueError: ``host`` is not a loopback address and ``allow_non_loopback``
                is not set.
        """
        from ._server import serve

        async with serve(self, host, port, allow_non_loopback=allow_non_loopback) as url:
            yield url

    @contextmanager
    def serve_in_thread(
        self, host: str = "127.0.0.1", port: int = 0, *, allow_non_loopback: bool = False
    ) -> Iterator[str]:
        """Serve the emulator with uvicorn in a daemon thread; yields the base URL.

        The thread runs an asyncio loop of its own; leaving the block stops the
        server and joins the thread. Needs the ``emulator`` extra.

        Raises:
            ImportError: uvicorn is not installed.
            ValueError: ``host`` is not a loopback address and ``allow_non_loopback``
                is not set.
        """
        from ._server import serve_in_thread

        with serve_in_thread(self, host, port, allow_non_loopback=allow_non_loopback) as url:
            yield url

    # --- the ASGI app -----------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point (HTTP and lifespan)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1003})
            return
        route = _ROUTES.get(scope["path"])
        endpoint = route[0] if route else UNKNOWN_ENDPOINT
        with self._lock:
            requests = self._counters.requests
            requests[endpoint] = requests.get(endpoint, 0) + 1
        body = await _read_body(receive)
        if body is None or await _wait_for_disconnect(receive, self.latency):
            return
        fault = self._faults.pick(endpoint) if route else None
        if fault is None:
            await _send_answer(send, self._answer(scope, body))
            return
        with self._lock:
            self._counters.faults += 1
        transport = _socket_transport(scope)
        if fault.kind == "latency":
            if not await _wait_for_disconnect(receive, fault.seconds):
                await _send_answer(send, self._answer(scope, body))
        elif fault.kind == "drop_before":
            await self._drop_before(scope, receive, transport)
        elif fault.kind in ("drop_midway", "stall"):
            await self._cut(scope, receive, send, transport, fault, self._answer(scope, body))
        else:
            await _send_answer(send, _static_answer(fault))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _drop_before(
        self, scope: Scope, receive: Receive, transport: _SocketTransport | None
    ) -> None:
        if transport is None:
            raise httpx.ReadError(
                "[Errno 104] Connection reset by peer (injected by the emulator)",
                request=_request_from_scope(scope),
            )
        _reset(transport)
        await _wait_for_disconnect(receive, _CLOSE_GRACE)

    async def _cut(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        transport: _SocketTransport | None,
        fault: Fault,
        answer: _Answer,
    ) -> None:
        sent = len(answer.body) // 2
        await _send_start(send, answer)
        await send({"type": "http.response.body", "body": answer.body[:sent], "more_body": True})
        if fault.kind == "stall" and await _wait_for_disconnect(receive, fault.seconds):
            return
        if transport is None:
            request = _request_from_scope(scope)
            if fault.kind == "stall":
                raise httpx.ReadTimeout(
                    f"the emulator stalled the answer for {fault.seconds:g} s", request=request
                )
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {sent} bytes, expected {len(answer.body)}; injected by the emulator)",
                request=request,
            )
        transport.close()
        await _wait_for_disconnect(receive, _CLOSE_GRACE)

    # --- request handling (synchronous, under the lock) ---------------------------

    def _answer(self, scope: Scope, body: bytes) -> _Answer:
        route = _ROUTES.get(scope["path"])
        if route is None:
            return _error(_Refusal(404, f"no such endpoint: {scope['path']}"))
        endpoint, method = route
        if scope["method"] != method:
            return _error(
                _Refusal(
                    405,
                    f"{scope['method']} is not allowed here; use {method}",
                    headers=[(b"allow", method.encode())],
                )
            )
        handler = getattr(self, f"_{endpoint}")
        with self._lock:
            try:
                if len(body) > _MAX_BODY:
                    raise _Refusal(413, "the body is too large")
                answer: _Answer = handler(scope, body)
            except _Refusal as refusal:
                if refusal.status in (401, 403):
                    self._counters.refusals += 1
                if refusal.status == 401 and endpoint not in _PUBLIC:
                    self._counters.unauthorized += 1
                if refusal.status == 429:
                    self._counters.rate_limited += 1
                return _error(refusal)
        return answer

    def _signin(self, scope: Scope, body: bytes) -> _Answer:
        data = _json_object(body)
        email = _required_string(data, "email")
        password = _required_string(data, "password")
        record = self._accounts.get(email)
        if record is None:
            raise _Refusal(401, "wrong email or password", error_code="INVALID_CREDENTIALS")
        self._admit(email, automation=False)
        if not hmac.compare_digest(password.encode(), record.password_md5.encode()):
            raise _Refusal(401, "wrong email or password", error_code="INVALID_CREDENTIALS")
        token = self._mint(record, record.account.default_workspace_id, self.token_lifetime)
        self._counters.sign_ins += 1
        self._counters.tokens_issued += 1
        return _ok({"token": token, "refresh_token": self._grant(email)}, "Successful signin")

    def _refresh_token(self, scope: Scope, body: bytes) -> _Answer:
        data = _json_object(body)
        email = _required_string(data, "email")
        refresh_token = _required_string(data, "refresh_token")
        workspace_id = _required_string(data, "workspace_id")
        record = self._accounts.get(email)
        refused = _Refusal(401, "invalid refresh token", error_code="INVALID_REFRESH_TOKEN")
        if record is None:
            raise refused
        self._admit(email, automation=False)
        grant = self._grants.get(refresh_token)
        if grant is None or grant.email != email:
            raise refused
        if self.clock() >= grant.expires_at:
            del self._grants[refresh_token]
            raise _Refusal(401, "the refresh token expired", error_code="REFRESH_TOKEN_EXPIRED")
        if workspace_id not in record.account.workspace_ids:
            # Refused before use: the refresh token stays good for a valid workspace.
            raise _Refusal(
                403, "not a member of this workspace", error_code="WORKSPACE_ACCESS_DENIED"
            )
        del self._grants[refresh_token]
        token = self._mint(record, workspace_id, self.token_lifetime)
        self._counters.refreshes += 1
        self._counters.tokens_issued += 1
        return _ok({"token": token, "refresh_token": self._grant(email)}, "Successful refresh")

    def _automation_token(self, scope: Scope, body: bytes) -> _Answer:
        bearer = self._authenticate(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        period = query.get("expiration_period", [_DEFAULT_PERIOD])[-1]
        if period not in EXPIRATION_PERIODS:
            raise _Refusal(
                400,
                f"expiration_period must be one of {' '.join(EXPIRATION_PERIODS)}",
                error_code="INVALID_EXPIRATION_PERIOD",
            )
        if not bearer.record.account.automation:
            raise _Refusal(
                403,
                "automation tokens are not available on this plan",
                error_code="AUTOMATION_NOT_AVAILABLE",
            )
        token = self._mint(
            bearer.record, bearer.workspace_id, EXPIRATION_PERIODS[period], automation=True
        )
        self._counters.automation_tokens_issued += 1
        return _ok({"token": token}, "Automation token issued")

    def _workspaces(self, scope: Scope, body: bytes) -> _Answer:
        bearer = self._authenticate(scope)
        rows = [
            {"workspace_id": workspace_id, "name": name, "role": role}
            for workspace_id, name, role in bearer.record.account.workspaces
        ]
        return _ok({"total_count": len(rows), "workspaces": rows}, "Workspaces")

    def _revoke_tokens(self, scope: Scope, body: bytes) -> _Answer:
        bearer = self._authenticate(scope)
        data = _json_object(body) if body.strip() else {}
        target = data.get("token")
        is_automation = data.get("is_automation")
        if is_automation is not None and not isinstance(is_automation, bool):
            raise _Refusal(400, "is_automation must be a boolean")
        if target is None:
            self._revoke_everything(bearer.record)
        else:
            if not isinstance(target, str):
                raise _Refusal(400, "token must be a string")
            try:
                claims = self.decode(target)
            except jwt.InvalidTokenError:
                raise _Refusal(400, "not a token of this API", error_code="INVALID_TOKEN") from None
            if claims["sub"] != bearer.record.account.email:
                raise _Refusal(403, "the token belongs to another account")
            jti = claims["jti"]
            exp = bearer.record.live.pop(jti, claims.get("exp"))
            self._revoked[jti] = exp
        self._counters.revocations += 1
        return _ok(None, "Tokens revoked")

    def _restrictions(self, scope: Scope, body: bytes) -> _Answer:
        bearer = self._authenticate(scope)
        limit = self.automation_rate_limit if bearer.automation else self.rate_limit
        window = f"{self.rate_window:g}s"
        ratelimit = []
        if limit is not None:
            ratelimit.append({"limit_size": limit, "operation": "all", "window_size": window})
        data = {
            "workspace_id": bearer.workspace_id,
            "plan": "emulator",
            "automation_available": bearer.record.account.automation,
            "expires_at": int(self.clock()) + 365 * 86400,
            "ratelimit": ratelimit,
        }
        return _ok(data, "Workspace restrictions")

    def _folders(self, scope: Scope, body: bytes) -> _Answer:
        bearer = self._authenticate(scope)
        namespace = uuid.UUID(bearer.workspace_id)
        folders = [
            {
                "folder_id": str(uuid.uuid5(namespace, name)),
                "name": name,
                "comment": comment,
                "profiles_count": count,
            }
            for name, comment, count in (
                ("Default folder", "", 3),
                ("Shops", "checkout bots", 12),
            )
        ]
        return _ok({"folders": folders, "total_count": len(folders)}, "Folders")

    # --- tokens, rate limits ------------------------------------------------------

    def _authenticate(self, scope: Scope) -> _Bearer:
        header = b""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                header = value
        if not header:
            raise _Refusal(401, "a bearer token is required")
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refusal(401, "the Authorization header is not 'Bearer <token>'")
        bearer = self._verify_bearer(token.strip())
        self._admit(bearer.record.account.email, automation=bearer.automation)
        return bearer

    def _verify_bearer(self, token: str) -> _Bearer:
        try:
            claims = self.decode(token)
        except jwt.InvalidTokenError:
            raise _Refusal(401, "invalid token") from None
        with self._lock:
            record = self._accounts.get(claims["sub"])
            if record is None:
                raise _Refusal(401, "invalid token")
            exp = claims.get("exp")
            if exp is not None and self.clock() >= exp:
                raise _Refusal(401, "the token expired", error_code="TOKEN_EXPIRED")
            if claims["jti"] in self._revoked:
                raise _Refusal(401, "the token was revoked", error_code="TOKEN_REVOKED")
        return _Bearer(record, claims["workspace_id"], claims.get("is_automation") is True)

    def _mint(
        self,
        record: _AccountRecord,
        workspace_id: str,
        lifetime: float | None,
        *,
        automation: bool = False,
    ) -> str:
        now = self.clock()
        iat_ms = math.floor(now * 1000)
        claims: dict[str, Any] = {
            "sub": record.account.email,
            "workspace_id": workspace_id,
            "iat": _numeric_date(iat_ms),
            "jti": secrets.token_hex(16),
        }
        exp: float | None = None
        if lifetime is not None:
            exp_ms = iat_ms + math.floor(lifetime * 1000)
            claims["exp"] = _numeric_date(exp_ms)
            exp = exp_ms / 1000
        if automation:
            claims["is_automation"] = True
        if len(record.live) >= _PRUNE_AT:
            record.live = {j: e for j, e in record.live.items() if e is None or e > now}
        record.live[claims["jti"]] = exp
        return jwt.encode(claims, self._key, algorithm="HS256")

    def _grant(self, email: str) -> str:
        refresh_token = secrets.token_urlsafe(32)
        self._grants[refresh_token] = _Grant(email, self.clock() + self.refresh_token_lifetime)
        return refresh_token

    def _revoke_everything(self, record: _AccountRecord) -> None:
        now = self.clock()
        self._revoked = {j: e for j, e in self._revoked.items() if e is None or e > now}
        self._revoked.update(record.live)
        record.live = {}
        email = record.account.email
        self._grants = {t: g for t, g in self._grants.items() if g.email != email}

    def _admit(self, email: str, *, automation: bool) -> None:
        """Take a slot of the account's sliding window, or refuse with a 429."""
        limit = self.automation_rate_limit if automation else self.rate_limit
        if limit is None:
            return
        now = self.clock()
        window = self.rate_window
        hits = self._hits.setdefault((email, automation), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            # The slot that frees first is the one that brings the count under the limit.
            frees_at = hits[len(hits) - limit] + window if limit > 0 else now + window
            retry_after = max(1, math.ceil(frees_at - now))
            raise _Refusal(
                429,
                f"rate limit of {limit} requests per {window:g}s exceeded",
                error_code="RATE_LIMITED",
                headers=[(b"retry-after", str(retry_after).encode())],
            )
        hits.append(now)
