"""Injected faults, in process and over a loopback socket, and the server helpers."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from indigo_auth.testing import Fault, IndigoEmulator, run_emulator

EMAIL = "bot@example.com"
PASSWORD = "s3cret"
HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def md5(password: str) -> str:
    return hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def envelope_status(r: httpx.Response) -> dict[str, Any]:
    status: dict[str, Any] = r.json()["status"]
    return status


# --- what each fault looks like to a client ---------------------------------------


def is_503_with_retry_after(r: httpx.Response) -> None:
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert envelope_status(r) == {
        "error_code": "SERVICE_UNAVAILABLE",
        "http_code": 503,
        "message": "Service Unavailable",
    }
    assert r.json()["data"] is None


def is_429_with_a_date(r: httpx.Response) -> None:
    assert r.status_code == 429
    assert r.headers["retry-after"] == HTTP_DATE
    assert envelope_status(r)["error_code"] == "RATE_LIMITED"


def is_500_without_retry_after(r: httpx.Response) -> None:
    assert r.status_code == 500
    assert "retry-after" not in r.headers
    assert envelope_status(r)["http_code"] == 500


def is_custom_status(r: httpx.Response) -> None:
    assert r.status_code == 418
    assert r.headers["retry-after"] == "1.5"
    assert envelope_status(r) == {"error_code": "TEAPOT", "http_code": 418, "message": "short"}


def is_proxy_page(r: httpx.Response) -> None:
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert b"502 Bad Gateway" in r.content
    with pytest.raises(json.JSONDecodeError):
        r.json()


def is_empty_200(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert r.content == b""


def is_empty_503(r: httpx.Response) -> None:
    assert r.status_code == 503
    assert r.content == b""


def is_truncated(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert r.content.startswith(b'{"status":')
    with pytest.raises(json.JSONDecodeError):
        r.json()


def is_wrong_shape(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert r.json() == {"data": {"token": 5}}


def is_error_in_200(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert envelope_status(r)["http_code"] == 401
    assert envelope_status(r)["error_code"]
    assert r.json()["data"] is None


def is_error_in_200_500(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert envelope_status(r)["http_code"] == 500


def is_folders(r: httpx.Response) -> None:
    assert r.status_code == 200
    assert r.json()["data"]["total_count"] >= 1


ANSWERS: list[tuple[Fault, Callable[[httpx.Response], None]]] = [
    (Fault.status(503, retry_after=2), is_503_with_retry_after),
    (Fault.status(429, retry_after=HTTP_DATE), is_429_with_a_date),
    (Fault.status(500), is_500_without_retry_after),
    (Fault.status(418, retry_after=1.5, error_code="TEAPOT", message="short"), is_custom_status),
    (Fault.html(), is_proxy_page),
    (Fault.empty(), is_empty_200),
    (Fault.empty(status=503), is_empty_503),
    (Fault.truncated(), is_truncated),
    (Fault.wrong_shape(), is_wrong_shape),
    (Fault.error_in_200(), is_error_in_200),
    (Fault.error_in_200(http_code=500), is_error_in_200_500),
]

IN_PROCESS_ERRORS: list[tuple[Fault, type[httpx.TransportError]]] = [
    (Fault.drop_before(), httpx.ReadError),
    (Fault.drop_midway(), httpx.RemoteProtocolError),
    (Fault.stall(seconds=0.1), httpx.ReadTimeout),
]
SOCKET_ERRORS: list[tuple[Fault, type[httpx.TransportError]]] = [
    (Fault.drop_before(), httpx.ReadError),  # a TCP reset
    (Fault.drop_midway(), httpx.RemoteProtocolError),
    (Fault.stall(seconds=0.1), httpx.RemoteProtocolError),  # closed when the stall ends
]


async def check_faults(
    emu: IndigoEmulator,
    c: httpx.AsyncClient,
    errors: list[tuple[Fault, type[httpx.TransportError]]],
) -> None:
    """Each fault strikes one request and leaves the next one alone."""
    token = emu.issue_token(EMAIL)
    for fault, check in ANSWERS:
        emu.inject("folders", fault, times=1)
        check(await c.get("/workspace/folders", headers=bearer(token)))
        is_folders(await c.get("/workspace/folders", headers=bearer(token)))
    for fault, error in errors:
        emu.inject("folders", fault, times=1)
        with pytest.raises(error):
            await c.get("/workspace/folders", headers=bearer(token))
        is_folders(await c.get("/workspace/folders", headers=bearer(token)))
    emu.inject("folders", Fault.latency(0.2), times=1)
    started = time.monotonic()
    is_folders(await c.get("/workspace/folders", headers=bearer(token)))
    assert time.monotonic() - started >= 0.19
    assert emu.counters.faults == len(ANSWERS) + len(errors) + 1


async def check_side_effects(emu: IndigoEmulator, c: httpx.AsyncClient) -> None:
    """A drop before the answer changes nothing; a drop midway happens after the work."""
    signin = {"email": EMAIL, "password": md5(PASSWORD)}
    emu.inject("signin", Fault.drop_before(), times=1)
    with pytest.raises(httpx.ReadError):
        await c.post("/user/signin", json=signin)
    assert emu.counters.sign_ins == 0

    r = await c.post("/user/signin", json=signin)
    refresh = r.json()["data"]["refresh_token"]
    body = {
        "email": EMAIL,
        "refresh_token": refresh,
        "workspace_id": emu.account(EMAIL).default_workspace_id,
    }
    emu.inject("refresh_token", Fault.drop_midway(), times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await c.post("/user/refresh_token", json=body)
    # The server rotated the refresh token, but its answer was lost: the old one is spent.
    assert emu.counters.refreshes == 1
    assert (await c.post("/user/refresh_token", json=body)).status_code == 401


# --- in process -------------------------------------------------------------------


@pytest.mark.anyio
async def test_faults_in_process() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://indigo.test") as c:
        await check_faults(emu, c, IN_PROCESS_ERRORS)
        await check_side_effects(emu, c)


@pytest.mark.anyio
async def test_in_process_errors_carry_the_request() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    emu.inject("signin", Fault.drop_before())
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://indigo.test") as c:
        with pytest.raises(httpx.ReadError) as caught:
            await c.post("/user/signin?x=1", json={})
    assert caught.value.request.method == "POST"
    assert caught.value.request.url.path == "/user/signin"


# --- over a loopback socket -------------------------------------------------------


@pytest.mark.anyio
async def test_faults_over_a_socket() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    async with emu.serve() as url:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as c:
            await check_faults(emu, c, SOCKET_ERRORS)
            await check_side_effects(emu, c)
            token = emu.issue_token(EMAIL)

            # drop_midway: the status line and headers arrive, then the body breaks off.
            emu.inject("folders", Fault.drop_midway(), times=1)
            async with c.stream("GET", "/workspace/folders", headers=bearer(token)) as r:
                assert r.status_code == 200
                assert int(r.headers["content-length"]) > 0
                with pytest.raises(httpx.RemoteProtocolError):
                    await r.aread()

            # stall: headers, then nothing; a client with a short read timeout gives up.
            emu.inject("folders", Fault.stall(seconds=30), times=1)
            started = time.monotonic()
            async with c.stream(
                "GET", "/workspace/folders", headers=bearer(token), timeout=0.3
            ) as r:
                assert r.status_code == 200
                with pytest.raises(httpx.ReadTimeout):
                    await r.aread()
            assert time.monotonic() - started < 5


def test_faults_over_a_socket_in_a_thread() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    with emu.serve_in_thread() as url, httpx.Client(base_url=url, timeout=5.0) as c:
        r = c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
        token = r.json()["data"]["token"]
        for fault, check in ANSWERS:
            emu.inject("folders", fault, times=1)
            check(c.get("/workspace/folders", headers=bearer(token)))
        for fault, error in SOCKET_ERRORS:
            emu.inject("folders", fault, times=1)
            with pytest.raises(error):
                c.get("/workspace/folders", headers=bearer(token))
        emu.inject("folders", Fault.stall(seconds=30), times=1)
        with pytest.raises(httpx.ReadTimeout):
            c.get("/workspace/folders", headers=bearer(token), timeout=0.3)
        is_folders(c.get("/workspace/folders", headers=bearer(token)))
    assert emu.counters.faults == len(ANSWERS) + len(SOCKET_ERRORS) + 1
    assert emu.counters.sign_ins == 1


@pytest.mark.anyio
async def test_serve_in_thread_from_async_code() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    with emu.serve_in_thread() as url:
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
    assert r.status_code == 200


@pytest.mark.anyio
async def test_the_server_stops_at_once_despite_a_stalled_answer() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    token = emu.issue_token(EMAIL)
    emu.inject("folders", Fault.stall(), times=1)  # a full minute
    outcome: list[type[BaseException]] = []
    async with httpx.AsyncClient(timeout=30.0) as c:

        async def stalled(url: str) -> None:
            try:
                async with c.stream("GET", f"{url}/workspace/folders", headers=bearer(token)) as r:
                    await r.aread()
            except httpx.TransportError as exc:
                outcome.append(type(exc))

        async with anyio.create_task_group() as tg, emu.serve() as url:
            tg.start_soon(stalled, url)
            with anyio.fail_after(5):
                while emu.counters.faults == 0:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.05)
            started = time.monotonic()
        assert time.monotonic() - started < 3
    assert outcome == [httpx.RemoteProtocolError]


@pytest.mark.anyio
async def test_latency_setting() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, latency=0.2)
    async with emu.serve() as url, httpx.AsyncClient(base_url=url) as c:
        started = time.monotonic()
        r = await c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
        assert time.monotonic() - started >= 0.19
        assert r.status_code == 200
        emu.latency = 0.0
        started = time.monotonic()
        await c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
        assert time.monotonic() - started < 0.19


# --- scheduling -------------------------------------------------------------------


async def statuses(c: httpx.AsyncClient, token: str, n: int) -> list[int]:
    return [
        (await c.get("/workspace/folders", headers=bearer(token))).status_code for _ in range(n)
    ]


@pytest.mark.anyio
async def test_times_and_order() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    token = emu.issue_token(EMAIL)
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://indigo.test") as c:
        emu.inject("folders", Fault.status(500), times=2)
        emu.inject("folders", Fault.status(503), times=1)
        emu.inject("workspaces", Fault.status(504), times=1)
        assert await statuses(c, token, 4) == [500, 500, 503, 200]
        assert (await c.get("/user/workspaces", headers=bearer(token))).status_code == 504

        emu.inject("folders", Fault.status(502))  # until cleared
        assert await statuses(c, token, 3) == [502, 502, 502]
        emu.clear_faults()
        assert await statuses(c, token, 1) == [200]

        emu.inject("*", Fault.status(500), times=2)
        assert (await c.get("/user/workspaces", headers=bearer(token))).status_code == 500
        r = await c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
        assert r.status_code == 500
        assert (await c.get("/user/workspaces", headers=bearer(token))).status_code == 200
        assert (await c.get("/nowhere")).status_code == 404
    assert emu.counters.faults == 3 + 1 + 3 + 2


@pytest.mark.anyio
async def test_probability_with_a_seed_is_reproducible() -> None:
    expected_draws = random.Random(42)
    expected = [500 if expected_draws.random() < 0.5 else 200 for _ in range(30)]
    assert 200 in expected
    assert 500 in expected
    runs = []
    for _ in range(2):
        emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
        token = emu.issue_token(EMAIL)
        emu.inject("folders", Fault.status(500), probability=0.5, seed=42)
        async with httpx.AsyncClient(transport=emu.transport(), base_url="http://x") as c:
            runs.append(await statuses(c, token, 30))
        assert emu.counters.faults == expected.count(500)
    assert runs == [expected, expected]


@pytest.mark.anyio
async def test_probability_with_times() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    token = emu.issue_token(EMAIL)
    emu.inject("folders", Fault.status(500), times=2, probability=1.0, seed=1)
    emu.inject("folders", Fault.status(503), probability=0.0, seed=1)
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://x") as c:
        assert await statuses(c, token, 4) == [500, 500, 200, 200]


def test_inject_checks_its_arguments() -> None:
    emu = IndigoEmulator()
    with pytest.raises(ValueError, match="unknown endpoint"):
        emu.inject("user/signin", Fault.empty())
    with pytest.raises(ValueError, match="times"):
        emu.inject("signin", Fault.empty(), times=0)
    with pytest.raises(ValueError, match="probability"):
        emu.inject("signin", Fault.empty(), probability=1.5)
    with pytest.raises(ValueError, match="seed"):
        emu.inject("signin", Fault.empty(), seed=3)
    with pytest.raises(TypeError):
        emu.inject("signin", "boom")  # type: ignore[arg-type]


def test_fault_constructors_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="status"):
        Fault.status(200)
    with pytest.raises(ValueError, match="status"):
        Fault.error_in_200(http_code=204)
    with pytest.raises(ValueError, match="seconds"):
        Fault.latency(-1)
    with pytest.raises(ValueError, match="seconds"):
        Fault.stall(seconds=61)
    with pytest.raises(ValueError, match="retry_after"):
        Fault.status(503, retry_after=-1)
    assert Fault.status(503) == Fault.status(503)
    assert Fault.stall().seconds == 60.0
    with pytest.raises(AttributeError):
        Fault.html().status_code = 200  # type: ignore[misc]


# --- serving safely ---------------------------------------------------------------


# The addresses are refused, never bound to.
@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com", "::"])  # noqa: S104
def test_only_loopback_unless_asked(host: str) -> None:
    emu = IndigoEmulator()
    with pytest.raises(ValueError, match="loopback"), emu.serve_in_thread(host=host):
        pass  # pragma: no cover
    with pytest.raises(ValueError, match="allow_non_loopback"):
        run_emulator(emu, host=host, port=0)


@pytest.mark.anyio
async def test_serve_refuses_non_loopback() -> None:
    emu = IndigoEmulator()
    with pytest.raises(ValueError, match="loopback"):
        async with emu.serve(host="0.0.0.0"):  # noqa: S104 - refused, never bound
            pass  # pragma: no cover


def test_serving_without_uvicorn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    emu = IndigoEmulator()
    with pytest.raises(ImportError, match=r"pip install 'indigo-auth\[emulator\]'"):
        run_emulator(emu)
    with pytest.raises(ImportError, match=r"indigo-auth\[emulator\]"), emu.serve_in_thread():
        pass  # pragma: no cover
