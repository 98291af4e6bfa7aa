"""The fault matrix: every endpoint the manager calls, against every way it can fail.

For each endpoint (sign-in, refresh, automation token, workspaces, revoke) and each
fault, a test states the outcome (retried then succeeded, or which typed error),
the number of requests it cost, and a bound on the time it took.

Answers are faulted in process (the emulator's faults, or canned answers for what the
emulator cannot say) except for what only a socket can do: connection refused, a reset
before or in the middle of the body, a read timeout, and a body that stalls. Those run
against the emulator over loopback. Nothing sleeps longer than a retry or a timeout
of its own asks for: ``max_retry_delay=0`` unless the delay is what is tested, and
short timeouts where a timeout is.
"""

from __future__ import annotations

import base64
import email.utils
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from indigo_auth import (
    AsyncTokenManager,
    IndigoAPIError,
    IndigoAuthError,
    IndigoProtocolError,
    IndigoUnavailableError,
    InvalidCredentialsError,
    MemoryStore,
    RateLimitedError,
    Workspace,
)
from indigo_auth._api import MAX_BODY_BYTES
from indigo_auth._token import MAX_LIFETIME
from indigo_auth.testing import Fault, IndigoEmulator

from .conftest import FakeClock

pytestmark = pytest.mark.anyio

EMAIL = "matrix@example.com"
PASSWORD = "matrix password, not a secret of anyone"
BASE = "http://127.0.0.1:9"  # in process: the transport answers, nothing listens here

ENDPOINTS = ("signin", "refresh_token", "automation_token", "workspaces", "revoke_tokens")
#: Endpoints that need a bearer: a 401 there makes the manager renew once and retry.
BEARER = ("automation_token", "workspaces", "revoke_tokens")
#: Endpoints whose answer carries a JWT.
TOKEN_ANSWERS = ("signin", "refresh_token", "automation_token")
PATHS = {
    "signin": "/user/signin",
    "refresh_token": "/user/refresh_token",
    "automation_token": "/workspace/automation_token",
    "workspaces": "/user/workspaces",
    "revoke_tokens": "/user/revoke_tokens",
}
_NAMES = {path: name for name, path in PATHS.items()}

#: Every call of a test ends within this, whatever the fault (no hang).
BOUND = 10.0
#: The read timeout of a request that meets a stall (see ``Wire.hurry``).
SHORT_TIMEOUT = 0.3


# -- the wire: counts attempts, rigs answers, refuses connections --------------------------


@dataclass
class Wire(httpx.AsyncBaseTransport):
    """A transport in front of the real one that sees every request the manager sends.

    ``attempts`` counts requests by endpoint as the client sent them (a refused
    connection never reaches the server, but it is an attempt). ``rig`` answers an
    endpoint with a canned response; ``refuse`` sends it to a loopback port where
    nothing listens, so the operating system refuses the connection; ``hurry`` gives
    the requests that meet a stall a short read timeout, and every other one a long
    one, so that a slow machine cannot time out a request that was meant to succeed.
    """

    inner: httpx.AsyncBaseTransport
    dead_port: int | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    hosts: list[str] = field(default_factory=list)
    answers: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    rigged: dict[str, int | None] = field(default_factory=dict)
    refused: dict[str, int | None] = field(default_factory=dict)
    hurried: dict[str, int | None] = field(default_factory=dict)

    def rig(
        self,
        endpoint: str,
        answer: Callable[[httpx.Request], httpx.Response],
        times: int | None = None,
    ) -> None:
        self.answers[endpoint] = answer
        self.rigged[endpoint] = times

    def refuse(self, endpoint: str, times: int | None = None) -> None:
        self.refused[endpoint] = times

    def hurry(self, endpoint: str, times: int | None = None) -> None:
        self.hurried[endpoint] = times

    @staticmethod
    def _take(table: dict[str, int | None], name: str) -> bool:
        """Whether ``name`` is in ``table``; uses up one of its times."""
        if name not in table:
            return False
        times = table[name]
        if times is not None:
            if times <= 1:
                del table[name]
            else:
                table[name] = times - 1
        return True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        name = _NAMES.get(request.url.path, request.url.path)
        self.attempts[name] += 1
        self.hosts.append(f"{request.url.host}:{request.url.port}")
        if self._take(self.rigged, name):
            return self.answers[name](request)
        if self._take(self.hurried, name):
            timeouts = dict(request.extensions.get("timeout", {}))
            timeouts["read"] = SHORT_TIMEOUT
            request.extensions = {**request.extensions, "timeout": timeouts}
        if self._take(self.refused, name):
            assert self.dead_port is not None
            request = httpx.Request(
                request.method,
                request.url.copy_with(port=self.dead_port),
                headers=request.headers,
                content=request.content,
                extensions=request.extensions,
            )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def emu() -> IndigoEmulator:
    return IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)


