"""Property-based tests: parsing, and schedules of callers, cancellations and faults.

1. Whatever the API answers (any status, any bytes, any JSON, any JWT claims), each
   endpoint gives its typed value or one of the specific typed errors: never a
   ``KeyError``, an ``OverflowError``, a ``JSONDecodeError``, or a token whose
   lifetime is not a finite positive number of seconds.
2. Schedules of concurrent callers, forced refreshes, cancellations, clock moves,
   invalidations, revocations and faults run against the manager and, step by step,
   against a model of it. The model predicts each caller's outcome, the requests made
   and the renewals run; the test also checks, independently of the model, that at
   most one renewal request is in flight, that no handed-out token is expired or
   about to be, and that every caller ends with a token or a typed error (or its own
   cancellation) within a bound.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from indigo_auth import (
    AsyncTokenManager,
    IndigoAPIError,
    IndigoAuthError,
    IndigoProtocolError,
    IndigoUnavailableError,
    InvalidCredentialsError,
    RateLimitedError,
    Workspace,
)
from indigo_auth._api import IndigoAPI, SignedIn, parse_retry_after
from indigo_auth._token import MAX_LIFETIME, Token, TokenState, parse_jwt_lifetime
from indigo_auth.testing import Fault, IndigoEmulator

from .conftest import FakeClock

EMAIL = "model@example.com"
PASSWORD = "model password"
BASE = "http://127.0.0.1:9"
#: The specific errors a caller may meet; the bare base class means an unexpected one.
TYPED = (
    InvalidCredentialsError,
    RateLimitedError,
    IndigoUnavailableError,
    IndigoProtocolError,
    IndigoAPIError,
)
PARSING = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies ------------------------------------------------------------------------------

NOW = int(time.time())

numbers = st.one_of(
    st.integers(NOW - 10**6, NOW + 10**8),  # plausible times
    st.integers(-(10**20), 10**20),
    st.integers(10**300, 10**400),  # past the range of a float
    st.floats(allow_nan=True, allow_infinity=True),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
claims = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "exp": numbers | json_values,
            "iat": numbers | json_values,
            "nbf": numbers,
            "workspace_id": st.uuids().map(str) | json_values,
            "sub": st.text(max_size=12),
        },
    ),
    json_values,
)
headers = st.one_of(
    st.just({"alg": "HS256", "typ": "JWT"}),
    st.fixed_dictionaries({"alg": st.sampled_from(["none", "RS256", "HS512", "nope"])}),
    json_values,
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_of(header: object, payload: object, signature: bytes = b"sig") -> str:
    return ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature))
    )


jwts = st.builds(jwt_of, headers, claims, st.binary(max_size=8))
tokens = st.one_of(jwts, st.text(max_size=40), st.text(alphabet="abc.=-_", max_size=40))

statuses = st.one_of(st.integers(-1000, 1000), st.integers(10**20, 10**30), json_values)
envelope_status = st.fixed_dictionaries(
    {},
    optional={"http_code": statuses, "error_code": json_values, "message": json_values},
)
datas = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {}, optional={"token": tokens | json_values, "refresh_token": st.text() | json_values}
    ),
    st.fixed_dictionaries(
        {
            "workspaces": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "workspace_id": st.uuids().map(str) | json_values,
                        "name": json_values,
                        "role": json_values,
                    },
                )
                | json_values,
                max_size=3,
            )
            | json_values
        }
    ),
)
envelopes = st.fixed_dictionaries(
    {}, optional={"status": envelope_status | json_values, "data": datas}
)
bodies = st.one_of(
    envelopes.map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
)
#: Answers that are right but for the token: where a bad ``exp`` gets through to the lifetime.
signed_in_answers = st.builds(
    lambda token, refresh: json.dumps(
        {
            "status": {"error_code": "", "http_code": 200, "message": "Successful signin"},
            "data": {"token": token, "refresh_token": refresh},
        }
    ).encode(),
    jwts,
    st.text(min_size=1, max_size=12),
)
answers = st.one_of(signed_in_answers, bodies)
#: Stored states: well-formed, but for a field or two that is anything at all.
_odd = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -1.0, 0]), json_values)
stored_states = st.fixed_dictionaries(
    {
        name: st.one_of(good, good, good, _odd)
        for name, good in {
            "token": st.text(min_size=1, max_size=8),
            "refresh_token": st.none() | st.text(max_size=8),
            "lifetime": st.floats(0.001, MAX_LIFETIME),
            "received_at": st.floats(NOW - 10**6, NOW + 10**6),
            "workspace_id": st.none() | st.text(max_size=8),
        }.items()
    }
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
dates = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc)
)
retry_afters = st.one_of(
    st.none(),
    header_text,
    numbers.map(str),
    dates.map(lambda d: format_datetime(d, usegmt=True)),
    st.builds(
        "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} GMT".format,
        st.sampled_from(["Mon", "Fri", "Xyz"]),
        st.integers(0, 99),
        st.sampled_from(["Jan", "Feb", "Dec", "Foo"]),
        st.integers(0, 99999),
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
)


# -- 1. parsing ---------------------------------------------------------------------------------


def check_claims_of(token: str) -> None:
    """A token the manager would keep has a finite positive lifetime and ordered deadlines."""
    try:
        parsed = parse_jwt_lifetime(token)
    except IndigoProtocolError:
        return
    assert math.isfinite(parsed.lifetime)
    assert 0 < parsed.lifetime <= MAX_LIFETIME
    assert parsed.exp is None or math.isfinite(parsed.exp)
    assert parsed.workspace_id is None or (
        isinstance(parsed.workspace_id, str) and parsed.workspace_id
    )
    for margin in (0.0, 300.0, 1e9):
        state = TokenState(token, None, parsed.lifetime, received_at=time.time())
        held = Token.from_state(
            state, refresh_margin=margin, monotonic_now=1000.0, rng=random.Random(0)
        )
        assert 1000.0 < held.refresh_at <= held.floor_at < held.expires_at
        assert held.expires_at <= 1000.0 + parsed.lifetime + 1.0


@PARSING
@given(token=tokens)
@example(jwt_of({"alg": "HS256"}, {"iat": 1, "exp": math.nan}))
@example(jwt_of({"alg": "HS256"}, {"iat": math.nan, "exp": NOW + 60}))
@example(jwt_of({"alg": "HS256"}, {"iat": 1, "exp": 10**400}))
@example(jwt_of({"alg": "HS256"}, {"exp": math.inf}))
def test_any_token_is_a_valid_lifetime_or_a_protocol_error(token: str) -> None:
    check_claims_of(token)


@PARSING
@given(data=stored_states | json_values)
@example({"token": "t", "lifetime": 60.0, "received_at": math.nan})
@example({"token": "t", "lifetime": 60.0, "received_at": math.inf})
@example({"token": "t", "lifetime": 60.0, "received_at": 10**400})
@example({"token": "t", "lifetime": math.nan, "received_at": NOW})
def test_any_stored_state_is_a_valid_state_or_none(data: object) -> None:
    state = TokenState.from_dict(data)
    if state is not None:
        assert math.isfinite(state.lifetime) and 0 < state.lifetime <= MAX_LIFETIME
        assert math.isfinite(state.received_at)
        assert TokenState.from_dict(state.to_dict()) == state
        assert state.remaining() <= state.lifetime


@PARSING
@given(
    token=st.text(min_size=1, max_size=20),
    refresh=st.none() | st.text(min_size=1, max_size=20),
    lifetime=st.floats(min_value=0.001, max_value=MAX_LIFETIME),
    age=st.floats(min_value=-(10**6), max_value=10**6),
    workspace=st.none() | st.text(max_size=10),
)
def test_state_round_trips_and_never_grows_younger_than_its_age(
    token: str, refresh: str | None, lifetime: float, age: float, workspace: str | None
) -> None:
    now = time.time()
    state = TokenState(token, refresh, lifetime, received_at=now - age, workspace_id=workspace)
    assert TokenState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    remaining = state.remaining(now)
    assert remaining <= lifetime
    if age >= 0:
        assert remaining == pytest.approx(lifetime - age, abs=1e-3)
    elif age < -60:  # from the future: the wall clock jumped back, the age is unknown
        assert remaining <= 0


@PARSING
@given(value=retry_afters)
def test_any_retry_after_is_a_finite_wait_or_none(value: str | None) -> None:
    wait = parse_retry_after(value)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


def check_typed(error: BaseException) -> None:
    assert isinstance(error, TYPED), repr(error)
    assert isinstance(error.status_code, (int, type(None)))
    assert isinstance(error.error_code, str)
    assert isinstance(str(error), str) and isinstance(repr(error), str)
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        assert math.isfinite(error.retry_after) and error.retry_after >= 0


async def call_endpoint(endpoint: str, status: int, body: bytes, retry_after: str | None) -> object:
    def answer(request: httpx.Request) -> httpx.Response:
        extra = {} if retry_after is None else {"Retry-After": retry_after}
        return httpx.Response(status, content=body, headers=extra)

    api = IndigoAPI(BASE)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        if endpoint == "signin":
            return await api.sign_in(client, EMAIL, "0" * 32)
        if endpoint == "refresh_token":
            return await api.refresh(client, EMAIL, "refresh", "workspace")
        if endpoint == "automation_token":
            return await api.automation_token(client, "bearer", "1h")
        if endpoint == "workspaces":
            return await api.workspaces(client, "bearer")
        return await api.revoke(client, "bearer")


@PARSING
@given(
    endpoint=st.sampled_from(
        ["signin", "refresh_token", "automation_token", "workspaces", "revoke_tokens"]
    ),
    status=st.integers(200, 599),
    body=answers,
    retry_after=retry_afters,
)
def test_any_answer_is_a_typed_value_or_a_typed_error(
    endpoint: str, status: int, body: bytes, retry_after: str | None
) -> None:
    try:
        value = anyio.run(call_endpoint, endpoint, status, body, retry_after)
    except IndigoAuthError as exc:
        check_typed(exc)
        return
    assert status < 300
    if endpoint in ("signin", "refresh_token"):
        assert isinstance(value, SignedIn)
        assert isinstance(value.token, str) and value.token
        assert value.refresh_token is None or (
            isinstance(value.refresh_token, str) and value.refresh_token
        )
        check_claims_of(value.token)
    elif endpoint == "automation_token":
        assert isinstance(value, str) and value
        check_claims_of(value)
    elif endpoint == "workspaces":
        assert isinstance(value, list)
        for workspace in value:
            assert isinstance(workspace, Workspace)
            assert isinstance(workspace.workspace_id, str) and workspace.workspace_id
            assert isinstance(workspace.name, str) and isinstance(workspace.role, str)
    else:
        assert value is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.sampled_from([200, 200, 200, 401, 429, 503]), body=answers, workspaces_body=bodies)
def test_manager_ends_with_a_valid_token_or_a_typed_error(
    status: int, body: bytes, workspaces_body: bytes
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/user/workspaces":
            return httpx.Response(200, content=workspaces_body)
        return httpx.Response(status, content=body)

    async def main() -> None:
        clock = FakeClock()
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            manager = AsyncTokenManager(
                EMAIL,
                PASSWORD,
                base_url=BASE,
                http_client=client,
                max_attempts=2,
                max_retry_delay=0,
                clock=clock,
            )
            with anyio.fail_after(10):
                try:
                    token = await manager.get_token()
                except IndigoAuthError as exc:
                    check_typed(exc)
                    return
            expires_in = manager.stats.expires_in
            assert isinstance(token, str) and token
            assert expires_in is not None and math.isfinite(expires_in)
            assert 0 < expires_in <= MAX_LIFETIME
            assert await manager.get_token() == token  # cached: no renewal per call

    anyio.run(main)


# -- 2. schedules against a model -------------------------------------------------------------

LIFETIME = 100.0
MARGIN = 20.0
ATTEMPTS = 3
COOLDOWN = 30.0
#: What a transient fault makes the renewal raise when it is the last attempt's.
TRANSIENT: dict[str, type[IndigoAuthError]] = {
    "503": IndigoUnavailableError,
    "drop": IndigoUnavailableError,
    "429": RateLimitedError,
}
FAULTS: dict[str, Fault] = {
    "503": Fault.status(503),
    "drop": Fault.drop_before(),
    "429": Fault.status(429),
    "401": Fault.status(401),
}
CANCELLED = "cancelled"


@dataclass
class Model:
    """What the manager should do, given the deadlines of the token it holds.

    The deadlines (``refresh_at``, ``floor_at``) are read from the manager's token when
    it arrives: they carry jitter, and are checked on their own by the parsing
    properties above and the emulator's view of ``exp`` below.
    """

    token: str | None = None
    refresh_at: float = 0.0
    floor_at: float = 0.0
    expires_at: float = 0.0
    signed_in: bool = False  # a refresh token is stored
    server_revoked: bool = False  # the server dropped every token and refresh token
    failure: type[IndigoAuthError] | None = None
    failure_until: float = -math.inf
    retry_at: float = 0.0
    faults: dict[str, list[list[Any]]] = field(
        default_factory=lambda: {"signin": [], "refresh_token": []}
    )

    def inject(self, endpoint: str, kind: str, times: int) -> None:
        self.faults[endpoint].append([kind, times])

    def _take(self, endpoint: str) -> str | None:
        queue = self.faults[endpoint]
        if not queue:
            return None
        kind: str = queue[0][0]
        queue[0][1] -= 1
        if queue[0][1] == 0:
            queue.pop(0)
        return kind

    def renew(self, now: float) -> tuple[Counter[str], type[IndigoAuthError] | None]:
        """One renewal: the requests it makes and its error (``None``: a new token)."""
        requests: Counter[str] = Counter()
        error: type[IndigoAuthError] | None = None
        refused = not self.signed_in
        if self.signed_in:
            for _ in range(ATTEMPTS):
                requests["refresh_token"] += 1
                kind = self._take("refresh_token")
                if kind in TRANSIENT:
                    error = TRANSIENT[kind]
                    continue
                if kind == "401" or self.server_revoked:
                    refused = True
                    break
                self._renewed()
                return requests, None
        if refused:
            for _ in range(ATTEMPTS):
                requests["signin"] += 1
                kind = self._take("signin")
                if kind in TRANSIENT:
                    error = TRANSIENT[kind]
                    continue
                if kind == "401":
                    error = InvalidCredentialsError
                    break
                self.signed_in = True
                self.server_revoked = False
                self._renewed()
                return requests, None
        assert error is not None
        self.retry_at = now + 1.0
        if error is InvalidCredentialsError:
            self.failure, self.failure_until = error, now + COOLDOWN
            self.retry_at = max(self.retry_at, now + COOLDOWN)
        return requests, error

    def _renewed(self) -> None:
        self.failure, self.failure_until, self.retry_at = None, -math.inf, 0.0


@dataclass
class Expected:
    outcome: str  # what callers get: "current" token, the "new" one, or an "error"
    waits: bool  # callers wait for a renewal (and can be cancelled while they do)
    requests: Counter[str]
    renewals: int
    renewed: bool = False  # the manager holds a new token after the step
    error: type[IndigoAuthError] | None = None


def predict_burst(model: Model, now: float, force: bool) -> Expected:
    if not force and model.token is not None and now < model.refresh_at:
        return Expected("current", False, Counter(), 0)
    if not force and model.token is not None and now < model.floor_at:
        if now < model.retry_at:
            return Expected("current", False, Counter(), 0)
        # In the background: callers get the current token, whatever comes of it.
        requests, error = model.renew(now)
        return Expected("current", False, requests, 1, renewed=error is None)
    if model.failure is not None and now < model.failure_until:
        return Expected("error", False, Counter(), 0, error=model.failure)
    requests, error = model.renew(now)
    if error is None:
        return Expected("new", True, requests, 1, renewed=True)
    return Expected("error", True, requests, 1, error=error)


class Probe(httpx.AsyncBaseTransport):
    """Counts renewal requests in flight at once; holds them at a gate when told to."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: anyio.Event | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        renewal = request.url.path in ("/user/signin", "/user/refresh_token")
        if renewal and self.gate is not None:
            await self.gate.wait()
        if renewal:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            if renewal:
                self.in_flight -= 1


