"""The async token manager: one request for many callers, refreshed ahead, retried."""

from __future__ import annotations

import copy
import functools
import logging
import os
import random
import re
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx

from ._api import (
    AUTOMATION_PERIODS,
    DEFAULT_BASE_URL,
    DEFAULT_LAUNCHER_URL,
    IndigoAPI,
    SignedIn,
    Workspace,
    md5_hex,
    normalize_base_url,
)
from ._exceptions import (
    IndigoAPIError,
    IndigoAuthError,
    IndigoProtocolError,
    IndigoUnavailableError,
    InvalidCredentialsError,
)
from ._httpx2 import AuthBase
from ._retry import RetryPolicy, retry_call
from ._runtime import LoopLocal, current_loop, spawn_detached
from ._stores import MemoryStore, TokenStore, store_key
from ._token import Token, TokenState, parse_jwt_lifetime

__all__ = ["AsyncTokenManager", "ManagerStats"]

T = TypeVar("T")
logger = logging.getLogger("indigo_auth")

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_SECRET = "'**********'"  # noqa: S105 - the mask shown instead of a secret
_NEVER = float("inf")
#: ``force_refresh`` without a token in memory: replace the one in the store.
_WHATEVER_IS_STORED = "\x00whatever is stored"


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """What a manager has done so far. Holds counts only, never a secret.

    Attributes:
        sign_ins: successful sign-ins with the credentials.
        refreshes: successful refreshes with a refresh token (workspace switches included).
        retries: transient failures that were retried.
        failures: renewals that ended in an error.
        renewals: renewals run (each one served every caller waiting at the time).
        waiters: callers that waited on a renewal instead of getting a cached token.
        adopted: tokens taken from the store, renewed by another manager or process.
        invalidations: tokens dropped after the API refused them (401).
        automation_tokens: automation tokens fetched.
        expires_in: seconds the current token has left, or ``None``.
    """

    sign_ins: int = 0
    refreshes: int = 0
    retries: int = 0
    failures: int = 0
    renewals: int = 0
    waiters: int = 0
    adopted: int = 0
    invalidations: int = 0
    automation_tokens: int = 0
    expires_in: float | None = None


@dataclass(slots=True)
class _Counters:
    """The mutable counts behind :class:`ManagerStats`."""

    sign_ins: int = 0
    refreshes: int = 0
    retries: int = 0
    failures: int = 0
    renewals: int = 0
    waiters: int = 0
    adopted: int = 0
    invalidations: int = 0
    automation_tokens: int = 0


class _Flight:
    """One renewal in progress, shared by every caller that needs its result."""

    __slots__ = ("done", "error", "loop", "scope", "token")

    def __init__(self, loop: object) -> None:
        self.loop = loop
        self.done = anyio.Event()
        self.token: Token | None = None
        self.error: IndigoAuthError | None = None
        self.scope: anyio.CancelScope | None = None


def _fresh(error: IndigoAuthError) -> IndigoAuthError:
    """A copy of a shared error, so that each caller raises its own traceback."""
    return copy.copy(error)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port
    if port is None:
        port = 443 if url.scheme == "https" else 80 if url.scheme == "http" else None
    return (url.scheme, url.host, port)