@pytest.fixture
def wire(emu: IndigoEmulator) -> Wire:
    return Wire(emu.transport())


@asynccontextmanager
async def managed(
    wire: Wire,
    *,
    email: str = EMAIL,
    base_url: str = BASE,
    read_timeout: float = 30.0,
    follow_redirects: bool = False,
    **settings: object,
) -> AsyncIterator[AsyncTokenManager]:
    """A manager that sends through ``wire``, retrying at once unless told otherwise."""
    options: dict[str, object] = {"max_retry_delay": 0.0}
    options.update(settings)
    async with httpx.AsyncClient(
        transport=wire, timeout=read_timeout, follow_redirects=follow_redirects
    ) as client:
        manager = AsyncTokenManager(
            email,
            PASSWORD,
            base_url=base_url,
            http_client=client,
            **options,  # type: ignore[arg-type]
        )
        try:
            yield manager
        finally:
            await manager.aclose()


# -- one exercise of one endpoint ----------------------------------------------------------


@dataclass
class Result:
    """What one call of an endpoint came to."""

    value: object = None
    error: IndigoAuthError | None = None
    elapsed: float = 0.0
    attempts: Counter[str] = field(default_factory=Counter)
    before: str | None = None  # the token the manager held before the call


async def prepare(manager: AsyncTokenManager, endpoint: str) -> str | None:
    """Bring the manager to where it calls ``endpoint`` next: signed in, unless it is sign-in."""
    if endpoint == "signin":
        return None
    return await manager.get_token()


async def call(manager: AsyncTokenManager, endpoint: str) -> object:
    if endpoint == "signin":
        return await manager.get_token()
    if endpoint == "refresh_token":
        return await manager.get_token(force_refresh=True)
    if endpoint == "automation_token":
        return await manager.automation_token("1h")
    if endpoint == "workspaces":
        return await manager.workspaces()
    await manager.revoke()
    return None


async def exercise(
    manager: AsyncTokenManager,
    wire: Wire,
    endpoint: str,
    fault: Callable[[], None],
    *,
    bound: float = BOUND,
) -> Result:
    """Prepare, inject the fault, call the endpoint once; never longer than ``bound``."""
    result = Result(before=await prepare(manager, endpoint))
    fault()
    seen = Counter(wire.attempts)
    started = time.monotonic()
    with anyio.fail_after(bound):
        try:
            result.value = await call(manager, endpoint)
        except IndigoAuthError as exc:
            result.error = exc
    result.elapsed = time.monotonic() - started
    result.attempts = Counter(wire.attempts)
    result.attempts.subtract(seen)
    return result


def check_success(result: Result, emu: IndigoEmulator, endpoint: str) -> None:
    """The call succeeded, and its result is what the endpoint promises."""
    assert result.error is None, f"expected success, got {result.error!r}"
    value = result.value
    if endpoint in ("signin", "refresh_token"):
        assert isinstance(value, str) and emu.is_valid(value)
        assert value != result.before
    elif endpoint == "automation_token":
        assert isinstance(value, str) and emu.decode(value)["is_automation"] is True
    elif endpoint == "workspaces":
        assert isinstance(value, list) and all(isinstance(w, Workspace) for w in value)
        assert [w.role for w in value] == ["owner"]
    else:
        assert result.before is not None and not emu.is_valid(result.before)


def check_error(
    result: Result, error: type[IndigoAuthError], status_code: int | None = None
) -> IndigoAuthError:
    assert result.error is not None, f"expected {error.__name__}, got {result.value!r}"
    assert isinstance(result.error, error), repr(result.error)
    for other in (IndigoAPIError, IndigoProtocolError, IndigoUnavailableError, RateLimitedError):
        if other is not error and not issubclass(error, other):
            assert not isinstance(result.error, other), repr(result.error)
    if status_code is not None:
        assert result.error.status_code == status_code
    return result.error


def cases(*faults: tuple[str, object]) -> list[object]:
    """``(endpoint, fault)`` for every endpoint and fault, with readable ids."""
    return [
        pytest.param(endpoint, fault, id=f"{endpoint}-{name}")
        for endpoint in ENDPOINTS
        for name, fault in faults
    ]


# -- 1. transient answers: 429 without Retry-After, 500, 502, 503, 504 ----------------------

