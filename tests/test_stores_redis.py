"""RedisStore against a real redis-server (started by the ``redis_server`` fixture)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
import redis
import redis.asyncio

from indigo_auth import (
    AsyncTokenManager,
    IndigoUnavailableError,
    MemoryStore,
    RedisStore,
    TokenState,
    TokenStore,
)
from indigo_auth._api import md5_hex
from indigo_auth.testing import Fault, IndigoEmulator

from ._support.store_contract import assert_lock_excludes
from .conftest import EMAIL, PASSWORD

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

BASE = "http://127.0.0.1:9"


def state(token: str = "tok-1", **kwargs: object) -> TokenState:  # noqa: S107 - a fixture value
    settings: dict[str, object] = {"lifetime": 1800.0, "received_at": time.time()}
    settings.update(kwargs)
    return TokenState(token, "ref-1", workspace_id="ws-1", **settings)  # type: ignore[arg-type]


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at what the store wrote."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, redis_prefix)
    yield store
    await store.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_is_a_token_store(store: RedisStore) -> None:
    assert isinstance(store, TokenStore)


async def test_round_trip_expires_with_the_token(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    saved = state(lifetime=100.0, received_at=time.time() - 40)
    await store.save("k", saved)
    assert await store.load("k") == saved
    assert await store.load("other") is None
    ttl = raw.pttl(f"{redis_prefix}:token:k")
    assert 57_000 < ttl <= 60_000
    await store.delete("k")
    assert await store.load("k") is None
    assert raw.exists(f"{redis_prefix}:token:k") == 0


async def test_an_expired_state_is_not_stored(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    await store.save("k", state())
    await store.save("k", state(lifetime=10.0, received_at=time.time() - 20))
    assert raw.exists(f"{redis_prefix}:token:k") == 0


@pytest.mark.parametrize(
    "value",
    [b"hello", b"\xff\xfe", b'{"format": "other"}', b"[]", b'{"format": "indigo-auth/token"}'],
)
async def test_a_foreign_value_is_ignored_with_a_warning(
    store: RedisStore,
    raw: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
    value: bytes,
) -> None:
    raw.set(f"{redis_prefix}:token:k", value)
    with caplog.at_level(logging.WARNING, logger="indigo_auth"):
        assert await store.load("k") is None
    if value != b'{"format": "indigo-auth/token"}':
        assert "not an indigo-auth token state" in caplog.text
    await store.save("k", state())
    assert await store.load("k") is not None


async def test_a_key_of_another_type_is_ignored(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    raw.rpush(f"{redis_prefix}:token:k", b"a list")
    assert await store.load("k") is None
    await store.save("k", state())
    assert await store.load("k") is not None


async def test_lock_excludes_other_clients_and_tasks(redis_url: str, redis_prefix: str) -> None:
    first, second = RedisStore(redis_url, redis_prefix), RedisStore(redis_url, redis_prefix)
    try:
        await assert_lock_excludes(first, second)
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_lock_of_a_dead_holder_frees_itself_after_its_ttl(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    raw.set(f"{redis_prefix}:lock:k", b"a process that died", px=600)
    began = time.monotonic()
    with anyio.fail_after(5):
        async with store.lock("k"):
            waited = time.monotonic() - began
    assert 0.3 < waited < 2.0


async def test_a_live_holder_keeps_its_lock_past_the_ttl(
    redis_url: str, redis_prefix: str, raw: redis.Redis
) -> None:
    short = RedisStore(redis_url, redis_prefix, lock_ttl=0.3)
    other = RedisStore(redis_url, redis_prefix, lock_ttl=0.3)
    async with short.lock("k"):
        with anyio.move_on_after(1.0) as scope:
            async with other.lock("k"):
                pytest.fail("entered a lock that is still held")
        assert scope.cancelled_caught
    assert raw.exists(f"{redis_prefix}:lock:k") == 0, "released at once"
    await short.aclose()
    await other.aclose()


async def test_release_never_frees_someone_elses_lock(
    store: RedisStore, raw: redis.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="indigo_auth"):
        async with store.lock("k"):
            # Our lock expired and another process took it.
            raw.set(f"{redis_prefix}:lock:k", b"someone else", px=10_000)
    assert raw.get(f"{redis_prefix}:lock:k") == b"someone else"


async def test_a_cancelled_holder_releases_the_lock(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    with anyio.move_on_after(0.1):
        async with store.lock("k"):
            await anyio.sleep_forever()
    assert raw.exists(f"{redis_prefix}:lock:k") == 0


async def test_managers_sharing_redis_share_one_sign_in(
    redis_url: str,
    redis_prefix: str,
    raw: redis.Redis,
    emu: IndigoEmulator,
    client: httpx.AsyncClient,
) -> None:
    emu.inject("signin", Fault.latency(0.2), times=1)
    stores = [RedisStore(redis_url, redis_prefix) for _ in range(4)]
    managers = [
        AsyncTokenManager(EMAIL, PASSWORD, base_url=BASE, http_client=client, store=s)
        for s in stores
    ]
    tokens: list[str] = []

    async def one(m: AsyncTokenManager) -> None:
        tokens.append(await m.get_token())

    async with anyio.create_task_group() as tg:
        for m in managers:
            tg.start_soon(one, m)
    assert len(set(tokens)) == 1 and emu.is_valid(tokens[0])
    assert emu.counters.sign_ins == 1
    # Keys are the prefix and a hash; neither keys nor values hold the password.
    keys = raw.keys(f"{redis_prefix}:*")
    assert len(keys) == 1 and keys[0].startswith(f"{redis_prefix}:token:".encode())
    value = raw.get(keys[0])
    assert value is not None
    for secret in (PASSWORD.encode(), md5_hex(PASSWORD).encode(), EMAIL.encode()):
        assert secret not in keys[0] and secret not in value
    for s in stores:
        await s.aclose()


async def test_unreachable_redis_is_a_clear_error(
    emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    store = RedisStore(url, timeout=1.0)
    assert "hunter2" not in repr(store)
    with pytest.raises(IndigoUnavailableError) as caught:
        await store.load("k")
    assert "Redis" in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
    with pytest.raises(IndigoUnavailableError):
        async with store.lock("k"):
            pass
    m = AsyncTokenManager(EMAIL, PASSWORD, base_url=BASE, http_client=client, store=store)
    with pytest.raises(IndigoUnavailableError, match="Redis"):
        await m.get_token()
    assert emu.counters.sign_ins == 0, "no sign-in behind the fleet's back"
    await store.aclose()


async def test_fallback_store_when_redis_is_unreachable(
    emu: IndigoEmulator, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", fallback=MemoryStore(), timeout=1.0)
    managers = [
        AsyncTokenManager(EMAIL, PASSWORD, base_url=BASE, http_client=client, store=store)
        for _ in range(3)
    ]
    with caplog.at_level(logging.WARNING, logger="indigo_auth"):
        tokens = {await m.get_token() for m in managers}
    assert len(tokens) == 1 and emu.is_valid(tokens.pop())
    assert emu.counters.sign_ins == 1
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "fallback" in warnings[0].getMessage()
    await store.aclose()


async def test_a_given_client_is_used_as_is_and_left_open(
    redis_url: str, redis_prefix: str, anyio_backend: str
) -> None:
    if anyio_backend == "asyncio":
        given: redis.asyncio.Redis | redis.Redis = redis.asyncio.Redis.from_url(redis_url)
    else:
        given = redis.Redis.from_url(redis_url)
    store = RedisStore(given, redis_prefix)
    assert "127.0.0.1" in repr(store)
    await store.save("k", state())
    async with store.lock("k"):
        assert await store.load("k") is not None
    await store.aclose()
    if isinstance(given, redis.asyncio.Redis):
        assert await given.exists(f"{redis_prefix}:token:k") == 1
        await given.aclose()
    else:
        assert given.exists(f"{redis_prefix}:token:k") == 1
        given.close()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_an_asyncio_client_on_trio_is_a_clear_error(
    redis_url: str, anyio_backend: str
) -> None:
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url))
    with pytest.raises(RuntimeError, match="asyncio only"):
        await store.load("k")


def test_rejects_what_is_not_a_client() -> None:
    with pytest.raises(TypeError, match="redis"):
        RedisStore(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lock_ttl"):
        RedisStore("redis://127.0.0.1/0", lock_ttl=0)


def test_without_redis_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'indigo-auth\[redis\]'"):
        RedisStore("redis://127.0.0.1/0")


def test_importing_the_package_does_not_import_redis() -> None:
    code = "import sys, indigo_auth; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