bursts = st.tuples(
    st.just("burst"),
    st.integers(1, 12),
    st.booleans(),
    st.sampled_from(["none", "first", "some", "all"]),
)
advances = st.tuples(
    st.just("advance"),
    st.one_of(
        # Into a zone of the current token's life: where the interesting things happen.
        st.sampled_from(["fresh", "early", "floor", "expired"]),
        st.sampled_from([0.0, 0.5, 1.0, 5.0, 20.0, 40.0, 79.0, 81.0, 85.0, 91.0, 95.0, 150.0]),
    ),
)
faults = st.tuples(
    st.just("fault"),
    st.sampled_from(["signin", "refresh_token"]),
    st.sampled_from(sorted(FAULTS)),
    st.sampled_from([1, 2, ATTEMPTS, ATTEMPTS, ATTEMPTS + 3]),  # often enough to fail a renewal
)
others = st.sampled_from([("invalidate",), ("revoke_all",)])
#: A chunk of a schedule: maybe faults, a move of the clock, callers, maybe an invalidation
#: or a revocation. Chunks make the interesting sequences likely: a renewal that fails
#: in a zone of the token's life, then more callers in the same zone.
chunks = st.builds(
    lambda injected, advance, callers, other: [*injected, advance, *callers, *other],
    st.lists(faults, max_size=2),
    advances,
    st.lists(bursts, min_size=1, max_size=3),
    st.lists(others, max_size=1),
)
#: A schedule starts with callers (a token to play with), then chunks.
schedules = st.builds(
    lambda first, rest: [first, *(step for chunk in rest for step in chunk)],
    bursts,
    st.lists(chunks, max_size=5),
)