TRANSIENT = (
    ("429", Fault.status(429)),
    ("500", Fault.status(500)),
    ("502", Fault.status(502)),
    ("503", Fault.status(503)),
    ("504", Fault.status(504)),
    ("html-502", Fault.html(502)),
    ("503-in-200", Fault.error_in_200(503)),
    ("429-in-200", Fault.error_in_200(429)),
)


@pytest.mark.parametrize(("endpoint", "fault"), cases(*TRANSIENT))
async def test_transient_answer_is_retried_then_succeeds(
    emu: IndigoEmulator, wire: Wire, endpoint: str, fault: Fault
) -> None:
    async with managed(wire, max_attempts=3) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: emu.inject(endpoint, fault, times=2)
        )
        check_success(result, emu, endpoint)
        assert result.attempts == Counter({endpoint: 3})
        assert manager.stats.retries == 2
        assert result.elapsed < 5.0


@pytest.mark.parametrize(("endpoint", "fault"), cases(*TRANSIENT))
async def test_transient_answer_runs_out_into_a_typed_error(
    emu: IndigoEmulator, wire: Wire, endpoint: str, fault: Fault
) -> None:
    async with managed(wire, max_attempts=3) as manager:
        result = await exercise(manager, wire, endpoint, lambda: emu.inject(endpoint, fault))
        status = fault.http_code if fault.kind == "error_in_200" else fault.status_code
        expected = RateLimitedError if status == 429 else IndigoUnavailableError
        check_error(result, expected, status)
        # A failing refresh is not a refused one: no sign-in behind it.
        assert result.attempts == Counter({endpoint: 3})
        assert result.elapsed < 5.0


# -- 2. 429 and its Retry-After ----------------------------------------------------------


def http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


RETRY_AFTER = (
    # (id, Retry-After, max_retry_delay, least wait)
    # Without the header the first backoff is at most 0.5 s: a wait of more shows that
    # the header was read.
    ("seconds", 0.6, 5.0, 0.58),
    ("http-date", "+3600", 0.6, 0.58),
    ("absurd-seconds", 10**9, 0.2, 0.19),
    ("absurd-date", "Fri, 31 Dec 9999 23:59:59 GMT", 0.2, 0.19),
    ("past-date", "Thu, 01 Jan 1970 00:00:00 GMT", 0.05, 0.0),
    ("none", None, 0.0, 0.0),
)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("retry_after", "max_retry_delay", "least"),
    [pytest.param(*row[1:], id=row[0]) for row in RETRY_AFTER],
)
async def test_429_waits_as_retry_after_says_within_the_cap(
    emu: IndigoEmulator,
    wire: Wire,
    endpoint: str,
    retry_after: float | str | None,
    max_retry_delay: float,
    least: float,
) -> None:
    header = http_date(3600) if retry_after == "+3600" else retry_after
    async with managed(wire, max_attempts=2, max_retry_delay=max_retry_delay) as manager:
        result = await exercise(
            manager,
            wire,
            endpoint,
            lambda: emu.inject(endpoint, Fault.status(429, retry_after=header), times=1),
        )
        check_success(result, emu, endpoint)
        assert result.attempts == Counter({endpoint: 2})
        assert least <= result.elapsed < max_retry_delay + 4.0


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("retry_after", "reported"),
    [
        pytest.param(7, (7.0, 7.0), id="seconds"),
        pytest.param("+120", (115.0, 120.0), id="http-date"),
        pytest.param(10**9, (1e9, 1e9), id="absurd-seconds"),
        pytest.param("soon, please", None, id="garbage"),
        pytest.param(None, None, id="none"),
    ],
)
async def test_429_that_persists_reports_retry_after_without_waiting_it(
    emu: IndigoEmulator,
    wire: Wire,
    endpoint: str,
    retry_after: float | str | None,
    reported: tuple[float, float] | None,
) -> None:
    header = http_date(120) if retry_after == "+120" else retry_after
    async with managed(wire, max_attempts=2, max_retry_delay=0.05) as manager:
        result = await exercise(
            manager,
            wire,
            endpoint,
            lambda: emu.inject(endpoint, Fault.status(429, retry_after=header)),
        )
        error = check_error(result, RateLimitedError, 429)
        assert isinstance(error, RateLimitedError)
        if reported is None:
            assert error.retry_after is None
        else:
            assert error.retry_after is not None
            assert reported[0] <= error.retry_after <= reported[1]
        assert result.attempts == Counter({endpoint: 2})
        assert result.elapsed < 4.0  # the cap, not the server's wish


