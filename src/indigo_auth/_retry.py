"""Retries of transient failures, through tenacity (kept private).

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
full jitter, honouring ``Retry-After`` up to ``max_retry_delay``. Anything else is
raised at once. Callers never meet tenacity's ``RetryError``: the last typed error
is re-raised.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from ._exceptions import IndigoUnavailableError, RateLimitedError

__all__ = ["RetryPolicy", "retry_call"]

T = TypeVar("T")
logger = logging.getLogger("indigo_auth")

_TRANSIENT = (IndigoUnavailableError, RateLimitedError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried: plain numbers, no tenacity types."""

    max_attempts: int = 5
    max_retry_delay: float = 30.0
    initial_delay: float = 0.5

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.initial_delay * 2 ** (attempt - 1), self.max_retry_delay)
        delay = rng.uniform(backoff / 2, backoff)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_retry_delay)


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
    on_retry: Callable[[BaseException], None] | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> T:
    """Call ``fn`` until it succeeds, fails for good, or the attempts run out."""
    chance = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        return policy.delay(state.attempt_number, retry_after, chance)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.upcoming_sleep
        logger.warning(
            "%s failed (attempt %d of %d): %s; retrying in %.2fs",
            what,
            state.attempt_number,
            policy.max_attempts,
            exc,
            delay,
        )
        if on_retry is not None and exc is not None:
            on_retry(exc)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.max_attempts)),
        wait=wait,
        retry=retry_if_exception_type(_TRANSIENT),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        return await fn()

    return await retrying(attempt)
