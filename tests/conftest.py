from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from indigo_auth.testing import IndigoEmulator

pytest_plugins = ["tests._support.redis_server"]

#: The account most tests sign in with.
EMAIL = "bot@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu() -> IndigoEmulator:
    """The emulator with the default account, no rate limit."""
    return IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)


@pytest.fixture
def api(emu: IndigoEmulator) -> Iterator[str]:
    """``emu`` served on a loopback port; its base URL."""
    with emu.serve_in_thread() as url:
        yield url


@pytest.fixture
async def client(emu: IndigoEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that reaches ``emu`` in process."""
    async with httpx.AsyncClient(transport=emu.transport()) as http:
        yield http