# -- 3. 401 and 403 on every endpoint ------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_sign_in_is_one_request_and_a_cooldown(
    emu: IndigoEmulator, wire: Wire, status: int
) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager, wire, "signin", lambda: emu.inject("signin", Fault.status(status))
        )
        check_error(result, InvalidCredentialsError, status)
        assert result.attempts == Counter({"signin": 1})
        for _ in range(20):
            with pytest.raises(InvalidCredentialsError):
                await manager.get_token()
        assert wire.attempts["signin"] == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_refresh_falls_back_to_one_sign_in(
    emu: IndigoEmulator, wire: Wire, status: int
) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager,
            wire,
            "refresh_token",
            lambda: emu.inject("refresh_token", Fault.status(status), times=1),
        )
        check_success(result, emu, "refresh_token")
        assert result.attempts == Counter({"refresh_token": 1, "signin": 1})
        assert manager.stats.sign_ins == 2


async def test_refused_credentials_in_an_early_renewal_keep_the_valid_token(
    emu: IndigoEmulator, wire: Wire, clock: FakeClock
) -> None:
    # The password changed while the service runs: the refresh and the sign-in behind
    # it are refused. The token in hand is still good until its floor; callers get it
    # until then, and the refusal after, without a request per caller.
    emu.token_lifetime = 100.0
    async with managed(wire, clock=clock, refresh_margin=20.0) as manager:
        first = await manager.get_token()
        emu.inject("refresh_token", Fault.status(401))
        emu.inject("signin", Fault.status(401))
        clock.advance(85.0)  # inside the margin, 5 s before the floor
        assert await manager.get_token() == first
        with anyio.fail_after(BOUND):
            while manager.stats.failures == 0:
                await anyio.sleep(0.01)
        for _ in range(50):
            assert await manager.get_token() == first
        assert wire.attempts == Counter({"signin": 2, "refresh_token": 1})
        clock.advance(6.0)  # past the floor: no usable token, the refusal stands
        for _ in range(10):
            with pytest.raises(InvalidCredentialsError):
                await manager.get_token()
        assert wire.attempts == Counter({"signin": 2, "refresh_token": 1})


@pytest.mark.parametrize("endpoint", BEARER)
async def test_401_on_a_bearer_endpoint_renews_once_and_retries(
    emu: IndigoEmulator, wire: Wire, endpoint: str
) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: emu.inject(endpoint, Fault.status(401), times=1)
        )
        check_success(result, emu, endpoint)
        assert result.attempts == Counter({endpoint: 2, "refresh_token": 1})
        assert manager.stats.invalidations == 1


@pytest.mark.parametrize("endpoint", BEARER)
async def test_401_that_persists_on_a_bearer_endpoint_is_an_api_error(
    emu: IndigoEmulator, wire: Wire, endpoint: str
) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: emu.inject(endpoint, Fault.status(401))
        )
        check_error(result, IndigoAPIError, 401)
        # One renewal, one retry: not a renewal per attempt.
        assert result.attempts == Counter({endpoint: 2, "refresh_token": 1})


@pytest.mark.parametrize("endpoint", BEARER)
async def test_403_on_a_bearer_endpoint_is_an_api_error_at_once(
    emu: IndigoEmulator, wire: Wire, endpoint: str
) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: emu.inject(endpoint, Fault.status(403))
        )
        check_error(result, IndigoAPIError, 403)
        assert result.attempts == Counter({endpoint: 1})


# -- 4. bodies -----------------------------------------------------------------------------


def envelope(data: object, *, http_code: object = 200) -> bytes:
    status = {"error_code": "", "http_code": http_code, "message": "ok"}
    return json.dumps({"status": status, "data": data}).encode()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_of(claims: dict[str, object]) -> str:
    """A JWT-shaped token with these claims (signed by no one: the client cannot check)."""
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'signature')}"


