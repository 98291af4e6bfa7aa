"""AsyncTokenManager over a real loopback socket, across event loops and backends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anyio
import httpx
import pytest

from indigo_auth import AsyncTokenManager
from indigo_auth.testing import Fault, IndigoEmulator

EMAIL = "loop@example.com"
PASSWORD = "loopback password"


@pytest.fixture
def served() -> Iterator[tuple[IndigoEmulator, str]]:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    with emu.serve_in_thread() as base_url:
        yield emu, base_url


def test_one_manager_across_successive_event_loops(served: tuple[IndigoEmulator, str]) -> None:
    emu, base_url = served
    emu.inject("signin", Fault.latency(0.05), times=1)
    manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=base_url, max_retry_delay=0)

    async def stampede() -> set[str]:
        tokens: set[str] = set()

        async def one() -> None:
            tokens.add(await manager.get_token())

        async with anyio.create_task_group() as tg:
            for _ in range(500):
                tg.start_soon(one)
        return tokens

    async def renew() -> str:
        return await manager.get_token(force_refresh=True)

    first = anyio.run(stampede)
    assert len(first) == 1
    assert anyio.run(stampede) == first  # cached, no request
    assert anyio.run(stampede, backend="trio") == first
    tokens = {anyio.run(renew), asyncio.run(renew()), asyncio.run(renew())}
    tokens.add(anyio.run(renew, backend="trio"))
    assert len(tokens) == 4
    assert emu.counters.sign_ins == 1
    assert emu.counters.refreshes == 4


def test_a_renewal_cut_off_by_a_closing_loop_does_not_poison_the_next(
    served: tuple[IndigoEmulator, str],
) -> None:
    emu, base_url = served
    manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=base_url)
    emu.inject("signin", Fault.latency(1.0), times=1)

    async def give_up() -> None:
        with anyio.move_on_after(0.1):
            await manager.get_token()

    asyncio.run(give_up())  # the loop closes with the renewal still in flight

    async def fetch() -> str:
        with anyio.fail_after(10):
            return await manager.get_token()

    token = anyio.run(fetch, backend="trio")
    assert emu.is_valid(token)


@pytest.mark.anyio
async def test_expiry_under_load_over_loopback(anyio_backend: str) -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None, token_lifetime=2.0)
    async with emu.serve() as base_url:
        manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=base_url, refresh_margin=1.0)
        statuses: list[int] = []
        async with (
            manager,
            httpx.AsyncClient(base_url=base_url, auth=manager) as client,
        ):
            with anyio.move_on_after(5.0):
                while True:

                    async def one() -> None:
                        statuses.append((await client.get("/workspace/folders")).status_code)

                    async with anyio.create_task_group() as tg:
                        for _ in range(20):
                            tg.start_soon(one)
                    await anyio.sleep(0.05)
    assert len(statuses) >= 200
    assert set(statuses) == {200}
    assert emu.counters.sign_ins == 1
    assert 2 <= emu.counters.refreshes <= 6
    assert emu.counters.unauthorized == 0
