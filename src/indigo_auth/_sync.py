"""The synchronous token manager: the async engine, run on an event loop of its own.

:class:`TokenManager` holds an :class:`AsyncTokenManager` and runs it, inside
``async with``, on a private event loop in a daemon thread (an anyio blocking
portal). There is one implementation of the rules, the async one: coalescing,
refresh ahead, retries and the cooldown of refused credentials all happen there,
and every thread that asks waits on the same renewal.

The hot path crosses no thread: a fresh cached token is read straight from the
engine (an attribute read of an immutable value). Only a renewal, or a call that
talks to the API, goes through the portal, and every wait for it is bounded.

The thread is a daemon and a finalizer stops its loop, so a script that never
closes its manager still exits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import httpx
from anyio.from_thread import BlockingPortal

from ._api import DEFAULT_BASE_URL, DEFAULT_LAUNCHER_URL, Workspace
from ._exceptions import IndigoUnavailableError
from ._httpx2 import AuthBase
from ._manager import AsyncTokenManager, ManagerStats, env_settings
from ._stores import TokenStore

if TYPE_CHECKING:
    from requests import PreparedRequest, Response

__all__ = ["TokenManager"]

T = TypeVar("T")
logger = logging.getLogger("indigo_auth")

#: Seconds a closing manager waits for its loop thread to end.
_JOIN_TIMEOUT = 10.0
#: Seconds a caller waits beyond the engine's own deadline before giving up on it.
_WAIT_SLACK = 5.0
_BEARER = "Bearer "


class _Loop:
    """An event loop in a daemon thread, running one async manager inside ``async with``."""

    def __init__(self, manager: AsyncTokenManager) -> None:
        self._manager = manager
        self._stopping = False
        self._stop_lock = threading.Lock()
        started: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="indigo-auth", daemon=True
        )
        self._thread.start()
        # Entering the manager does no I/O, so this is quick; the bound guards a bug.
        self.portal = started.result(timeout=_JOIN_TIMEOUT)

    def _run(self, started: concurrent.futures.Future[BlockingPortal]) -> None:
        try:
            anyio.run(self._main, started)
        except BaseException as exc:  # handed to the thread that waits for the start
            if not started.done():
                started.set_exception(exc)
            else:
                logger.error("the token manager's event loop ended with %s", type(exc).__name__)

    async def _main(self, started: concurrent.futures.Future[BlockingPortal]) -> None:
        # The manager encloses the portal: stopping the portal cancels the calls in
        # flight, then the manager leaves ``async with`` outside that cancellation,
        # cancelling its refresher and renewal and closing its HTTP client.
        try:
            async with self._manager, BlockingPortal() as portal:
                started.set_result(portal)
                await portal.sleep_until_stopped()
        finally:
            # What a store opened on this loop (a Redis connection) dies with it.
            with anyio.CancelScope(shield=True):
                try:
                    await self._manager._store.aclose()
                except Exception as exc:
                    logger.warning("closing the token store failed: %s", type(exc).__name__)

    @property
    def running(self) -> bool:
        return not self._stopping and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        """Stop the loop, cancelling what runs in it; safe from any thread, once or more."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        if self.in_loop_thread():
            # The loop cannot wait for itself: let another thread stop it.
            threading.Thread(target=self._stop, name="indigo-auth close", daemon=True).start()
            return
        self._stop()

    def _stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self.portal.call(self.portal.stop, True)
        self._thread.join(_JOIN_TIMEOUT)
        if self._thread.is_alive():  # pragma: no cover - a store that ignores cancellation
            logger.warning("the token manager's event loop did not stop in time")


