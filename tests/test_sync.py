"""TokenManager: the async engine behind a thread-safe synchronous face.

Against the emulator over a loopback socket (``serve_in_thread``) unless a test says
otherwise; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import anyio.to_thread
import httpx
import pytest
import requests

from indigo_auth import (
    AsyncTokenManager,
    IndigoUnavailableError,
    InvalidCredentialsError,
    RateLimitedError,
    TokenManager,
)
from indigo_auth._api import md5_hex
from indigo_auth.testing import Fault, IndigoEmulator

from ._support.launcher import FakeLauncher
from .conftest import EMAIL, PASSWORD

THREADS = 64


@pytest.fixture
def manager(api: str) -> Iterator[TokenManager]:
    with TokenManager(EMAIL, PASSWORD, base_url=api, max_retry_delay=0.0) as m:
        yield m


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def in_threads(n: int, fn: Callable[[], object]) -> list[object]:
    """Run ``fn`` in ``n`` threads released at once; results or exceptions, in no order."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(timeout=10)
        try:
            result: object = fn()
        except Exception as exc:
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return results


def manager_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("indigo-auth")]


# -- one request for many threads ----------------------------------------------------------


def test_many_threads_make_one_sign_in(emu: IndigoEmulator, manager: TokenManager) -> None:
    emu.inject("signin", Fault.latency(0.2), times=1)
    results = in_threads(THREADS, manager.get_token)
    assert len(results) == THREADS
    assert len(set(results)) == 1
    token = results[0]
    assert isinstance(token, str) and emu.is_valid(token)
    assert emu.counters.requests == {"signin": 1}
    assert emu.counters.sign_ins == 1
    assert manager.stats.sign_ins == 1


def test_in_process_transport(emu: IndigoEmulator) -> None:
    client = httpx.AsyncClient(transport=emu.transport())
    try:
        with TokenManager(EMAIL, PASSWORD, base_url="http://127.0.0.1:9", http_client=client) as m:
            results = in_threads(THREADS, m.get_token)
    finally:
        anyio.run(client.aclose)
    assert len(set(results)) == 1
    assert emu.counters.sign_ins == 1


def test_wrong_password_many_threads_one_attempt(emu: IndigoEmulator, api: str) -> None:
    with TokenManager(EMAIL, "hunter2 is not it", base_url=api) as m:
        results = in_threads(THREADS, m.get_token)
    assert all(isinstance(r, InvalidCredentialsError) for r in results)
    assert emu.counters.requests == {"signin": 1}
    for result in results:
        assert "hunter2" not in str(result) and "hunter2" not in repr(result)


def test_rate_limited(emu: IndigoEmulator, api: str) -> None:
    emu.inject("signin", Fault.status(429, retry_after=0))
    with TokenManager(EMAIL, PASSWORD, base_url=api, max_attempts=2, max_retry_delay=0.0) as m:
        with pytest.raises(RateLimitedError):
            m.get_token()
        assert m.stats.retries == 1
    assert emu.counters.requests == {"signin": 2}


def test_hot_path_crosses_no_thread(manager: TokenManager, monkeypatch: pytest.MonkeyPatch) -> None:
    token = manager.get_token()

    def refuse(*args: object) -> None:
        raise AssertionError("the hot path went through the event loop")

    monkeypatch.setattr(manager, "_call", refuse)
    assert all(manager.get_token() == token for _ in range(1000))


def test_force_refresh_and_invalidate(emu: IndigoEmulator, manager: TokenManager) -> None:
    first = manager.get_token()
    second = manager.get_token(force_refresh=True)
    assert second != first and emu.is_valid(second)
    assert emu.counters.refreshes == 1 and emu.counters.sign_ins == 1
    assert manager.invalidate(first) is False  # not the current token any more
    assert manager.invalidate(second) is True
    assert manager.invalidate(second) is False
    third = manager.get_token()
    assert third not in (first, second)
    assert manager.stats.invalidations == 1