def advance_for(model: Model, now: float, target: float | str) -> float:
    """Seconds to move the clock: as given, or into a zone of the current token's life."""
    if isinstance(target, float):
        return target
    if model.token is None:
        return 1.0
    goal = {
        "fresh": now + 1.0,
        "early": (model.refresh_at + model.floor_at) / 2,
        "floor": (model.floor_at + model.expires_at) / 2,
        "expired": model.expires_at + 1.0,
    }[target]
    return max(goal - now, 0.5)


def chosen(mode: str, n: int) -> set[int]:
    return {"none": set(), "first": {0}, "some": set(range(0, n, 2)), "all": set(range(n))}[mode]


async def run_burst(
    manager: AsyncTokenManager, probe: Probe, n: int, force: bool, cancel: set[int]
) -> list[object]:
    """``n`` callers at once; those in ``cancel`` are cancelled while they wait."""
    if cancel:
        probe.gate = anyio.Event()
    outcomes: list[object] = [None] * n
    scopes = [anyio.CancelScope() for _ in range(n)]

    async def caller(i: int) -> None:
        with scopes[i]:
            try:
                outcomes[i] = await manager.get_token(force_refresh=force)
            except IndigoAuthError as exc:
                outcomes[i] = exc
            return
        outcomes[i] = CANCELLED

    waiting = manager.stats.waiters + n
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(caller, i)
        if cancel:
            # Every caller waits for the renewal, which waits at the gate.
            while manager.stats.waiters < waiting:
                await anyio.lowlevel.checkpoint()
            for i in cancel:
                scopes[i].cancel()
            assert probe.gate is not None
            probe.gate.set()
    probe.gate = None
    return outcomes


