"""A store in Redis: a fleet of machines shares one sign-in.

Keys, for a store key ``k`` and the default prefix::

    indigo-auth:token:k   the state as JSON, expiring in Redis with the token
    indigo-auth:lock:k    the renewal lock: a random owner id, with a TTL

The lock is ``SET NX PX`` with a random value, released by a Lua compare-and-delete
so that a holder never frees a lock that expired and went to someone else. While
it is held, its TTL is extended at a third of the TTL, so a long renewal (a slow
sign-in, retries) keeps it; a holder that dies stops extending it, and the fleet
waits at most the TTL. Waiters poll with growing, jittered pauses.

redis-py's asyncio client runs on asyncio only. On Trio the store uses its
synchronous client in worker threads, so the same store works on both.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import sniffio

from .._exceptions import IndigoUnavailableError
from .._runtime import LoopLocal, spawn_detached
from .._token import TokenState
from ._base import TokenStore

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisStore"]

logger = logging.getLogger("indigo_auth")

_FORMAT = "indigo-auth/token"
_VERSION = 1
_POLL_FIRST = 0.005
_POLL_MAX = 0.05
#: Values larger than this are not ours.
_MAX_VALUE_BYTES = 64 * 1024

_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""
_EXTEND = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError:
        raise ImportError(
            "RedisStore needs the redis package: pip install 'indigo-auth[redis]'"
        ) from None
    return redis


class _Backend(Protocol):
    """The few Redis commands the store sends, on whichever client fits the loop."""

    async def get(self, name: str) -> bytes | None: ...
    async def set(self, name: str, value: bytes, *, px: int, nx: bool = False) -> bool: ...
    async def delete(self, name: str) -> None: ...
    async def script(self, script: str, key: str, *args: str | int) -> int: ...
    async def aclose(self) -> None: ...


class _AsyncBackend:
    """redis-py's asyncio client (asyncio only)."""

    def __init__(self, client: redis.asyncio.Redis, *, owned: bool) -> None:
        self._client = client
        self._owned = owned

    async def get(self, name: str) -> bytes | None:
        value = await self._client.get(name)
        return value if isinstance(value, bytes) else None

    async def set(self, name: str, value: bytes, *, px: int, nx: bool = False) -> bool:
        return bool(await self._client.set(name, value, px=px, nx=nx))

    async def delete(self, name: str) -> None:
        await self._client.delete(name)

    async def script(self, script: str, key: str, *args: str | int) -> int:
        return int(await self._client.eval(script, 1, key, *args))

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


class _ThreadBackend:
    """redis-py's synchronous client, called from worker threads (any event loop)."""

    def __init__(self, client: redis.Redis, *, owned: bool) -> None:
        self._client = client
        self._owned = owned

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    async def get(self, name: str) -> bytes | None:
        value = await self._run(lambda: self._client.get(name))
        return value if isinstance(value, bytes) else None

    async def set(self, name: str, value: bytes, *, px: int, nx: bool = False) -> bool:
        return bool(await self._run(lambda: self._client.set(name, value, px=px, nx=nx)))

    async def delete(self, name: str) -> None:
        await self._run(lambda: self._client.delete(name))

    async def script(self, script: str, key: str, *args: str | int) -> int:
        return int(await self._run(lambda: self._client.eval(script, 1, key, *args)))

    async def aclose(self) -> None:
        if self._owned:
            await self._run(self._client.close)


def _is_wrong_type(exc: BaseException) -> bool:
    """A key of ours holding a list or a hash: bad data, not a failure of Redis."""
    return isinstance(exc, _import_redis().exceptions.ResponseError) and "WRONGTYPE" in str(exc)


