"""AsyncTokenManager against the emulator, in process (ASGITransport)."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import httpx
import pytest

from indigo_auth import (
    AsyncTokenManager,
    IndigoAPIError,
    IndigoProtocolError,
    IndigoUnavailableError,
    InvalidCredentialsError,
    MemoryStore,
    RateLimitedError,
)
from indigo_auth._api import md5_hex
from indigo_auth.testing import Fault, IndigoEmulator

from .conftest import EMAIL, PASSWORD, FakeClock

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:9"


def make(client: httpx.AsyncClient, **kwargs: object) -> AsyncTokenManager:
    settings: dict[str, object] = {
        "base_url": BASE,
        "http_client": client,
        "max_retry_delay": 0.0,
    }
    settings.update(kwargs)
    return AsyncTokenManager(EMAIL, PASSWORD, **settings)  # type: ignore[arg-type]


async def gather(n: int, manager: AsyncTokenManager) -> list[str | BaseException]:
    results: list[str | BaseException] = []

    async def one() -> None:
        try:
            results.append(await manager.get_token())
        except Exception as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


# -- 1. coalescing ------------------------------------------------------------------


async def test_stampede_makes_one_request(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    emu.inject("signin", Fault.latency(0.05), times=1)
    manager = make(client)
    results = await gather(3000, manager)
    assert len(set(results)) == 1
    token = results[0]
    assert isinstance(token, str) and emu.is_valid(token)
    assert emu.counters.requests == {"signin": 1}
    assert emu.counters.sign_ins == 1
    assert manager.stats.waiters == 3000
    assert manager.stats.renewals == 1


async def test_managers_sharing_a_store_share_the_request(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    emu.inject("signin", Fault.latency(0.05), times=1)
    store = MemoryStore()
    managers = [make(client, store=store) for _ in range(5)]
    results: list[str] = []

    async def one(manager: AsyncTokenManager) -> None:
        results.append(await manager.get_token())

    async with anyio.create_task_group() as tg:
        for manager in managers:
            for _ in range(20):
                tg.start_soon(one, manager)
    assert len(set(results)) == 1
    assert emu.counters.sign_ins == 1
    assert sum(m.stats.adopted for m in managers) == 4


async def test_errors_reach_every_waiter(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    emu.inject("signin", Fault.status(500))
    manager = make(client, max_attempts=2)
    results = await gather(200, manager)
    assert all(isinstance(r, IndigoUnavailableError) for r in results)
    assert emu.counters.requests["signin"] == 2


# -- 2. the request belongs to no caller ---------------------------------------------


async def test_cancelled_first_caller_does_not_cancel_the_request(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    emu.inject("signin", Fault.latency(0.3), times=1)
    manager = make(client)
    first_cancelled = False
    tokens: list[str] = []

    async def impatient() -> None:
        nonlocal first_cancelled
        with anyio.move_on_after(0.05) as scope:
            await manager.get_token()
        first_cancelled = scope.cancelled_caught

    async def patient() -> None:
        await anyio.sleep(0.01)
        tokens.append(await manager.get_token())

    async with anyio.create_task_group() as tg:
        tg.start_soon(impatient)
        tg.start_soon(patient)
    assert first_cancelled
    assert len(tokens) == 1 and emu.is_valid(tokens[0])
    assert emu.counters.sign_ins == 1
    # No poisoned state: later calls get the same cached token without a request.
    assert await manager.get_token() == tokens[0]
    assert emu.counters.requests == {"signin": 1}


async def test_each_caller_may_time_out_alone(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    emu.inject("signin", Fault.latency(0.3), times=1)
    manager = make(client)
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.05):
            await manager.get_token()
    token = await manager.get_token()
    assert emu.is_valid(token)
    assert emu.counters.sign_ins == 1


# -- 3. refresh ahead -----------------------------------------------------------------


async def test_early_window_hands_out_the_current_token_while_renewing(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.token_lifetime = 100.0
    manager = make(client, refresh_margin=20.0, clock=clock)
    first = await manager.get_token()
    clock.advance(85.0)  # inside the 20 s margin, before the 10 s floor
    emu.inject("refresh_token", Fault.latency(0.2), times=1)
    assert await manager.get_token() == first  # at once, no waiting
    assert manager.stats.waiters == 1  # only the cold start waited
    with anyio.fail_after(5):
        while manager.stats.refreshes == 0:
            await anyio.sleep(0.01)
    second = await manager.get_token()
    assert second != first
    assert emu.counters.refreshes == 1
    assert emu.counters.sign_ins == 1


async def test_past_the_floor_callers_wait_for_the_renewal(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.token_lifetime = 100.0
    manager = make(client, refresh_margin=20.0, clock=clock)
    first = await manager.get_token()
    clock.advance(95.0)  # past the floor (10 s before expiry)
    results = await gather(50, manager)
    assert len(set(results)) == 1 and results[0] != first
    assert emu.counters.refreshes == 1
    assert manager.stats.waiters == 51


async def test_background_refresh_keeps_callers_from_waiting(emu: IndigoEmulator) -> None:
    emu.token_lifetime = 1.5
    async with httpx.AsyncClient(transport=emu.transport()) as http:
        manager = make(http, refresh_margin=0.6)
        seen: set[str] = set()
        async with manager:
            seen.add(await manager.get_token())
            with anyio.move_on_after(3.5):
                while True:
                    token = await manager.get_token()
                    assert emu.is_valid(token)
                    seen.add(token)
                    await anyio.sleep(0.01)
        assert manager.stats.waiters == 1  # the cold start; renewals ran in the background
    assert len(seen) >= 3
    assert emu.counters.sign_ins == 1
    # Every token seen took one refresh; one more may land between the last call and the exit.
    assert emu.counters.refreshes in (len(seen) - 1, len(seen))


# -- 4. timing for any lifetime -------------------------------------------------------


async def test_margin_wider_than_lifetime_does_not_renew_per_call(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.token_lifetime = 60.0
    manager = make(client, refresh_margin=300.0, clock=clock)
    for _ in range(100):
        await manager.get_token()
        clock.advance(0.2)  # 20 s in all: before half-life
    assert emu.counters.sign_ins + emu.counters.refreshes == 1


@pytest.mark.parametrize("skew", [-3600.0, -600.0, 600.0, 3600.0])
async def test_server_clock_skew_does_not_matter(
    emu: IndigoEmulator, client: httpx.AsyncClient, skew: float
) -> None:
    import time

    emu.clock = lambda: time.time() + skew
    emu.token_lifetime = 120.0
    manager = make(client)
    await manager.get_token()
    expires_in = manager.stats.expires_in
    assert expires_in is not None and 118.0 < expires_in <= 120.0
    for _ in range(10):
        await manager.get_token()
    assert emu.counters.sign_ins == 1 and emu.counters.refreshes == 0


# -- 5. a failing early renewal is quiet ----------------------------------------------


async def test_failing_early_renewal_is_quiet(
    emu: IndigoEmulator,
    client: httpx.AsyncClient,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="indigo_auth")
    emu.token_lifetime = 100.0
    manager = make(client, refresh_margin=20.0, clock=clock, max_attempts=2)
    first = await manager.get_token()
    emu.inject("refresh_token", Fault.status(503))
    emu.inject("signin", Fault.status(503))
    clock.advance(85.0)
    for _ in range(200):
        assert await manager.get_token() == first
        await anyio.lowlevel.checkpoint()
    with anyio.fail_after(5):
        while manager.stats.failures == 0:
            await anyio.sleep(0.01)
    for _ in range(200):
        assert await manager.get_token() == first
    # One renewal in the window (2 attempts at refresh), not one per call.
    assert emu.counters.requests.get("refresh_token", 0) == 2
    retry_logs = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retry_logs) == 1
    clock.advance(10.0)  # past the floor: no valid token remains
    with pytest.raises(IndigoUnavailableError):
        await manager.get_token()


# -- 6. renewal chain -----------------------------------------------------------------


async def test_refresh_rotates_and_keeps_the_newest_refresh_token(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.token_lifetime = 100.0
    manager = make(client, refresh_margin=20.0, clock=clock)
    tokens = [await manager.get_token()]
    for _ in range(3):
        clock.advance(95.0)
        tokens.append(await manager.get_token())
    assert len(set(tokens)) == 4
    assert emu.counters.sign_ins == 1
    assert emu.counters.refreshes == 3  # each used the newest (single-use) refresh token
    assert emu.counters.refusals == 0


async def test_refused_refresh_falls_back_to_sign_in(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.token_lifetime = 100.0
    manager = make(client, refresh_margin=20.0, clock=clock)
    first = await manager.get_token()
    emu.revoke_all(EMAIL)  # refresh tokens die with it
    clock.advance(95.0)
    second = await manager.get_token()
    assert second != first and emu.is_valid(second)
    assert emu.counters.sign_ins == 2
    assert emu.counters.requests["refresh_token"] == 1


async def test_workspace_switch(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    account = emu.add_account("team@example.com", "pw-team", workspaces=[("Team", "member")])
    other = account.workspace_ids[1]
    manager = AsyncTokenManager(
        "team@example.com", "pw-team", base_url=BASE, http_client=client, workspace_id=other
    )
    token = await manager.get_token()
    assert emu.decode(token)["workspace_id"] == other
    assert manager.workspace_id == other
    assert emu.counters.sign_ins == 1 and emu.counters.refreshes == 1


# -- 7. retries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(500),
        Fault.status(502),
        Fault.status(503),
        Fault.status(504),
        Fault.status(429, retry_after=0.01),
        Fault.status(429),
        Fault.html(),
        Fault.drop_before(),
        Fault.drop_midway(),
    ],
    ids=lambda f: repr(f)[:40],
)
async def test_transient_faults_are_retried(
    emu: IndigoEmulator, client: httpx.AsyncClient, fault: Fault
) -> None:
    emu.inject("signin", fault, times=2)
    manager = make(client)
    token = await manager.get_token()
    assert emu.is_valid(token)
    assert emu.counters.requests["signin"] == 3
    assert manager.stats.retries == 2


async def test_retries_run_out_into_typed_errors(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    emu.inject("signin", Fault.status(429, retry_after=0.01))
    manager = make(client, max_attempts=3, credentials_cooldown=0)
    with pytest.raises(RateLimitedError) as caught:
        await manager.get_token()
    assert caught.value.retry_after == pytest.approx(0.01, abs=0.01)
    assert caught.value.status_code == 429
    assert emu.counters.requests["signin"] == 3
    emu.clear_faults()
    emu.inject("signin", Fault.status(503))
    manager = make(client, max_attempts=4)
    with pytest.raises(IndigoUnavailableError) as unavailable:
        await manager.get_token()
    assert unavailable.value.status_code == 503
    assert emu.counters.requests["signin"] == 7


async def test_retry_after_is_honoured(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    emu.inject("signin", Fault.status(429, retry_after=0.3), times=1)
    manager = make(client, max_retry_delay=5.0)
    started = anyio.current_time()
    await manager.get_token()
    assert anyio.current_time() - started >= 0.29


async def test_retry_after_is_capped(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    emu.inject("signin", Fault.status(429, retry_after=86400), times=1)
    manager = make(client, max_retry_delay=0.05)
    with anyio.fail_after(5):
        assert emu.is_valid(await manager.get_token())


async def test_overall_deadline(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    emu.inject("signin", Fault.latency(5.0))
    manager = make(client, deadline=0.2)
    with anyio.fail_after(3), pytest.raises(IndigoUnavailableError, match="deadline"):
        await manager.get_token()


# -- 8. no storms on bad credentials --------------------------------------------------


async def test_wrong_password_costs_one_request(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    manager = AsyncTokenManager(EMAIL, "wrong", base_url=BASE, http_client=client)
    results = await gather(500, manager)
    assert all(isinstance(r, InvalidCredentialsError) for r in results)
    for _ in range(50):
        with pytest.raises(InvalidCredentialsError) as caught:
            await manager.get_token()
    assert caught.value.status_code == 401
    assert emu.counters.requests == {"signin": 1}


async def test_credentials_error_expires_after_cooldown(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    manager = AsyncTokenManager(
        EMAIL, "wrong", base_url=BASE, http_client=client, clock=clock, credentials_cooldown=30
    )
    for _ in range(3):
        with pytest.raises(InvalidCredentialsError):
            await manager.get_token()
    clock.advance(31)
    with pytest.raises(InvalidCredentialsError):
        await manager.get_token()
    assert emu.counters.requests == {"signin": 2}


# -- 9. envelope-aware errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.empty(), IndigoProtocolError),
        (Fault.truncated(), IndigoProtocolError),
        (Fault.wrong_shape(), IndigoProtocolError),
        (Fault.error_in_200(401), InvalidCredentialsError),
        (Fault.error_in_200(503), IndigoUnavailableError),
        (Fault.status(400), IndigoAPIError),
    ],
    ids=["empty", "truncated", "wrong-shape", "401-in-200", "503-in-200", "400"],
)
async def test_bad_answers_become_typed_errors(
    emu: IndigoEmulator, client: httpx.AsyncClient, fault: Fault, error: type[Exception]
) -> None:
    emu.inject("signin", fault)
    manager = make(client, max_attempts=2)
    with pytest.raises(error):
        await manager.get_token()


# -- 10. httpx integration ------------------------------------------------------------


async def test_httpx_auth_adds_the_bearer_and_survives_a_401_storm(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    manager = make(client)
    async with httpx.AsyncClient(transport=emu.transport(), base_url=BASE, auth=manager) as api:
        assert (await api.get("/workspace/folders")).status_code == 200
        emu.revoke_all(EMAIL)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await api.get("/workspace/folders")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
    assert statuses == [200] * 200
    assert emu.counters.sign_ins == 2  # one renewal for the whole storm
    assert manager.stats.invalidations == 1


async def test_bearer_goes_to_indigo_hosts_only(emu: IndigoEmulator) -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[str(request.url)] = request.headers.get("Authorization")
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=emu.transport()) as http:
        manager = AsyncTokenManager(
            EMAIL, PASSWORD, base_url="https://api.indigobrowser.com", http_client=http
        )
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), auth=manager
        ) as client:
            for url in (
                "https://api.indigobrowser.com/workspace/folders",
                "https://launcher.indigobrowser.com:45011/api/v2/profile",
                "https://example.org/collect",
                "https://api.indigobrowser.com:8443/other-port",
                "http://api.indigobrowser.com/plain-http",
                "https://api.indigobrowser.com.evil.test/",
            ):
                await client.get(url)
    assert seen["https://api.indigobrowser.com/workspace/folders"] is not None
    assert seen["https://launcher.indigobrowser.com:45011/api/v2/profile"] is not None
    assert seen["https://example.org/collect"] is None
    assert seen["https://api.indigobrowser.com:8443/other-port"] is None
    assert seen["http://api.indigobrowser.com/plain-http"] is None
    assert seen["https://api.indigobrowser.com.evil.test/"] is None


async def test_invalidate_only_drops_the_current_token(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    manager = make(client)
    token = await manager.get_token()
    assert manager.invalidate("some-old-token") is False
    assert await manager.get_token() == token
    assert manager.invalidate(token) is True
    assert manager.invalidate(token) is False
    assert await manager.get_token() != token


async def test_force_refresh(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    manager = make(client)
    first = await manager.get_token()
    second = await manager.get_token(force_refresh=True)
    assert second != first
    assert emu.counters.refreshes == 1


# -- 11. secrets ----------------------------------------------------------------------


async def test_no_secret_in_logs_reprs_errors_or_stats(
    emu: IndigoEmulator, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    manager = make(client)
    observed: list[str] = [repr(manager), str(manager)]
    tokens = [await manager.get_token()]
    tokens.append(await manager.get_token(force_refresh=True))
    emu.inject("refresh_token", Fault.status(503), times=1)
    tokens.append(await manager.get_token(force_refresh=True))
    tokens.append(await manager.automation_token("1h"))
    assert manager._token is not None
    refresh_tokens = [manager._token.refresh_token]
    observed += [repr(manager._token), repr(manager._token.state), repr(manager.stats)]
    bad = AsyncTokenManager(EMAIL, "wrong password", base_url=BASE, http_client=client)
    try:
        await bad.get_token()
    except InvalidCredentialsError as exc:
        observed += [str(exc), repr(exc)]
    observed += [r.getMessage() for r in caplog.records]
    observed += [str(r.args) for r in caplog.records]
    text = "\n".join(observed)
    secrets = [PASSWORD, md5_hex(PASSWORD), "wrong password", md5_hex("wrong password")]
    secrets += tokens + [t for t in refresh_tokens if t]
    for secret in secrets:
        assert secret not in text
    assert "**********" in repr(manager)


# -- 12. the rest of the surface ------------------------------------------------------


async def test_automation_tokens_are_cached_per_period(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    manager = make(client, clock=clock)
    hour = await manager.automation_token("1h")
    assert emu.decode(hour)["is_automation"] is True
    assert await manager.automation_token("1h") == hour
    forever = await manager.automation_token("no_exp")
    assert "exp" not in emu.decode(forever)
    assert emu.counters.automation_tokens_issued == 2
    clock.advance(3600 * 24 * 365)
    assert await manager.automation_token("no_exp") == forever
    renewed = await manager.automation_token("1h")
    assert renewed != hour
    assert emu.counters.automation_tokens_issued == 3
    with pytest.raises(ValueError, match="period"):
        await manager.automation_token("2d")


async def test_automation_not_on_plan(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    emu.add_account("free@example.com", "pw-free", automation=False)
    manager = AsyncTokenManager("free@example.com", "pw-free", base_url=BASE, http_client=client)
    with pytest.raises(IndigoAPIError) as caught:
        await manager.automation_token("1w")
    assert caught.value.status_code == 403


async def test_workspaces_and_revoke(emu: IndigoEmulator, client: httpx.AsyncClient) -> None:
    manager = make(client)
    workspaces = await manager.workspaces()
    assert [w.role for w in workspaces] == ["owner"]
    token = await manager.get_token()
    await manager.revoke()
    assert not emu.is_valid(token)
    assert emu.counters.revocations == 1
    fresh = await manager.get_token()
    assert fresh != token and emu.is_valid(fresh)
    assert emu.counters.sign_ins == 2


async def test_from_env(monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient) -> None:
    monkeypatch.setenv("INDIGO_EMAIL", EMAIL)
    monkeypatch.setenv("INDIGO_PASSWORD_MD5", md5_hex(PASSWORD))
    monkeypatch.setenv("INDIGO_API_URL", BASE)
    monkeypatch.delenv("INDIGO_PASSWORD", raising=False)
    monkeypatch.delenv("INDIGO_WORKSPACE_ID", raising=False)
    manager = AsyncTokenManager.from_env(http_client=client)
    assert manager.base_url == BASE
    assert await manager.get_token()
    monkeypatch.delenv("INDIGO_EMAIL")
    with pytest.raises(ValueError, match="INDIGO_EMAIL"):
        AsyncTokenManager.from_env()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AsyncTokenManager(EMAIL)
    with pytest.raises(ValueError, match="exactly one"):
        AsyncTokenManager(EMAIL, "pw", password_md5=md5_hex("pw"))
    with pytest.raises(ValueError, match="32 hexadecimal"):
        AsyncTokenManager(EMAIL, password_md5="nope")
    with pytest.raises(ValueError, match="plain http"):
        AsyncTokenManager(EMAIL, "pw", base_url="http://api.indigobrowser.com")
    manager = AsyncTokenManager(EMAIL, "pw", base_url="api.indigobrowser.com")
    assert manager.base_url == "https://api.indigobrowser.com"


async def test_aclose_closes_the_owned_client() -> None:
    manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=BASE)
    client = await manager._http()
    await manager.aclose()
    assert client.is_closed


async def test_refused_credentials_do_not_hide_a_still_valid_token(
    emu: IndigoEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emu.token_lifetime = 100.0
    manager = make(client, refresh_margin=20.0, clock=clock)
    first = await manager.get_token()
    emu.revoke_all(EMAIL)  # the refresh token dies
    emu.inject("signin", Fault.status(401))  # and the password no longer works
    clock.advance(85.0)
    assert await manager.get_token() == first
    with anyio.fail_after(5):
        while manager.stats.failures == 0:
            await anyio.sleep(0.01)
    for _ in range(20):
        assert await manager.get_token() == first
    assert emu.counters.requests["signin"] == 2  # the first sign-in and one refused
    clock.advance(10.0)
    with pytest.raises(InvalidCredentialsError):
        await manager.get_token()
    assert emu.counters.requests["signin"] == 2  # the cooldown holds


async def test_force_refresh_on_a_new_manager_replaces_the_stored_token(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    store = MemoryStore()
    first = await make(client, store=store).get_token()
    forced = await make(client, store=store).get_token(force_refresh=True)
    assert forced != first
    assert emu.counters.sign_ins == 1
    assert emu.counters.refreshes == 1


async def test_aclose_cancels_a_renewal_backing_off(
    emu: IndigoEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="indigo_auth")
    emu.inject("signin", Fault.status(503))
    outcome: list[BaseException] = []
    async with emu.serve() as url:
        manager = AsyncTokenManager(
            EMAIL, PASSWORD, base_url=url, max_retry_delay=0.5, max_attempts=10
        )

        async def waiter() -> None:
            try:
                await manager.get_token()
            except IndigoUnavailableError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            with anyio.fail_after(5):
                while emu.counters.requests.get("signin", 0) < 1:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)  # the 503 is in: the renewal backs off (0.25 s at least)
            await manager.aclose()
        assert len(outcome) == 1
        assert "closed" in str(outcome[0])
        await anyio.sleep(0.6)
    assert emu.counters.requests["signin"] <= 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