def answer_with(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    return answer


def token_answer(token: str) -> bytes:
    return envelope({"token": token, "refresh_token": "opaque-refresh-token"})


def wrong_data(endpoint: str) -> bytes:
    if endpoint in TOKEN_ANSWERS:
        return envelope({"token": 12345, "refresh_token": ["not", "a", "string"]})
    return envelope({"total_count": "1", "workspaces": [{"workspace_id": 7, "name": None}]})


@dataclass
class Giant:
    """A body of ``size`` bytes, streamed in chunks; counts what the client pulled."""

    size: int
    declared: bool
    chunk: int = 64 * 1024
    produced: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        giant = self

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                sent = 0
                while sent < giant.size:
                    piece = b"x" * min(giant.chunk, giant.size - sent)
                    sent += len(piece)
                    giant.produced = sent
                    yield piece

        headers = {"Content-Type": "application/json"}
        if self.declared:
            headers["Content-Length"] = str(self.size)
        return httpx.Response(200, headers=headers, stream=Body())


# (id, the fault: an emulator Fault or a function of the endpoint giving a rigged answer)
PROTOCOL_FAULTS: tuple[tuple[str, object], ...] = (
    ("html-200", Fault.html(200)),
    ("empty", Fault.empty()),
    ("truncated", Fault.truncated()),
    ("wrong-shape", Fault.wrong_shape()),
    ("http-code-not-a-number", lambda endpoint: envelope({"token": "x"}, http_code="200")),
    ("array-not-object", lambda endpoint: b"[1, 2, 3]"),
)


@pytest.mark.parametrize(("endpoint", "fault"), cases(*PROTOCOL_FAULTS))
async def test_body_that_is_not_the_envelope_is_a_protocol_error_at_once(
    emu: IndigoEmulator, wire: Wire, endpoint: str, fault: object
) -> None:
    def inject() -> None:
        if isinstance(fault, Fault):
            emu.inject(endpoint, fault)
        else:
            assert callable(fault)
            wire.rig(endpoint, answer_with(fault(endpoint)))

    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(manager, wire, endpoint, inject)
        check_error(result, IndigoProtocolError)
        assert result.attempts == Counter({endpoint: 1})  # not retried, no fallback


@pytest.mark.parametrize("endpoint", ["signin", "refresh_token", "automation_token", "workspaces"])
async def test_data_of_the_wrong_types_is_a_protocol_error(wire: Wire, endpoint: str) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: wire.rig(endpoint, answer_with(wrong_data(endpoint)))
        )
        check_error(result, IndigoProtocolError)
        assert result.attempts == Counter({endpoint: 1})


async def test_revoke_ignores_the_data_it_does_not_use(emu: IndigoEmulator, wire: Wire) -> None:
    # data is documented as null after a revoke; whatever else comes is not read.
    async with managed(wire) as manager:
        result = await exercise(
            manager,
            wire,
            "revoke_tokens",
            lambda: wire.rig("revoke_tokens", answer_with(envelope({"odd": [1, "two"]}))),
        )
        assert result.error is None
        assert result.attempts == Counter({"revoke_tokens": 1})
        assert manager._token is None  # dropped locally, as after any revoke


def bad_token(kind: str) -> str:
    now = int(time.time())
    if kind == "not-a-jwt":
        return "this is not a JWT"
    if kind == "three-dots-not-base64":
        return "a.b.c"
    if kind == "exp-before-iat":
        return jwt_of({"sub": EMAIL, "iat": now, "exp": now - 60})
    if kind == "exp-past-no-iat":
        return jwt_of({"sub": EMAIL, "exp": now - 60})
    if kind == "exp-not-a-number":
        return jwt_of({"sub": EMAIL, "iat": now, "exp": "tomorrow"})
    if kind == "exp-too-large-for-a-float":
        return jwt_of({"sub": EMAIL, "iat": now, "exp": 10**400})
    raise AssertionError(kind)


@pytest.mark.parametrize("endpoint", TOKEN_ANSWERS)
@pytest.mark.parametrize(
    "kind",
    [
        "not-a-jwt",
        "three-dots-not-base64",
        "exp-before-iat",
        "exp-past-no-iat",
        "exp-not-a-number",
        "exp-too-large-for-a-float",
    ],
)
async def test_token_that_is_no_token_is_a_protocol_error(
    wire: Wire, endpoint: str, kind: str
) -> None:
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(
            manager,
            wire,
            endpoint,
            lambda: wire.rig(endpoint, answer_with(token_answer(bad_token(kind)))),
        )
        check_error(result, IndigoProtocolError)
        assert result.attempts == Counter({endpoint: 1})
        if endpoint == "refresh_token":
            assert await manager.get_token() == result.before  # the old one stays in use