class AsyncTokenManager(AuthBase):
    """Keeps a valid Indigo API token at hand for asyncio and Trio code.

    However many tasks call :meth:`get_token` at once, one request goes out. Inside
    ``async with manager`` a background task renews the token ``refresh_margin``
    seconds before it expires; without it, :meth:`get_token` renews lazily. Renewal
    uses the refresh token and signs in again where the API refuses it. Transient
    failures are retried with backoff. The manager is also an :class:`httpx.Auth`::

        async with AsyncTokenManager.from_env() as manager:
            async with httpx.AsyncClient(auth=manager) as client:
                await client.get("https://api.indigobrowser.com/workspace/folders")

    Args:
        email: the account's email.
        password: the account's password; turned into its MD5 digest at once and dropped.
        password_md5: the digest instead of the password (exactly one of the two).
        base_url: the API's base URL; ``https://`` is added where the scheme is missing.
        workspace_id: switch into this workspace after sign-in.
        refresh_margin: renew this many seconds before expiry (at most half the
            token's lifetime, for tokens that live shorter than the margin).
        store: where tokens live (:class:`MemoryStore` by default); managers and
            processes that share a store share one sign-in.
        http_client: an :class:`httpx.AsyncClient` to send the token requests with;
            by default the manager makes its own per event loop.
        timeout: seconds for one HTTP request.
        max_attempts: attempts for one request before a transient failure is raised.
        max_retry_delay: the longest wait between attempts (``Retry-After`` included).
        deadline: seconds one renewal may take in all, retries included.
        credentials_cooldown: seconds a refused sign-in is remembered and handed to
            every caller without a new request.
        launcher_url: the local launcher, the other host that gets the bearer.
        allow_insecure: allow a plain ``http://`` base URL that is not loopback.
        clock: a monotonic clock (for tests).

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
        if not isinstance(email, str) or not email.strip():
            raise ValueError("email is required")
        if (password is None) == (password_md5 is None):
            raise ValueError("give exactly one of password and password_md5")
        if password is not None:
            if not password:
                raise ValueError("password is empty")
            digest = md5_hex(password)
        else:
            assert password_md5 is not None
            if not _MD5_HEX.fullmatch(password_md5.strip()):
                raise ValueError("password_md5 must be 32 hexadecimal characters")
            digest = password_md5.strip().lower()
        del password, password_md5
        if refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        if timeout <= 0 or deadline <= 0:
            raise ValueError("timeout and deadline must be > 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if max_retry_delay < 0 or credentials_cooldown < 0:
            raise ValueError("max_retry_delay and credentials_cooldown must be >= 0")

        self._email = email.strip()
        self._password_md5 = digest
        self._base_url = normalize_base_url(base_url, allow_insecure=allow_insecure)
        launcher = normalize_base_url(launcher_url, allow_insecure=allow_insecure)
        self._origins = frozenset(
            {_origin(httpx.URL(self._base_url)), _origin(httpx.URL(launcher))}
        )
        self._workspace_id = workspace_id or None
        self._refresh_margin = float(refresh_margin)
        self._store: TokenStore = store if store is not None else MemoryStore()
        self._key = store_key(self._base_url, self._email, self._workspace_id)
        self._user_client = http_client
        self._clients: LoopLocal[httpx.AsyncClient] = LoopLocal(self._make_client)
        self._timeout = float(timeout)
        self._policy = RetryPolicy(max_attempts=max_attempts, max_retry_delay=max_retry_delay)
        self._deadline = float(deadline)
        self._cooldown = float(credentials_cooldown)
        self._clock = clock
        self._api = IndigoAPI(self._base_url)
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography

        self._current: Token | None = None
        # The hot path reads these two plain attributes and nothing else.
        self._fresh_until = -_NEVER
        self._fresh_value = ""
        self._flight: _Flight | None = None
        self._refused: str | None = None
        self._failure: tuple[IndigoAuthError, float] | None = None
        self._retry_at = 0.0
        self._failed_in_a_row = 0
        self._changed: LoopLocal[anyio.Event] = LoopLocal(anyio.Event)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._task_group_loop: object | None = None
        self._automation: dict[str, Token] = {}
        self._automation_lock: LoopLocal[anyio.Lock] = LoopLocal(anyio.Lock)
        self._counters = _Counters()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncTokenManager:
        """A manager configured from the environment.

        Reads ``INDIGO_EMAIL``, ``INDIGO_PASSWORD`` or ``INDIGO_PASSWORD_MD5``,
        ``INDIGO_API_URL`` and ``INDIGO_WORKSPACE_ID``; keyword arguments override them
        and pass the other settings.

        Raises:
            ValueError: naming the variable that is missing.
        """
        return cls(**env_settings(kwargs))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(email={self._email!r}, password={_SECRET}, "
            f"base_url={self._base_url!r}, workspace_id={self._workspace_id!r})"
        )

    @property
    def email(self) -> str:
        """The account's email."""
        return self._email

    @property
    def base_url(self) -> str:
        """The API's base URL, as the manager uses it."""
        return self._base_url

    @property
    def workspace_id(self) -> str | None:
        """The workspace of the current token (or the one asked for)."""
        token = self._token
        if token is not None and token.workspace_id:
            return token.workspace_id
        return self._workspace_id

    @property
    def stats(self) -> ManagerStats:
        """Counts of what the manager has done, and what the current token has left."""
        token = self._token
        expires_in = None if token is None else max(0.0, token.expires_at - self._clock())
        return ManagerStats(**asdict(self._counters), expires_in=expires_in)

    # -- the token ----------------------------------------------------------------------

    @property
    def _token(self) -> Token | None:
        return self._current

    @_token.setter
    def _token(self, token: Token | None) -> None:
        self._current = token
        if token is None:
            self._fresh_until = -_NEVER
            self._fresh_value = ""
        else:
            self._fresh_until = token.refresh_at
            self._fresh_value = token.value

    def _cached_token(self) -> str | None:
        """The current token if it needs no renewal yet: the hot-path rule, for callers
        that are not coroutines (the sync manager's threads)."""
        return self._fresh_value if self._clock() < self._fresh_until else None

    # ``force_refresh`` is not keyword-only: a keyword-only default costs every call of
    # the hot path some 70 ns, a fifth of its time.
    async def get_token(self, force_refresh: bool = False) -> str:
        """A valid token: the cached one, or a renewed one.

        Concurrent callers share one renewal. ``force_refresh=True`` renews even if
        the cached token looks valid.

        Raises:
            InvalidCredentialsError: the API refused the email and password.
            RateLimitedError: 429 until the retries ran out.
            IndigoUnavailableError: the API could not be reached or kept failing.
            IndigoProtocolError: the API answered with something unexpected.
            IndigoAPIError: any other error the API reported.
        """
        if self._clock() < self._fresh_until and not force_refresh:
            return self._fresh_value
        return await self._get_token_slow(force_refresh)

    async def _get_token_slow(self, force_refresh: bool) -> str:
        now = self._clock()
        token = self._token
        if not force_refresh and token is not None:
            if now < token.refresh_at:
                return token.value
            if now < token.floor_at:
                # Still good: hand it out while one renewal runs in the background.
                if now >= self._retry_at:
                    self._start_flight(stale=None)
                return token.value
        failure = self._failure
        if failure is not None and now < failure[1]:
            raise _fresh(failure[0])
        stale: str | None = None
        if force_refresh:
            stale = token.value if token is not None else _WHATEVER_IS_STORED
        flight = self._start_flight(stale=stale)
        self._counters.waiters += 1
        await flight.done.wait()
        if flight.error is not None:
            raise _fresh(flight.error)
        assert flight.token is not None
        return flight.token.value

    def invalidate(self, token: str) -> bool:
        """Report that the API refused ``token`` (a 401).

        The token is dropped only if it is still the current one, so that many
        requests refused with the same token cause one renewal. Returns whether it
        was dropped.
        """
        current = self._token
        if current is None or current.value != token:
            return False
        self._refused = token
        self._token = None
        self._counters.invalidations += 1
        logger.info("token refused by the API; renewing on next use")
        return True

    def _start_flight(self, *, stale: str | None) -> _Flight:
        loop = current_loop()
        flight = self._flight
        if flight is not None and flight.loop is loop and not flight.done.is_set():
            return flight
        flight = _Flight(loop)
        self._flight = flight
        logger.debug("renewal started")
        if self._task_group is not None and self._task_group_loop is loop:
            self._task_group.start_soon(self._run_flight, flight, stale, name="indigo-auth renewal")
        else:
            spawn_detached(lambda: self._run_flight(flight, stale), name="indigo-auth renewal")
        return flight

    async def _run_flight(self, flight: _Flight, stale: str | None) -> None:
        self._counters.renewals += 1
        with anyio.CancelScope() as scope:
            flight.scope = scope
            await self._run_flight_in_scope(flight, stale)

    async def _run_flight_in_scope(self, flight: _Flight, stale: str | None) -> None:
        cancelled = anyio.get_cancelled_exc_class()
        try:
            with anyio.fail_after(self._deadline):
                token = await self._renew(stale)
        except cancelled:
            flight.error = IndigoUnavailableError("the renewal was cancelled: the manager closed")
            self._finish(flight)
            raise
        except TimeoutError:
            flight.error = IndigoUnavailableError(
                f"the renewal did not finish within the deadline of {self._deadline:g}s"
            )
        except IndigoAuthError as exc:
            flight.error = exc
        except Exception as exc:
            logger.exception("unexpected error during renewal")
            flight.error = IndigoAuthError(f"unexpected error during renewal: {type(exc).__name__}")
        else:
            flight.token = token
        self._finish(flight)

    def _finish(self, flight: _Flight) -> None:
        now = self._clock()
        if flight.token is not None:
            self._token = flight.token
            self._failure = None
            self._retry_at = 0.0
            self._failed_in_a_row = 0
            self._notify_changed()
        elif flight.error is not None:
            error = flight.error
            self._counters.failures += 1
            self._failed_in_a_row += 1
            backoff = self._policy.delay(self._failed_in_a_row, None, self._rng)
            self._retry_at = now + max(backoff, 1.0)
            if isinstance(error, InvalidCredentialsError):
                self._failure = (error, now + self._cooldown)
                self._retry_at = max(self._retry_at, now + self._cooldown)
            current = self._token
            if current is not None and now < current.floor_at:
                logger.warning(
                    "early renewal failed: %s; the current token stays in use, next try in %.1fs",
                    error,
                    self._retry_at - now,
                )
            else:
                logger.warning("renewal failed: %s", error)
        if self._flight is flight:
            self._flight = None
        flight.done.set()

    def _notify_changed(self) -> None:
        event = self._changed.peek()
        self._changed.clear()
        if event is not None:
            event.set()

    def _adoptable(self, state: TokenState | None, stale: str | None) -> Token | None:
        """The stored token, if it is fresh and not the one being replaced."""
        if state is None or state.token in (stale, self._refused):
            return None
        current = self._token
        if current is not None and current.value == state.token:
            # Our own token, already due: its monotonic deadlines stand, whatever the
            # wall clock now says about it.
            return None
        token = Token.from_state(
            state, refresh_margin=self._refresh_margin, monotonic_now=self._clock(), rng=self._rng
        )
        return token if self._clock() < token.refresh_at else None

    def _adopt(self, state: TokenState | None, stale: str | None) -> Token | None:
        adopted = self._adoptable(state, stale)
        if adopted is not None:
            self._counters.adopted += 1
            logger.debug("took a fresh token from the store")
        return adopted

    async def _renew(self, stale: str | None) -> Token:
        key = self._key
        async with self._store.lock(key):
            state = await self._store.load(key)
            if stale is _WHATEVER_IS_STORED and state is not None:
                stale = state.token
            adopted = self._adopt(state, stale)
            if adopted is not None:
                return adopted
            client = await self._http()
            signed: SignedIn | None = None
            # The newest refresh token: the store's (a sibling may have rotated it), else ours.
            newest: TokenState | Token | None = state
            if newest is None or newest.refresh_token is None:
                newest = self._token
            refresh_token = newest.refresh_token if newest is not None else None
            workspace_id = self._workspace_id or (newest.workspace_id if newest else None)
            if refresh_token is not None and workspace_id is not None:
                try:
                    signed = await self._refresh(client, refresh_token, workspace_id)
                except IndigoAPIError as exc:
                    logger.info("refresh refused (%s); signing in again", exc)
                    # A sibling process may have rotated the refresh token meanwhile.
                    adopted = self._adopt(await self._store.load(key), stale)
                    if adopted is not None:
                        return adopted
            if signed is None:
                signed, workspace_id = await self._sign_in(client)
            new_state = self._state_of(signed, workspace_id)
            await self._store.save(key, new_state)
        return Token.from_state(
            new_state,
            refresh_margin=self._refresh_margin,
            monotonic_now=self._clock(),
            rng=self._rng,
        )

    def _state_of(self, signed: SignedIn, workspace_id: str | None) -> TokenState:
        claims = parse_jwt_lifetime(signed.token)
        return TokenState(
            token=signed.token,
            refresh_token=signed.refresh_token,
            lifetime=claims.lifetime,
            received_at=time.time(),
            workspace_id=claims.workspace_id or workspace_id,
        )

    async def _refresh(
        self, client: httpx.AsyncClient, refresh_token: str, workspace_id: str
    ) -> SignedIn:
        signed = await self._call(
            lambda: self._api.refresh(client, self._email, refresh_token, workspace_id),
            "refresh",
        )
        self._counters.refreshes += 1
        logger.info("token refreshed")
        return signed

    async def _sign_in(self, client: httpx.AsyncClient) -> tuple[SignedIn, str | None]:
        signed = await self._call(
            lambda: self._api.sign_in(client, self._email, self._password_md5), "sign-in"
        )
        self._counters.sign_ins += 1
        logger.info("signed in as %s", self._email)
        workspace_id = parse_jwt_lifetime(signed.token).workspace_id
        wanted = self._workspace_id
        if wanted is not None and wanted != workspace_id:
            if signed.refresh_token is None:
                raise IndigoProtocolError(
                    "sign-in gave no refresh token, so the workspace cannot be switched"
                )
            signed = await self._refresh(client, signed.refresh_token, wanted)
            logger.info("switched into workspace %s", wanted)
            return signed, wanted
        if workspace_id is None:
            bearer = signed.token
            listed = await self._call(lambda: self._api.workspaces(client, bearer), "workspaces")
            workspace_id = listed[0].workspace_id if listed else None
        return signed, workspace_id

    async def _call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_call(
            fn, policy=self._policy, what=what, on_retry=self._count_retry, rng=self._rng
        )

    def _count_retry(self, error: BaseException) -> None:
        self._counters.retries += 1

    # -- HTTP ---------------------------------------------------------------------------

    def _make_client(self) -> httpx.AsyncClient:
        # No keep-alive: renewals are minutes apart, and an idle connection would stay
        # bound to the event loop that opened it.
        assert _ssl_context is not None
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=_ssl_context,
        )

    async def _http(self) -> httpx.AsyncClient:
        if self._user_client is not None:
            return self._user_client
        client = self._clients.peek()
        if client is None:
            await _load_ssl_context()
            client = self._clients.get()
        return client

    def owns(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on an Indigo host that gets the bearer."""
        return _origin(url) in self._origins

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise TypeError(
            "AsyncTokenManager authenticates httpx.AsyncClient; use TokenManager with httpx.Client"
        )

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self.owns(request.url):
            yield request
            return
        token = await self.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        self.invalidate(token)
        token = await self.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    # -- the rest of the API -------------------------------------------------------------

    async def _with_bearer(
        self, fn: Callable[[httpx.AsyncClient, str], Awaitable[T]], what: str
    ) -> T:
        client = await self._http()
        for attempt in (1, 2):
            bearer = await self.get_token()
            try:
                return await self._call(functools.partial(fn, client, bearer), what)
            except IndigoAPIError as exc:
                if exc.status_code != 401 or attempt == 2:
                    raise
                self.invalidate(bearer)
        raise AssertionError("unreachable")  # pragma: no cover

    async def automation_token(self, period: str = "24h") -> str:
        """An automation token for ``period`` (one of ``1h 3h 5h 16h 24h 48h 1w 2w 3w
        1mo no_exp``), cached per period and renewed before its own expiry.

        Only plans with automation get one; others get an :class:`IndigoAPIError`.
        """
        if period not in AUTOMATION_PERIODS:
            raise ValueError(f"period must be one of {', '.join(AUTOMATION_PERIODS)}")
        cached = self._automation.get(period)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        async with self._automation_lock.get():
            cached = self._automation.get(period)
            if cached is not None and self._clock() < cached.refresh_at:
                return cached.value
            value = await self._with_bearer(
                lambda client, bearer: self._api.automation_token(client, bearer, period),
                "automation token",
            )
            self._counters.automation_tokens += 1
            self._automation[period] = self._automation_token_of(value, period)
            logger.info("automation token fetched (period %s)", period)
            return value

    def _automation_token_of(self, value: str, period: str) -> Token:
        claims = parse_jwt_lifetime(value)
        if period == "no_exp" or claims.exp is None:
            state = TokenState(value, None, lifetime=_NEVER, received_at=time.time())
            return Token(
                value=value,
                refresh_token=None,
                workspace_id=claims.workspace_id,
                lifetime=_NEVER,
                expires_at=_NEVER,
                floor_at=_NEVER,
                refresh_at=_NEVER,
                state=state,
            )
        state = TokenState(value, None, lifetime=claims.lifetime, received_at=time.time())
        return Token.from_state(
            state, refresh_margin=self._refresh_margin, monotonic_now=self._clock(), rng=self._rng
        )

    async def workspaces(self) -> list[Workspace]:
        """The workspaces the account belongs to."""
        return await self._with_bearer(self._api.workspaces, "workspaces")

    async def revoke(self) -> None:
        """Revoke every token of the account server-side and drop them locally."""
        await self._with_bearer(lambda client, bearer: self._api.revoke(client, bearer), "revoke")
        self._token = None
        self._automation.clear()
        await self._store.delete(self._key)
        logger.info("tokens revoked")

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncTokenManager:
        if self._task_group is not None:
            raise RuntimeError("this manager is already entered")
        await self._http()  # ready before the first caller needs it
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._task_group_loop = current_loop()
        task_group.start_soon(self._refresh_ahead, name="indigo-auth refresher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        try:
            if task_group is not None:
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            self._task_group_loop = None
            await self.aclose()

    async def _refresh_ahead(self) -> None:
        while True:
            token = self._token
            changed = self._changed.get()
            if token is None:
                await changed.wait()
                continue
            due = max(token.refresh_at, self._retry_at)
            now = self._clock()
            if now < due:
                with anyio.move_on_after(due - now):
                    await changed.wait()
                continue
            flight = self._start_flight(stale=None)
            await flight.done.wait()

    async def aclose(self) -> None:
        """Cancel a renewal in flight and close the HTTP client the manager opened for
        this event loop. Callers waiting on the renewal get :class:`IndigoUnavailableError`."""
        flight = self._flight
        if flight is not None and flight.scope is not None and flight.loop is current_loop():
            flight.scope.cancel()
            with anyio.move_on_after(5.0, shield=True):
                await flight.done.wait()
        client = self._clients.peek()
        self._clients.clear()
        if client is not None:
            await client.aclose()


_ssl_context: ssl.SSLContext | None = None


def _create_ssl_context() -> ssl.SSLContext:
    import certifi

    cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
    capath = os.environ.get("SSL_CERT_DIR") or None
    return ssl.create_default_context(cafile=cafile, capath=capath)


async def _load_ssl_context() -> None:
    """Load the CA certificates once per process, in a worker thread: it takes tens
    of milliseconds that the event loop should not spend."""
    global _ssl_context
    if _ssl_context is None:
        context = await anyio.to_thread.run_sync(_create_ssl_context)
        if _ssl_context is None:
            _ssl_context = context


def env_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """Manager arguments from ``INDIGO_*`` variables, with ``overrides`` on top."""
    settings = dict(overrides)
    env = os.environ
    if "email" not in settings:
        email = env.get("INDIGO_EMAIL", "").strip()
        if not email:
            raise ValueError("INDIGO_EMAIL is not set")
        settings["email"] = email
    if "password" not in settings and "password_md5" not in settings:
        if env.get("INDIGO_PASSWORD"):
            settings["password"] = env["INDIGO_PASSWORD"]
        elif env.get("INDIGO_PASSWORD_MD5"):
            settings["password_md5"] = env["INDIGO_PASSWORD_MD5"]
        else:
            raise ValueError("neither INDIGO_PASSWORD nor INDIGO_PASSWORD_MD5 is set")
    if "base_url" not in settings and env.get("INDIGO_API_URL"):
        settings["base_url"] = env["INDIGO_API_URL"]
    if "workspace_id" not in settings and env.get("INDIGO_WORKSPACE_ID"):
        settings["workspace_id"] = env["INDIGO_WORKSPACE_ID"]
    return settings
