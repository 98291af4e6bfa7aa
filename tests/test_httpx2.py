"""Both managers as the auth of httpx2 clients, where httpx2 is installed."""

from __future__ import annotations

import httpx
import pytest

from indigo_auth import AsyncTokenManager, TokenManager
from indigo_auth._httpx2 import httpx2_available
from indigo_auth.testing import IndigoEmulator

from .conftest import EMAIL, PASSWORD

httpx2 = pytest.importorskip("httpx2")


def test_the_managers_are_an_auth_of_both() -> None:
    assert httpx2_available()
    for cls in (TokenManager, AsyncTokenManager):
        assert issubclass(cls, httpx.Auth)
        assert issubclass(cls, httpx2.Auth)


def test_sync_client(emu: IndigoEmulator, api: str) -> None:
    with TokenManager(EMAIL, PASSWORD, base_url=api) as manager, httpx2.Client(auth=manager) as c:
        first = c.get(f"{api}/workspace/folders")
        assert first.status_code == 200
        assert first.request.headers["Authorization"] == f"Bearer {manager.get_token()}"
        emu.revoke_all(EMAIL)
        assert c.get(f"{api}/workspace/folders").status_code == 200  # one re-auth on 401
    assert emu.counters.unauthorized == 1
    assert emu.counters.sign_ins == 2


@pytest.mark.anyio
async def test_async_client(emu: IndigoEmulator, api: str) -> None:
    manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=api)
    async with manager, httpx2.AsyncClient(auth=manager) as client:
        assert (await client.get(f"{api}/workspace/folders")).status_code == 200
        emu.revoke_all(EMAIL)
        assert (await client.get(f"{api}/workspace/folders")).status_code == 200
    assert emu.counters.unauthorized == 1
    assert emu.counters.sign_ins == 2


def test_async_manager_refuses_a_sync_client(api: str) -> None:
    manager = AsyncTokenManager(EMAIL, PASSWORD, base_url=api)
    with httpx2.Client(auth=manager) as client, pytest.raises(TypeError, match="TokenManager"):
        client.get(f"{api}/workspace/folders")


def test_other_hosts_get_no_bearer(api: str) -> None:
    with TokenManager(EMAIL, PASSWORD, base_url=api) as manager:
        flow = manager.sync_auth_flow(httpx2.Request("GET", "https://example.com/x"))
        assert "Authorization" not in next(flow).headers