@pytest.mark.parametrize("endpoint", TOKEN_ANSWERS)
@pytest.mark.parametrize(
    ("claims", "lifetime"),
    [
        # exp in the past by the client's clock, but 30 minutes after iat: the server's
        # clock is behind; the lifetime counts, not the client's idea of the time.
        pytest.param({"iat": -7200, "exp": -7200 + 1800}, 1800.0, id="exp-past-server-behind"),
        pytest.param({"iat": 0, "exp": 10 * 365 * 86400}, MAX_LIFETIME, id="exp-far-future"),
        pytest.param({"iat": 0, "exp": 10**15}, MAX_LIFETIME, id="exp-absurd"),
    ],
)
async def test_token_lifetime_comes_from_exp_minus_iat_capped(
    wire: Wire, endpoint: str, claims: dict[str, int], lifetime: float, clock: FakeClock
) -> None:
    now = int(time.time())
    times = {k: (v + now if v < 10**12 else v) for k, v in claims.items()}
    token = jwt_of({"sub": EMAIL, "workspace_id": str(uuid.uuid4()), **times})
    async with managed(wire, clock=clock) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: wire.rig(endpoint, answer_with(token_answer(token)))
        )
        assert result.error is None
        assert result.value == token
        if endpoint == "automation_token":
            held = manager._automation["1h"]
        else:
            assert manager._token is not None
            held = manager._token
        assert held.lifetime == pytest.approx(lifetime, abs=1.0)
        assert held.expires_at - clock() == pytest.approx(lifetime, abs=1.0)
        # Cached as long as the lifetime says, with no request.
        clock.advance(lifetime / 3)
        assert await call(manager, "signin" if endpoint == "refresh_token" else endpoint) == token
        assert wire.attempts[endpoint] == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
# Stopping at the limit abandons httpx's body iterators mid-way; Trio then warns that it
# closes them itself. Harmless, and the point of the test: the rest is never read.
@pytest.mark.filterwarnings("ignore:Async generator 'httpx:ResourceWarning")
async def test_giant_body_is_read_no_further_than_the_limit(
    wire: Wire, endpoint: str, declared: bool
) -> None:
    giant = Giant(size=64 * MAX_BODY_BYTES, declared=declared)
    async with managed(wire, max_attempts=5) as manager:
        result = await exercise(manager, wire, endpoint, lambda: wire.rig(endpoint, giant))
        error = check_error(result, IndigoProtocolError)
        assert "larger than" in str(error)
        assert result.attempts == Counter({endpoint: 1})
        if declared:
            assert giant.produced == 0  # refused on the declared length alone
        else:
            assert giant.produced <= MAX_BODY_BYTES + giant.chunk


# -- 5. redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_never_followed_even_by_a_client_that_follows(
    wire: Wire, endpoint: str, status: int
) -> None:
    location = "http://127.0.0.2:9/collect?stolen=1"

    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Location": location})

    async with managed(wire, follow_redirects=True) as manager:
        result = await exercise(manager, wire, endpoint, lambda: wire.rig(endpoint, redirect))
        error = check_error(result, IndigoProtocolError, status)
        assert "redirect" in str(error)
        assert result.attempts == Counter({endpoint: 1})
    assert set(wire.hosts) == {"127.0.0.1:9"}, "a request left for the redirect's host"


# -- 6. an error envelope inside HTTP 200 -----------------------------------------------------


@pytest.mark.parametrize("code", [401, 403])
async def test_refusal_in_200_on_sign_in(emu: IndigoEmulator, wire: Wire, code: int) -> None:
    async with managed(wire) as manager:
        result = await exercise(
            manager, wire, "signin", lambda: emu.inject("signin", Fault.error_in_200(code))
        )
        check_error(result, InvalidCredentialsError, code)
        assert result.attempts == Counter({"signin": 1})


@pytest.mark.parametrize(("endpoint", "code"), [(e, c) for e in ENDPOINTS[1:] for c in (401, 400)])
async def test_error_in_200_on_the_other_endpoints(
    emu: IndigoEmulator, wire: Wire, endpoint: str, code: int
) -> None:
    async with managed(wire) as manager:
        result = await exercise(
            manager, wire, endpoint, lambda: emu.inject(endpoint, Fault.error_in_200(code), times=1)
        )
        if endpoint == "refresh_token":
            # Any refusal of the refresh token: sign in again.
            check_success(result, emu, endpoint)
            assert result.attempts == Counter({"refresh_token": 1, "signin": 1})
        elif code == 401:
            check_success(result, emu, endpoint)
            assert result.attempts == Counter({endpoint: 2, "refresh_token": 1})
        else:
            check_error(result, IndigoAPIError, code)
            assert result.attempts == Counter({endpoint: 1})


async def test_error_in_200_on_sign_in_that_is_not_a_refusal(
    emu: IndigoEmulator, wire: Wire
) -> None:
    async with managed(wire) as manager:
        result = await exercise(
            manager, wire, "signin", lambda: emu.inject("signin", Fault.error_in_200(400))
        )
        check_error(result, IndigoAPIError, 400)
        assert result.attempts == Counter({"signin": 1})


# -- 7. the network, over a real loopback socket -------------------------------------------


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A loopback port with a socket bound to it that never listens: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[IndigoEmulator, str]]:
    emu = IndigoEmulator(rate_limit=None)
    with emu.serve_in_thread() as base_url:
        yield emu, base_url