async def settle(manager: AsyncTokenManager) -> None:
    """Wait for a renewal running in the background to end."""
    while manager._flight is not None:
        await anyio.sleep(0.001)


async def run_schedule(schedule: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    start_wall = time.time()
    emu = IndigoEmulator(
        {EMAIL: PASSWORD},
        rate_limit=None,
        token_lifetime=LIFETIME,
        clock=lambda: start_wall + clock.now - 1000.0,
    )
    probe = Probe(emu.transport())
    model = Model()
    async with httpx.AsyncClient(transport=probe) as client:
        manager = AsyncTokenManager(
            EMAIL,
            PASSWORD,
            base_url=BASE,
            http_client=client,
            refresh_margin=MARGIN,
            max_attempts=ATTEMPTS,
            max_retry_delay=0,
            credentials_cooldown=COOLDOWN,
            clock=clock,
        )
        manager._rng = random.Random(0)  # the same jitter each run: replays replay
        for step in schedule:
            requests_before = Counter(emu.counters.requests)
            renewals_before = manager.stats.renewals
            expected_requests: Counter[str] = Counter()
            expected_renewals = 0
            if step[0] == "advance":
                clock.advance(advance_for(model, clock(), step[1]))
            elif step[0] == "fault":
                _, endpoint, kind, times = step
                emu.inject(endpoint, FAULTS[kind], times=times)
                model.inject(endpoint, kind, times)
            elif step[0] == "invalidate":
                dropped = manager.invalidate(model.token or "no token")
                assert dropped == (model.token is not None)
                model.token = None
            elif step[0] == "revoke_all":
                emu.revoke_all(EMAIL)
                model.server_revoked = True
            else:
                _, n, force, mode = step
                before = model.token
                expected = predict_burst(model, clock(), force)
                cancel = chosen(mode, n) if expected.waits else set()
                with anyio.fail_after(10):
                    outcomes = await run_burst(manager, probe, n, force, cancel)
                    await settle(manager)
                current = manager._token
                if expected.renewed:
                    assert current is not None and current.value != before, step
                    model.token = current.value
                    model.refresh_at, model.floor_at = current.refresh_at, current.floor_at
                    model.expires_at = current.expires_at
                else:
                    assert (current.value if current else None) == before
                for i, outcome in enumerate(outcomes):
                    if i in cancel:
                        assert outcome == CANCELLED
                    elif expected.outcome == "error":
                        assert type(outcome) is expected.error, (outcome, expected)
                    else:
                        assert isinstance(outcome, str), (outcome, expected)
                        assert outcome == (before if expected.outcome == "current" else model.token)
                        # Never expired, nor about to: a tenth of the lifetime at least.
                        left = emu.decode(outcome)["exp"] - emu.clock()
                        assert left > LIFETIME * 0.1 - 1.0
                expected_requests = expected.requests
                expected_renewals = expected.renewals
            requests = Counter(emu.counters.requests)
            requests.subtract(requests_before)
            assert +requests == expected_requests, step
            assert manager.stats.renewals - renewals_before == expected_renewals, step
            assert probe.most_in_flight <= 1
        await manager.aclose()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules)
def test_schedules_of_callers_cancellations_and_faults_follow_the_model(
    backend: str, schedule: list[tuple[Any, ...]]
) -> None:
    anyio.run(run_schedule, schedule, backend=backend)


def test_the_model_covers_a_known_hard_schedule() -> None:
    # Early window, failing refresh, refused sign-in, cancellation of everyone waiting,
    # then recovery: written out, so that it runs whatever hypothesis draws.
    schedule: list[tuple[Any, ...]] = [
        ("burst", 5, False, "first"),
        ("advance", 85.0),
        ("fault", "refresh_token", "503", 3),
        ("burst", 3, False, "none"),
        ("burst", 3, False, "none"),
        ("advance", 1.0),
        ("fault", "refresh_token", "401", 1),
        ("fault", "signin", "401", 1),
        ("burst", 4, False, "all"),  # the early renewal is refused
        ("burst", 2, False, "none"),  # the token in hand is still good
        ("advance", 10.0),
        ("burst", 4, False, "some"),
        ("advance", 40.0),
        ("burst", 6, False, "some"),
        ("invalidate",),
        ("revoke_all",),
        ("burst", 2, True, "none"),
    ]
    for backend in ("asyncio", "trio"):
        anyio.run(run_schedule, schedule, backend=backend)
