"""The errors indigo-auth raises.

Every error derives from :class:`IndigoAuthError` and carries what the API said
(``status_code``, ``error_code``, ``message``), never a password, digest or token::

    IndigoAuthError
    ├── InvalidCredentialsError   sign-in refused (401/403 on /user/signin)
    ├── RateLimitedError          429 after the retries, with ``retry_after``
    ├── IndigoUnavailableError    connection errors, timeouts, 5xx after the retries
    ├── IndigoProtocolError       a body that is not the documented envelope
    └── IndigoAPIError            any other error the API reports
"""

from __future__ import annotations

__all__ = [
    "IndigoAPIError",
    "IndigoAuthError",
    "IndigoProtocolError",
    "IndigoUnavailableError",
    "InvalidCredentialsError",
    "RateLimitedError",
]


class IndigoAuthError(Exception):
    """Base class of every error indigo-auth raises.

    Attributes:
        status_code: the HTTP status of the answer, or ``None`` where there was none.
        error_code: the envelope's ``status.error_code``, or ``""``.
        message: the envelope's ``status.message``, or a description of the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_code = error_code

    def __str__(self) -> str:
        parts = [self.message]
        details = []
        if self.status_code is not None:
            details.append(f"HTTP {self.status_code}")
        if self.error_code:
            details.append(f"error_code={self.error_code!r}")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"error_code={self.error_code!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.status_code, self.error_code))


def _rebuild(
    cls: type[IndigoAuthError], message: str, status_code: int | None, error_code: str
) -> IndigoAuthError:
    err = cls.__new__(cls)
    IndigoAuthError.__init__(err, message, status_code=status_code, error_code=error_code)
    return err


class InvalidCredentialsError(IndigoAuthError):
    """The API refused the email and password (HTTP 401 or 403 on sign-in).

    Never retried: a wrong password costs one request, and the error is kept for a
    short cooldown so that every caller in it gets this error without a new request.
    """


class RateLimitedError(IndigoAuthError):
    """The API kept answering 429 until the retries ran out.

    Attributes:
        retry_after: seconds the API asked to wait (``Retry-After``), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 429,
        error_code: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, error_code=error_code)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_rate_limited,
            (self.message, self.status_code, self.error_code, self.retry_after),
        )


def _rebuild_rate_limited(
    message: str, status_code: int | None, error_code: str, retry_after: float | None
) -> RateLimitedError:
    return RateLimitedError(
        message, status_code=status_code, error_code=error_code, retry_after=retry_after
    )


class IndigoUnavailableError(IndigoAuthError):
    """The API could not be reached or kept failing (connection errors, timeouts,
    500/502/503/504) until the retries or the overall deadline ran out."""


class IndigoProtocolError(IndigoAuthError):
    """The API answered with something that is not the documented envelope: HTML,
    an empty or cut body, JSON of the wrong shape, or a token that is not a JWT."""


class IndigoAPIError(IndigoAuthError):
    """Any other error the API reports (for example a refused refresh token, a
    workspace the account is not a member of, or a plan without automation)."""