@pytest.fixture
def loopback(
    served: tuple[IndigoEmulator, str], dead_port: int
) -> Iterator[tuple[IndigoEmulator, str, Wire, str]]:
    """The served emulator with a new account, and a wire to it over real sockets."""
    emu, base_url = served
    account = f"{uuid.uuid4().hex[:12]}@example.com"
    emu.add_account(account, PASSWORD)
    emu.clear_faults()
    yield emu, base_url, Wire(httpx.AsyncHTTPTransport(), dead_port=dead_port), account
    emu.clear_faults()


#: The manager's own timeout where it is what is tested: far above a loopback answer
#: on a loaded machine, far below the stall.
TIMEOUT = 1.0

NETWORK: tuple[tuple[str, object], ...] = (
    ("refused", "refused"),
    ("reset-before-answer", Fault.drop_before()),
    ("reset-mid-body", Fault.drop_midway()),
    ("read-timeout", Fault.latency(30.0)),
    ("stalled-body", Fault.stall(seconds=30.0)),
)
#: Faults that strike after the server did the work: the refresh token is used up, the
#: tokens are revoked; the retry meets the consequences.
_AFTER_THE_WORK = ("reset-mid-body", "stalled-body")


def network_cases() -> list[object]:
    return [
        pytest.param(endpoint, name, fault, id=f"{endpoint}-{name}")
        for endpoint in ENDPOINTS
        for name, fault in NETWORK
    ]


def inject_network(
    emu: IndigoEmulator, wire: Wire, endpoint: str, fault: object, times: int | None
) -> Callable[[], None]:
    def inject() -> None:
        if fault == "refused":
            wire.refuse(endpoint, times=times)
            return
        assert isinstance(fault, Fault)
        emu.inject(endpoint, fault, times=times)
        if fault.kind in ("latency", "stall"):
            wire.hurry(endpoint, times=times)

    return inject


@pytest.mark.parametrize(("endpoint", "name", "fault"), network_cases())
async def test_network_fault_is_retried_then_succeeds(
    loopback: tuple[IndigoEmulator, str, Wire, str], endpoint: str, name: str, fault: object
) -> None:
    emu, base_url, wire, account = loopback
    async with managed(wire, email=account, base_url=base_url, max_attempts=2) as manager:
        result = await exercise(
            manager, wire, endpoint, inject_network(emu, wire, endpoint, fault, times=1)
        )
        check_success(result, emu, endpoint)
        timeouts = 1 if name in ("read-timeout", "stalled-body") else 0
        assert timeouts * SHORT_TIMEOUT * 0.9 <= result.elapsed < timeouts * SHORT_TIMEOUT + 8.0
        if endpoint == "refresh_token" and name in _AFTER_THE_WORK:
            # The cut answer carried the new refresh token: the old one is spent, its
            # retry is refused, and the manager signs in again.
            assert result.attempts == Counter({"refresh_token": 2, "signin": 1})
        elif endpoint == "revoke_tokens" and name in _AFTER_THE_WORK:
            # The revoke went through; the retry's bearer is revoked (401): the manager
            # renews once (refresh refused, sign-in) and revokes with the new token.
            assert result.attempts == Counter({"revoke_tokens": 3, "refresh_token": 1, "signin": 1})
        else:
            assert result.attempts == Counter({endpoint: 2})


@pytest.mark.parametrize(("endpoint", "name", "fault"), network_cases())
async def test_network_fault_that_persists_is_unavailable_within_the_bound(
    loopback: tuple[IndigoEmulator, str, Wire, str], endpoint: str, name: str, fault: object
) -> None:
    emu, base_url, wire, account = loopback
    async with managed(wire, email=account, base_url=base_url, max_attempts=2) as manager:
        result = await exercise(
            manager, wire, endpoint, inject_network(emu, wire, endpoint, fault, times=None)
        )
        error = check_error(result, IndigoUnavailableError)
        assert error.status_code is None
        timeouts = 2 if name in ("read-timeout", "stalled-body") else 0
        assert timeouts * SHORT_TIMEOUT * 0.9 <= result.elapsed < timeouts * SHORT_TIMEOUT + 8.0
        assert result.attempts == Counter({endpoint: 2})


async def test_owned_client_connection_refused(dead_port: int) -> None:
    manager = AsyncTokenManager(
        EMAIL,
        PASSWORD,
        base_url=f"http://127.0.0.1:{dead_port}",
        max_attempts=3,
        max_retry_delay=0,
    )
    started = time.monotonic()
    with anyio.fail_after(BOUND), pytest.raises(IndigoUnavailableError, match="connection"):
        await manager.get_token()
    assert time.monotonic() - started < 5.0
    assert manager.stats.retries == 2
    await manager.aclose()