class TokenManager(AuthBase):
    """Keeps a valid Indigo API token at hand for synchronous code.

    The synchronous face of :class:`AsyncTokenManager`, with the same behaviour: one
    request however many threads ask at once, refresh ahead of expiry while open,
    retries, one sign-in per cooldown for a wrong password. It runs the async
    manager on an event loop of its own in a daemon thread, started on first use.
    It is an auth for ``httpx.Client`` and for ``requests``::

        with TokenManager.from_env() as manager:
            requests.get("https://api.indigobrowser.com/workspace/folders", auth=manager)
            with httpx.Client(auth=manager) as client:
                client.get("https://api.indigobrowser.com/workspace/folders")

    It works from any thread, worker threads of a running event loop included
    (``anyio.to_thread.run_sync``, ``loop.run_in_executor``). Called on the thread
    of a running event loop it blocks that loop while a renewal runs (at most
    ``deadline`` seconds and a little more): in async code use
    :class:`AsyncTokenManager`.

    Args:
        email, password, ...: as for :class:`AsyncTokenManager`.
        http_client: an :class:`httpx.AsyncClient` for the token requests (a custom
            transport, a proxy). It is used on the manager's own event loop only:
            don't share it with another loop. By default the manager makes its own.

    Raises:
        ValueError: for missing or contradictory arguments.
    """

    requires_request_body = True

    def __init__(
        self,
        email: str,
        password: str | None = None,
        *,
        password_md5: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        workspace_id: str | None = None,
        refresh_margin: float = 300.0,
        store: TokenStore | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        max_retry_delay: float = 30.0,
        deadline: float = 120.0,
        credentials_cooldown: float = 30.0,
        launcher_url: str = DEFAULT_LAUNCHER_URL,
        allow_insecure: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        engine = AsyncTokenManager(
            email,
            password,
            password_md5=password_md5,
            base_url=base_url,
            workspace_id=workspace_id,
            refresh_margin=refresh_margin,
            store=store,
            http_client=http_client,
            timeout=timeout,
            max_attempts=max_attempts,
            max_retry_delay=max_retry_delay,
            deadline=deadline,
            credentials_cooldown=credentials_cooldown,
            launcher_url=launcher_url,
            allow_insecure=allow_insecure,
            clock=clock,
        )
        del password, password_md5
        self._setup(engine)

    def _setup(self, engine: AsyncTokenManager) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._finalizer: weakref.finalize[[], TokenManager] | None = None
        # The engine bounds a renewal by its deadline; the other calls get the same.
        self._limit = engine._deadline
        self._wait = self._limit + _WAIT_SLACK

    @classmethod
    def wrap(cls, manager: AsyncTokenManager) -> TokenManager:
        """A synchronous manager running ``manager``, an existing configuration.

        ``manager`` then belongs to the returned one: don't use it from another
        event loop at the same time, nor enter it yourself.
        """
        if not isinstance(manager, AsyncTokenManager):
            raise TypeError("wrap() takes an AsyncTokenManager")
        self = cls.__new__(cls)
        self._setup(manager)
        return self

    @classmethod
    def from_env(cls, **kwargs: Any) -> TokenManager:
        """A manager configured from the environment, as :meth:`AsyncTokenManager.from_env`.

        Reads ``INDIGO_EMAIL``, ``INDIGO_PASSWORD`` or ``INDIGO_PASSWORD_MD5``,
        ``INDIGO_API_URL`` and ``INDIGO_WORKSPACE_ID``; keyword arguments override them
        and pass the other settings.

        Raises:
            ValueError: naming the variable that is missing.
        """
        return cls(**env_settings(kwargs))

    def __repr__(self) -> str:
        engine = repr(self._engine)
        return type(self).__name__ + engine[len(type(self._engine).__name__) :]

    @property
    def email(self) -> str:
        """The account's email."""
        return self._engine.email

    @property
    def base_url(self) -> str:
        """The API's base URL, as the manager uses it."""
        return self._engine.base_url

    @property
    def workspace_id(self) -> str | None:
        """The workspace of the current token (or the one asked for)."""
        return self._engine.workspace_id

    @property
    def stats(self) -> ManagerStats:
        """Counts of what the manager has done, and what the current token has left."""
        return self._engine.stats

    # -- the loop -----------------------------------------------------------------------

    def _running_loop(self) -> _Loop:
        loop = self._loop
        if loop is not None and loop.running:
            return loop
        with self._lock:
            loop = self._loop
            if loop is None or not loop.running:
                loop = _Loop(self._engine)
                self._loop = loop
                self._finalizer = weakref.finalize(self, loop.stop)
            return loop

    def _call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        loop = self._running_loop()
        if loop.in_loop_thread():
            raise RuntimeError(f"TokenManager.{what}() was called on the manager's own event loop")
        try:
            future = loop.portal.start_task_soon(self._bounded, fn)
        except RuntimeError:
            raise IndigoUnavailableError("the token manager was closed") from None
        try:
            return future.result(timeout=self._wait)
        except concurrent.futures.CancelledError:
            raise IndigoUnavailableError(
                "the token manager was closed while the request was in flight"
            ) from None
        except concurrent.futures.TimeoutError:  # not yet the builtin one on 3.10
            future.cancel()
            raise IndigoUnavailableError(
                f"{what}: no answer within {self._wait:g}s from the token manager's event loop"
            ) from None
        except BaseException:
            future.cancel()  # a KeyboardInterrupt: stop waiting for it there too
            raise

    async def _bounded(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            with anyio.fail_after(self._limit):
                return await fn()
        except TimeoutError:
            raise IndigoUnavailableError(
                f"no result within the deadline of {self._limit:g}s"
            ) from None

    # -- the token ----------------------------------------------------------------------

    def get_token(self, *, force_refresh: bool = False) -> str:
        """A valid token: the cached one, or a renewed one.

        Thread-safe: concurrent callers share one renewal. ``force_refresh=True``
        renews even if the cached token looks valid.

        Raises:
            InvalidCredentialsError: the API refused the email and password.
            RateLimitedError: 429 until the retries ran out.
            IndigoUnavailableError: the API could not be reached or kept failing, or
                the manager was closed while waiting.
            IndigoProtocolError: the API answered with something unexpected.
            IndigoAPIError: any other error the API reported.
        """
        engine = self._engine
        if not force_refresh:
            cached = engine._cached_token()
            if cached is not None:
                return cached
        return self._call(
            functools.partial(engine.get_token, force_refresh=force_refresh), "get_token"
        )

    def invalidate(self, token: str) -> bool:
        """Report that the API refused ``token`` (a 401).

        The token is dropped only if it is still the current one, so that many
        requests refused with the same token cause one renewal. Returns whether it
        was dropped.
        """
        with self._lock:
            loop = self._loop
            if loop is None or not loop.running or loop.in_loop_thread():
                # Nothing else changes the engine now: no need to cross threads.
                return self._engine.invalidate(token)
        try:
            future = loop.portal.start_task_soon(self._invalidate_in_loop, token)
            return future.result(timeout=self._wait)
        except (RuntimeError, concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
            # The loop stopped in between (or is stuck): nothing renews there now.
            with self._lock:
                return self._engine.invalidate(token)

    async def _invalidate_in_loop(self, token: str) -> bool:
        return self._engine.invalidate(token)

    # -- the rest of the API ------------------------------------------------------------

    def automation_token(self, period: str = "24h") -> str:
        """An automation token for ``period`` (one of ``1h 3h 5h 16h 24h 48h 1w 2w 3w
        1mo no_exp``), cached per period and renewed before its own expiry.

        Only plans with automation get one; others get an :class:`IndigoAPIError`.
        """
        return self._call(
            functools.partial(self._engine.automation_token, period), "automation_token"
        )

    def workspaces(self) -> list[Workspace]:
        """The workspaces the account belongs to."""
        return self._call(self._engine.workspaces, "workspaces")

    def revoke(self) -> None:
        """Revoke every token of the account server-side and drop them locally."""
        self._call(self._engine.revoke, "revoke")

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> TokenManager:
        self._running_loop()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background refresher and the manager's event loop.

        Calls waiting on a renewal get :class:`IndigoUnavailableError`. What the
        store opened on that loop (a Redis connection) is closed; the store stays
        usable. Safe from any thread and more than once; the manager starts again
        if used again.
        """
        with self._lock:
            finalizer, self._finalizer = self._finalizer, None
            self._loop = None
        if finalizer is not None:
            finalizer()

    # -- httpx --------------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._engine.owns(request.url):
            yield request
            return
        request.read()  # a streamed body could not be sent a second time
        token = self.get_token()
        request.headers["Authorization"] = _BEARER + token
        response = yield request
        if response.status_code != 401:
            return
        self.invalidate(token)
        request.headers["Authorization"] = _BEARER + self.get_token()
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # For an async client in code that also has threads: each wait runs in a
        # worker thread, so the event loop never blocks on the manager.
        if not self._engine.owns(request.url):
            yield request
            return
        await request.aread()
        token = await anyio.to_thread.run_sync(self.get_token)
        request.headers["Authorization"] = _BEARER + token
        response = yield request
        if response.status_code != 401:
            return
        await anyio.to_thread.run_sync(self.invalidate, token)
        request.headers["Authorization"] = _BEARER + await anyio.to_thread.run_sync(self.get_token)
        yield request

    # -- requests -----------------------------------------------------------------------

    def _owns_url(self, url: str | bytes | None) -> bool:
        if not url:
            return False
        try:
            return self._engine.owns(httpx.URL(url if isinstance(url, str) else url.decode()))
        except (httpx.InvalidURL, UnicodeDecodeError):
            return False

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        """Authenticate a ``requests`` request: ``requests.get(url, auth=manager)``.

        Sets the bearer on requests to the Indigo hosts only, and on a 401 renews
        the token and sends the request once more (as requests' own digest auth does).
        """
        if not self._owns_url(request.url):
            return request
        request.headers["Authorization"] = _BEARER + self.get_token()
        position: int | None = None
        tell = getattr(request.body, "tell", None)
        if callable(tell):
            try:
                position = tell()
            except OSError:
                position = None
        request.register_hook("response", _ReauthOn401(self, position))  # type: ignore[no-untyped-call]
        return request


class _ReauthOn401:
    """The response hook behind the ``requests`` auth: one new try after a 401."""

    __slots__ = ("_manager", "_position", "_used")

    def __init__(self, manager: TokenManager, position: int | None) -> None:
        self._manager = manager
        self._position = position
        self._used = False

    def __call__(self, response: Response, **kwargs: Any) -> Response:
        request = response.request
        if response.status_code != 401 or self._used or request is None:
            return response
        if not self._manager._owns_url(request.url):
            return response  # a redirect led elsewhere; the bearer went nowhere else
        sent = request.headers.get("Authorization", "")
        if not sent.startswith(_BEARER):
            return response
        self._used = True
        manager = self._manager
        manager.invalidate(sent[len(_BEARER) :])
        token = manager.get_token()
        from requests.cookies import extract_cookies_to_jar

        # Release the connection of the refused answer before sending again.
        _ = response.content
        response.close()
        retry = request.copy()
        cookies = retry._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(cookies, request, response.raw)  # type: ignore[no-untyped-call]
        retry.prepare_cookies(cookies)
        retry.headers["Authorization"] = _BEARER + token
        seek = getattr(retry.body, "seek", None)
        if self._position is not None and callable(seek):
            seek(self._position)
        connection = response.connection
        again: Response = connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again