def test_refreshes_ahead_while_open(emu: IndigoEmulator, api: str) -> None:
    emu.token_lifetime = 1.0
    with TokenManager(EMAIL, PASSWORD, base_url=api) as m:
        first = m.get_token()
        wait_until(lambda: m.stats.refreshes >= 1, timeout=5)
        waited = m.stats.waiters
        second = m.get_token()
        assert second != first and emu.is_valid(second)
        assert m.stats.waiters == waited  # nobody waited: the token was renewed ahead
    assert emu.counters.sign_ins == 1


def test_api_calls(emu: IndigoEmulator, manager: TokenManager) -> None:
    (workspace,) = manager.workspaces()
    assert workspace.workspace_id == emu.account(EMAIL).default_workspace_id
    automation = manager.automation_token("1w")
    assert emu.decode(automation)["is_automation"] is True
    assert manager.automation_token("1w") == automation  # cached per period
    token = manager.get_token()
    manager.revoke()
    assert not emu.is_valid(token) and not emu.is_valid(automation)
    assert manager.get_token() != token
    assert emu.counters.sign_ins == 2
    with pytest.raises(ValueError, match="period"):
        manager.automation_token("forever")


# -- from any thread, event loops included ----------------------------------------------


@pytest.mark.anyio
async def test_worker_threads_of_a_running_loop(emu: IndigoEmulator, manager: TokenManager) -> None:
    emu.inject("signin", Fault.latency(0.3), times=1)
    ticks = 0
    tokens: list[str] = []

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async def ask() -> None:
        tokens.append(await anyio.to_thread.run_sync(manager.get_token))

    async with anyio.create_task_group() as ticker:
        ticker.start_soon(tick)
        async with anyio.create_task_group() as askers:
            for _ in range(20):
                askers.start_soon(ask)
        ticker.cancel_scope.cancel()
    assert len(set(tokens)) == 1 and len(tokens) == 20
    assert ticks >= 10, "the event loop was blocked while the sign-in ran"
    assert emu.counters.sign_ins == 1


def test_run_in_executor(emu: IndigoEmulator, manager: TokenManager) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(None, manager.get_token) for _ in range(20))
            )
        )

    tokens = asyncio.run(main())
    assert len(set(tokens)) == 1
    assert emu.counters.sign_ins == 1


def test_on_an_event_loop_thread_it_still_answers(manager: TokenManager) -> None:
    async def main() -> str:
        return manager.get_token()  # blocks this loop while it signs in: documented

    assert anyio.run(main)


def test_bounded_by_the_deadline(emu: IndigoEmulator, api: str) -> None:
    emu.inject("signin", Fault.latency(30))
    with TokenManager(EMAIL, PASSWORD, base_url=api, deadline=0.3, timeout=20) as m:
        started = time.monotonic()
        with pytest.raises(IndigoUnavailableError):
            m.get_token()
        assert time.monotonic() - started < 5


# -- lifecycle ---------------------------------------------------------------------------


def test_close_while_a_renewal_is_in_flight(emu: IndigoEmulator, api: str) -> None:
    emu.inject("signin", Fault.latency(30), times=1)
    m = TokenManager(EMAIL, PASSWORD, base_url=api, timeout=60)
    results = []
    waiter = threading.Thread(target=lambda: results.append(catch(m.get_token)))
    waiter.start()
    wait_until(lambda: emu.counters.requests.get("signin") == 1)
    started = time.monotonic()
    m.close()
    assert time.monotonic() - started < 5
    waiter.join(5)
    assert not waiter.is_alive()
    assert isinstance(results[0], IndigoUnavailableError)
    wait_until(lambda: not manager_threads(), timeout=5)