async def test_owned_client_honours_the_timeout(served: tuple[IndigoEmulator, str]) -> None:
    emu, base_url = served
    account = f"{uuid.uuid4().hex[:12]}@example.com"
    emu.add_account(account, PASSWORD)
    emu.clear_faults()
    emu.inject("signin", Fault.stall(seconds=30.0), times=1)
    manager = AsyncTokenManager(
        account, PASSWORD, base_url=base_url, timeout=TIMEOUT, max_attempts=2, max_retry_delay=0
    )
    started = time.monotonic()
    try:
        with anyio.fail_after(BOUND):
            token = await manager.get_token()
        assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 8.0
        assert emu.is_valid(token)
        assert manager.stats.retries == 1
    finally:
        emu.clear_faults()
        await manager.aclose()


# -- 8. clocks ------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-300.0, -90.0, 90.0, 300.0], ids=lambda s: f"{s:+g}s")
async def test_server_clock_minutes_off_on_refresh_and_automation_tokens(
    emu: IndigoEmulator, wire: Wire, clock: FakeClock, skew: float
) -> None:
    emu.token_lifetime = 600.0
    emu.clock = lambda: time.time() + skew
    async with managed(wire, clock=clock, refresh_margin=60.0) as manager:
        first = await manager.get_token()
        clock.advance(575.0)  # past the floor (30 s before expiry)
        second = await manager.get_token()
        assert second != first and emu.is_valid(second)
        assert manager.stats.expires_in == pytest.approx(600.0, abs=2.0)
        automation = await manager.automation_token("1h")
        held = manager._automation["1h"]
        assert held.expires_at - clock() == pytest.approx(3600.0, abs=2.0)
        for _ in range(20):
            clock.advance(10.0)  # 200 s: neither token is due
            assert await manager.get_token() == second
            assert await manager.automation_token("1h") == automation
        assert wire.attempts == Counter({"signin": 1, "refresh_token": 1, "automation_token": 1})


@pytest.mark.parametrize("jump", [-3600.0, -120.0, 120.0, 3600.0], ids=lambda s: f"{s:+g}s")
async def test_client_wall_clock_jump_moves_no_deadline(
    emu: IndigoEmulator,
    wire: Wire,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    jump: float,
) -> None:
    emu.token_lifetime = 600.0
    real_time = time.time
    async with managed(wire, clock=clock, refresh_margin=60.0) as manager:
        first = await manager.get_token()
        monkeypatch.setattr(time, "time", lambda: real_time() + jump)
        for _ in range(50):
            clock.advance(1.0)
            assert await manager.get_token() == first
        assert wire.attempts == Counter({"signin": 1})
        clock.advance(575.0 - 50.0)  # past the floor, by the monotonic clock
        second = await manager.get_token()
        assert second != first and emu.is_valid(second)
        assert wire.attempts == Counter({"signin": 1, "refresh_token": 1})
        assert manager.stats.expires_in == pytest.approx(600.0, abs=2.0)


@pytest.mark.parametrize("jump", [-3600.0, -120.0], ids=lambda s: f"{s:+g}s")
async def test_wall_clock_jumping_back_does_not_rejuvenate_a_stored_token(
    emu: IndigoEmulator,
    wire: Wire,
    monkeypatch: pytest.MonkeyPatch,
    jump: float,
) -> None:
    # Two managers share a store (as processes share a FileStore). The first stores a
    # token; 25 s later (by the server's clock and by the real one) the wall clock jumps
    # back. The second must not take that token for a fresh one: judged by the wall
    # clock it was received in the future, so its age is unknown.
    emu.token_lifetime = 30.0
    store = MemoryStore()
    real_time = time.time
    first_clock, second_clock = FakeClock(), FakeClock()
    async with (
        managed(wire, clock=first_clock, store=store, refresh_margin=5.0) as first,
        managed(wire, clock=second_clock, store=store, refresh_margin=5.0) as second,
    ):
        stored = await first.get_token()
        emu.clock = lambda: real_time() + 25.0
        monkeypatch.setattr(time, "time", lambda: real_time() + 25.0 + jump)
        token = await second.get_token()
        assert token != stored
        assert emu.is_valid(token)
        expires_in = second.stats.expires_in
        assert expires_in is not None and expires_in <= 30.0
        second_clock.advance(expires_in - 6.0)  # before its refresh point
        emu.clock = lambda: real_time() + 25.0 + expires_in - 6.0
        assert await second.get_token() == token
        assert emu.is_valid(token)