def _safe_location(url: str) -> str:
    """``host:port/db`` of a Redis URL, without its user name or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "<unparsable URL>"
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    database = parts.path.strip("/") or "0"
    return f"{host}:{port}/{database}"


def _client_location(client: Any) -> str:
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return type(client).__name__
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class RedisStore:
    """Keeps tokens in Redis, shared by a fleet of processes on many machines.

    Of all the processes renewing one account's token at once, one takes the Redis
    lock and renews (one sign-in or one refresh); the others wait, then read its
    token. Stored tokens expire in Redis with the token. Keys come from base URL,
    email and workspace, never from the password::

        store = RedisStore("redis://127.0.0.1:6379/0")
        async with AsyncTokenManager.from_env(store=store) as manager:
            ...

    Args:
        url_or_client: a ``redis://`` URL (the store opens and closes its own
            clients: an asyncio one per event loop, or a synchronous one in worker
            threads on Trio), or a ``redis.asyncio.Redis`` client (asyncio only) or
            ``redis.Redis`` client, used as is and never closed by the store.
        key_prefix: the prefix of every key the store writes.
        lock_ttl: seconds after which the lock of a holder that died is free again.
            A live holder keeps extending it.
        timeout: seconds for connecting to Redis and for one command.
        fallback: a store (say ``MemoryStore()``) to use, with a warning, while
            Redis is unreachable. By default an unreachable Redis is an error.
        retry_interval: with a fallback, seconds before Redis is tried again.

    Raises:
        ImportError: the ``redis`` package is missing (``pip install 'indigo-auth[redis]'``).
        TypeError: ``url_or_client`` is neither a URL nor a redis-py client.

    Operations raise :class:`IndigoUnavailableError` naming the server (never its
    password) when Redis cannot be reached and there is no fallback.
    """

    def __init__(
        self,
        url_or_client: str | redis.asyncio.Redis | redis.Redis,
        key_prefix: str = "indigo-auth",
        *,
        lock_ttl: float = 30.0,
        timeout: float = 5.0,
        fallback: TokenStore | None = None,
        retry_interval: float = 5.0,
    ) -> None:
        redis_module = _import_redis()
        if lock_ttl <= 0 or timeout <= 0 or retry_interval < 0:
            raise ValueError("lock_ttl and timeout must be > 0, retry_interval >= 0")
        if not key_prefix:
            raise ValueError("key_prefix is empty")
        self._prefix = key_prefix
        self._lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self._timeout = float(timeout)
        self._fallback = fallback
        self._retry_interval = float(retry_interval)
        self._down_until = 0.0
        self._degraded = False
        self._url: str | None = None
        self._async_clients: LoopLocal[_AsyncBackend] | None = None
        self._thread_client: _ThreadBackend | None = None
        self._given: _Backend | None = None
        self._given_is_async = False
        self._locks: dict[str, LoopLocal[anyio.Lock]] = {}
        if isinstance(url_or_client, str):
            if not url_or_client.strip():
                raise ValueError("the Redis URL is empty")
            self._url = url_or_client.strip()
            self._location = _safe_location(self._url)
            self._async_clients = LoopLocal(self._open_async)
        elif isinstance(
            url_or_client, (redis_module.asyncio.Redis, redis_module.asyncio.RedisCluster)
        ):
            self._given = _AsyncBackend(url_or_client, owned=False)
            self._given_is_async = True
            self._location = _client_location(url_or_client)
        elif isinstance(url_or_client, (redis_module.Redis, redis_module.RedisCluster)):
            self._given = _ThreadBackend(url_or_client, owned=False)
            self._location = _client_location(url_or_client)
        else:
            raise TypeError(
                "url_or_client must be a redis:// URL, a redis.asyncio.Redis or a redis.Redis, "
                f"not {type(url_or_client).__name__}"
            )

    def __repr__(self) -> str:
        return f"RedisStore({self._location!r}, key_prefix={self._prefix!r})"

    # -- clients ------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {"socket_connect_timeout": self._timeout, "socket_timeout": self._timeout}

    def _open_async(self) -> _AsyncBackend:
        redis_module = _import_redis()
        assert self._url is not None
        client = redis_module.asyncio.Redis.from_url(self._url, **self._client_options())
        return _AsyncBackend(client, owned=True)

    def _backend(self) -> _Backend:
        on_asyncio = sniffio.current_async_library() == "asyncio"
        if self._given is not None:
            if self._given_is_async and not on_asyncio:
                raise RuntimeError(
                    "a redis.asyncio client works on asyncio only; give RedisStore a URL "
                    "or a redis.Redis client to use it on Trio"
                )
            return self._given
        if on_asyncio:
            assert self._async_clients is not None
            return self._async_clients.get()
        if self._thread_client is None:
            redis_module = _import_redis()
            assert self._url is not None
            client = redis_module.Redis.from_url(self._url, **self._client_options())
            self._thread_client = _ThreadBackend(client, owned=True)
        return self._thread_client

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}:{kind}:{key}"

    # -- reachability -------------------------------------------------------------------

    def _use_fallback(self) -> bool:
        return self._fallback is not None and time.monotonic() < self._down_until

    def _unreachable(self, exc: BaseException) -> IndigoUnavailableError | None:
        """Record a failure of Redis: ``None`` where the fallback takes over, else the
        error to raise (naming the server and the kind of failure, never a secret)."""
        if self._fallback is not None:
            self._down_until = time.monotonic() + self._retry_interval
            if not self._degraded:
                self._degraded = True
                logger.warning(
                    "Redis token store at %s is unreachable (%s); using the fallback store, "
                    "so processes no longer share sign-ins until it is back",
                    self._location,
                    type(exc).__name__,
                )
            return None
        redis_module = _import_redis()
        connection = (redis_module.exceptions.ConnectionError, redis_module.exceptions.TimeoutError)
        what = "is unreachable" if isinstance(exc, (*connection, OSError)) else "failed"
        return IndigoUnavailableError(
            f"the Redis token store at {self._location} {what} ({type(exc).__name__})"
        )

    def _reachable(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("Redis token store at %s is reachable again", self._location)

    def _failures(self) -> tuple[type[BaseException], ...]:
        # Every Redis error (a refused connection, a timeout, a read-only replica):
        # the store cannot do its job; say so, or fall back.
        redis_module = _import_redis()
        return (redis_module.exceptions.RedisError, OSError)

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str) -> TokenState | None:
        """The state stored under ``key``, or ``None``. Never raises for bad data.

        Raises:
            IndigoUnavailableError: Redis is unreachable and there is no fallback.
        """
        if self._use_fallback():
            assert self._fallback is not None
            return await self._fallback.load(key)
        try:
            raw = await self._backend().get(self._key("token", key))
        except self._failures() as exc:
            if _is_wrong_type(exc):
                logger.warning("ignoring a value in Redis that is not an indigo-auth token state")
                return None
            error = self._unreachable(exc)
            if error is not None:
                raise error from exc
            assert self._fallback is not None
            return await self._fallback.load(key)
        self._reachable()
        return self._decode(raw)

    async def save(self, key: str, state: TokenState) -> None:
        """Store ``state`` under ``key``, expiring when the token does.

        Raises:
            IndigoUnavailableError: Redis is unreachable and there is no fallback.
        """
        if self._use_fallback():
            assert self._fallback is not None
            await self._fallback.save(key, state)
            return
        ttl_ms = int(state.remaining() * 1000)
        try:
            if ttl_ms <= 0:
                await self._backend().delete(self._key("token", key))
            else:
                await self._backend().set(self._key("token", key), self._encode(state), px=ttl_ms)
        except self._failures() as exc:
            error = self._unreachable(exc)
            if error is not None:
                raise error from exc
            assert self._fallback is not None
            await self._fallback.save(key, state)
            return
        self._reachable()

    async def delete(self, key: str) -> None:
        """Forget the state under ``key`` (and in the fallback store, if any)."""
        if self._fallback is not None:
            await self._fallback.delete(key)
        if self._use_fallback():
            return
        try:
            await self._backend().delete(self._key("token", key))
        except self._failures() as exc:
            error = self._unreachable(exc)
            if error is not None:
                raise error from exc
            return
        self._reachable()

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """The renewal lock of ``key``, shared by every process using this Redis.

        Tasks of one event loop queue on an in-process lock first, so that one
        process polls Redis once, not once per task.

        Raises:
            IndigoUnavailableError: Redis is unreachable and there is no fallback.
        """
        local = self._locks.get(key)
        if local is None:
            local = self._locks[key] = LoopLocal(anyio.Lock)
        async with local.get():
            owner = await self._acquire(key)
            if owner is None:
                assert self._fallback is not None
                async with self._fallback.lock(key):
                    yield
                return
            stop = anyio.Event()
            spawn_detached(
                lambda: self._keep(key, owner, stop), name="indigo-auth redis lock keeper"
            )
            try:
                yield
            finally:
                stop.set()
                # Released even by a cancelled holder; a Redis that hangs meanwhile
                # gets its command timeout, and then the TTL frees the lock.
                with anyio.move_on_after(2 * self._timeout, shield=True):
                    await self._release(key, owner)

    async def aclose(self) -> None:
        """Close the clients the store opened (never a client it was given)."""
        if self._async_clients is not None:
            backend = self._async_clients.peek()
            self._async_clients.clear()
            if backend is not None:
                await backend.aclose()
        if self._thread_client is not None:
            backend_thread, self._thread_client = self._thread_client, None
            await backend_thread.aclose()

    # -- the lock -----------------------------------------------------------------------

    async def _acquire(self, key: str) -> str | None:
        """Take the lock and return its owner id, or ``None`` to use the fallback's."""
        if self._use_fallback():
            return None
        lock_key = self._key("lock", key)
        owner = secrets.token_hex(16)
        pause = _POLL_FIRST
        while True:
            try:
                taken = await self._backend().set(
                    lock_key, owner.encode(), px=self._lock_ttl_ms, nx=True
                )
            except self._failures() as exc:
                error = self._unreachable(exc)
                if error is not None:
                    raise error from exc
                return None
            self._reachable()
            if taken:
                return owner
            await anyio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            pause = min(pause * 2, _POLL_MAX)

    async def _keep(self, key: str, owner: str, stop: anyio.Event) -> None:
        """Extend the lock while its holder works; stop when it is released or lost."""
        lock_key = self._key("lock", key)
        interval = self._lock_ttl_ms / 3000
        try:
            while True:
                with anyio.move_on_after(interval):
                    await stop.wait()
                if stop.is_set():
                    return
                extended = await self._backend().script(_EXTEND, lock_key, owner, self._lock_ttl_ms)
                if not extended:
                    logger.warning(
                        "lost the Redis renewal lock (held past its TTL?); "
                        "another process may renew too"
                    )
                    return
        except Exception as exc:
            logger.warning("could not extend the Redis renewal lock (%s)", type(exc).__name__)

    async def _release(self, key: str, owner: str) -> None:
        try:
            await self._backend().script(_RELEASE, self._key("lock", key), owner)
        except Exception as exc:
            # The TTL frees it; nothing else to do.
            logger.warning(
                "could not release the Redis renewal lock (%s); it frees itself within %.0fs",
                type(exc).__name__,
                self._lock_ttl_ms / 1000,
            )

    # -- values -------------------------------------------------------------------------

    @staticmethod
    def _encode(state: TokenState) -> bytes:
        return json.dumps({"format": _FORMAT, "version": _VERSION, **state.to_dict()}).encode()

    def _decode(self, raw: bytes | None) -> TokenState | None:
        if raw is None:
            return None
        try:
            if len(raw) > _MAX_VALUE_BYTES:
                raise ValueError("too large")
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            logger.warning("ignoring a value in Redis that is not an indigo-auth token state")
            return None
        if data.get("version") != _VERSION:
            logger.warning("ignoring a token state in Redis of unknown version")
            return None
        state = TokenState.from_dict(data)
        if state is None or state.remaining() <= 0:
            return None
        return state