def catch(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:
        return exc


def test_close_from_the_managers_own_loop(manager: TokenManager) -> None:
    manager.get_token()
    loop = manager._loop
    assert loop is not None
    loop.portal.call(manager.close)  # close() on the loop thread: it must not wait for itself
    wait_until(lambda: not loop._thread.is_alive(), timeout=5)


def test_close_twice_and_reuse(emu: IndigoEmulator, manager: TokenManager) -> None:
    first = manager.get_token()
    manager.close()
    manager.close()
    assert not manager_threads()
    assert manager.get_token() == first  # the cached token needs no loop
    assert not manager_threads()
    assert manager.get_token(force_refresh=True) != first  # starts a loop again
    assert manager_threads()
    manager.close()
    wait_until(lambda: not manager_threads(), timeout=5)


def test_many_threads_while_closing(emu: IndigoEmulator, api: str) -> None:
    emu.inject("signin", Fault.latency(0.2), times=1)
    m = TokenManager(EMAIL, PASSWORD, base_url=api)

    def ask_or_close() -> object:
        if threading.current_thread().name.endswith("7"):
            m.close()
            return None
        return m.get_token()

    results = in_threads(THREADS, ask_or_close)
    m.close()
    for result in results:
        assert result is None or isinstance(result, (str, IndigoUnavailableError))
    wait_until(lambda: not manager_threads(), timeout=5)


def test_a_script_that_never_closes_still_exits(api: str) -> None:
    env = {**os.environ, "INDIGO_EMAIL": EMAIL, "INDIGO_PASSWORD": PASSWORD, "INDIGO_API_URL": api}
    code = (
        "from indigo_auth import TokenManager\n"
        "manager = TokenManager.from_env()\n"
        "print(len(manager.get_token()) > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
    assert "Traceback" not in done.stderr


# -- construction ------------------------------------------------------------------------


def test_constructor_mirrors_the_async_one() -> None:
    def shape(cls: type) -> list[tuple[str, object, object]]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [(p.name, p.kind, p.default) for p in parameters]

    assert shape(TokenManager) == shape(AsyncTokenManager)


def test_secrets_stay_out_of_repr(manager: TokenManager) -> None:
    token = manager.get_token()
    text = repr(manager) + repr(manager.stats)
    assert text.startswith("TokenManager(email='bot@example.com', password='**********'")
    for secret in (PASSWORD, md5_hex(PASSWORD), token):
        assert secret not in text


def test_from_env_and_wrap(emu: IndigoEmulator, api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDIGO_EMAIL", EMAIL)
    monkeypatch.setenv("INDIGO_PASSWORD_MD5", md5_hex(PASSWORD))
    monkeypatch.delenv("INDIGO_PASSWORD", raising=False)
    monkeypatch.setenv("INDIGO_API_URL", api)
    with TokenManager.from_env() as m:
        assert emu.is_valid(m.get_token())
        assert m.email == EMAIL and m.base_url == api
        assert m.workspace_id == emu.account(EMAIL).default_workspace_id
    engine = AsyncTokenManager(EMAIL, PASSWORD, base_url=api)
    with TokenManager.wrap(engine) as wrapped:
        assert emu.is_valid(wrapped.get_token())
    with pytest.raises(TypeError):
        TokenManager.wrap("not a manager")  # type: ignore[arg-type]
    monkeypatch.delenv("INDIGO_EMAIL")
    with pytest.raises(ValueError, match="INDIGO_EMAIL"):
        TokenManager.from_env()


# -- httpx -------------------------------------------------------------------------------


def test_auth_flow_by_hand(manager: TokenManager, api: str) -> None:
    request = httpx.Request("POST", f"{api}/workspace/folders", content=b"body")
    flow = manager.sync_auth_flow(request)
    sent = next(flow)
    first = manager.get_token()
    assert sent.headers["Authorization"] == f"Bearer {first}"
    again = flow.send(httpx.Response(401, request=sent))
    assert again.headers["Authorization"] != f"Bearer {first}"
    assert again.content == b"body"
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(401, request=again))  # one re-auth, not two

    elsewhere = httpx.Request("GET", "https://example.com/workspace/folders")
    flow = manager.sync_auth_flow(elsewhere)
    assert "Authorization" not in next(flow).headers


def test_httpx_client_reauth_on_401(emu: IndigoEmulator, manager: TokenManager, api: str) -> None:
    with httpx.Client(auth=manager) as client:
        assert client.get(f"{api}/workspace/folders").status_code == 200
        emu.revoke_all(EMAIL)
        response = client.get(f"{api}/workspace/folders")
    assert response.status_code == 200
    assert emu.counters.unauthorized == 1
    assert emu.counters.sign_ins == 2


def test_httpx_storm_of_401s_renews_once(
    emu: IndigoEmulator, manager: TokenManager, api: str
) -> None:
    with httpx.Client(auth=manager, limits=httpx.Limits(max_connections=100)) as client:
        assert client.get(f"{api}/workspace/folders").status_code == 200
        emu.revoke_all(EMAIL)
        results = in_threads(THREADS, lambda: client.get(f"{api}/workspace/folders").status_code)
    assert results == [200] * THREADS
    assert emu.counters.sign_ins == 2


def test_httpx_leaves_other_hosts_alone(emu: IndigoEmulator, manager: TokenManager) -> None:
    launcher = FakeLauncher(emu)  # not the configured launcher: another host
    with launcher as elsewhere, httpx.Client(auth=manager) as client:
        assert client.get(f"{elsewhere}/anything").status_code == 401
    assert [(s.authorization, s.status) for s in launcher.seen] == [(None, 401)]


@pytest.mark.anyio
async def test_async_client_with_the_sync_manager(
    emu: IndigoEmulator, manager: TokenManager, api: str
) -> None:
    async with httpx.AsyncClient(auth=manager) as client:
        assert (await client.get(f"{api}/workspace/folders")).status_code == 200
        emu.revoke_all(EMAIL)
        assert (await client.get(f"{api}/workspace/folders")).status_code == 200
    assert emu.counters.sign_ins == 2


# -- requests ----------------------------------------------------------------------------


def test_requests_get_with_auth(emu: IndigoEmulator, manager: TokenManager, api: str) -> None:
    response = requests.get(f"{api}/workspace/folders", auth=manager, timeout=10)
    assert response.status_code == 200
    assert response.json()["data"]["total_count"] == 2
    assert response.request.headers["Authorization"] == f"Bearer {manager.get_token()}"


def test_requests_session_reauth_on_401(
    emu: IndigoEmulator, manager: TokenManager, api: str
) -> None:
    with requests.Session() as session:
        session.auth = manager
        assert session.get(f"{api}/workspace/folders", timeout=10).status_code == 200
        emu.revoke_all(EMAIL)
        response = session.get(f"{api}/workspace/folders", timeout=10)
    assert response.status_code == 200
    assert [old.status_code for old in response.history] == [401]
    assert response.request.headers["Authorization"] == f"Bearer {manager.get_token()}"
    assert emu.counters.sign_ins == 2


def test_requests_reauths_once_only(emu: IndigoEmulator, manager: TokenManager, api: str) -> None:
    emu.inject("folders", Fault.status(401))
    response = requests.get(f"{api}/workspace/folders", auth=manager, timeout=10)
    assert response.status_code == 401
    assert len(response.history) == 1
    assert emu.counters.requests["folders"] == 2


def test_requests_storm_of_401s_renews_once(
    emu: IndigoEmulator, manager: TokenManager, api: str
) -> None:
    manager.get_token()
    emu.revoke_all(EMAIL)

    def fetch() -> int:
        return requests.get(f"{api}/workspace/folders", auth=manager, timeout=10).status_code

    assert in_threads(THREADS, fetch) == [200] * THREADS
    assert emu.counters.sign_ins == 2


def test_requests_resends_the_body_and_spares_other_hosts(emu: IndigoEmulator, api: str) -> None:
    with FakeLauncher(emu) as launcher_url:
        launcher = FakeLauncher(emu)  # another host: never gets the bearer
        with (
            launcher as other_url,
            TokenManager(EMAIL, PASSWORD, base_url=api, launcher_url=launcher_url) as m,
        ):
            m.get_token()
            emu.revoke_all(EMAIL)
            body = io.BytesIO(b'{"profile": "p1"}')
            response = requests.post(f"{launcher_url}/echo", data=body, auth=m, timeout=10)
            assert response.status_code == 200
            assert response.json()["data"] == {"echo": '{"profile": "p1"}'}

            other = requests.get(f"{other_url}/anything", auth=m, timeout=10)
            assert other.status_code == 401
            assert other.history == []
        assert [(s.authorization, s.status) for s in launcher.seen] == [(None, 401)]
