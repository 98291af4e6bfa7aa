"""Faults the emulator can inject: what a flaky network or a broken proxy does to an answer.

A :class:`Fault` is a value; :meth:`IndigoEmulator.inject` decides when it applies.
The schedule (:class:`FaultSchedule`) is private: it keeps injections in the order
they were made and picks, for each request, the first one that fires.
"""

from __future__ import annotations

import http
import random
import threading
from dataclasses import dataclass
from typing import Literal

__all__ = ["ENDPOINTS", "Fault", "FaultKind", "FaultSchedule"]

#: The names :meth:`IndigoEmulator.inject` accepts, besides ``"*"`` (all of them).
ENDPOINTS = (
    "signin",
    "refresh_token",
    "automation_token",
    "workspaces",
    "revoke_tokens",
    "restrictions",
    "folders",
)

FaultKind = Literal[
    "latency",
    "status",
    "html",
    "empty",
    "truncated",
    "wrong_shape",
    "error_in_200",
    "drop_before",
    "drop_midway",
    "stall",
]

#: The longest a stall may last: past it the emulator closes the connection.
MAX_STALL = 60.0

_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED_REQUEST",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def default_error_code(status_code: int) -> str:
    """The error code the emulator puts in an envelope for ``status_code``."""
    return _ERROR_CODES.get(status_code, f"HTTP_{status_code}")


def _phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return f"HTTP {status_code}"


def _check_status(status_code: int, *, lowest: int = 100) -> None:
    if not lowest <= status_code <= 599:
        raise ValueError(f"status must be between {lowest} and 599, got {status_code}")


@dataclass(frozen=True, slots=True)
class Fault:
    """One way for an answer to go wrong. Build it with a classmethod::

        emu.inject("signin", Fault.status(503, retry_after=2), times=1)
        emu.inject("*", Fault.drop_before(), probability=0.2, seed=7)

    Faults that replace the answer (``status``, ``html``, ``empty``, ``truncated``,
    ``wrong_shape``, ``error_in_200``, ``drop_before``) answer without handling the
    request: no token is issued, no refresh token is used up, no rate-limit slot is
    taken. ``latency`` delays, then the request is handled normally. ``drop_midway``
    and ``stall`` handle the request for real (its side effects happen, as when a
    connection dies after the server did its work) and then cut its answer.

    Attributes:
        kind: which fault this is.
        status_code: the HTTP status sent, where one is sent.
        seconds: the delay of ``latency``, or how long ``stall`` lasts.
        retry_after: the ``Retry-After`` of a ``status`` fault: seconds, or a string
            (an HTTP date) sent verbatim; ``None`` sends no header.
        error_code: the envelope's ``status.error_code``, where an envelope is sent.
        message: the envelope's ``status.message``, where an envelope is sent.
        http_code: the envelope's ``status.http_code`` of an ``error_in_200`` fault.
    """

    kind: FaultKind
    status_code: int = 200
    seconds: float = 0.0
    retry_after: float | str | None = None
    error_code: str = ""
    message: str = ""
    http_code: int = 200

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Wait ``seconds``, then answer normally.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        return cls("latency", seconds=float(seconds))

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | str | None = None,
        error_code: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer with the documented error envelope and HTTP status ``code``.

        Args:
            code: an HTTP error status, 400 to 599.
            retry_after: sent as ``Retry-After``: a number of seconds, or a string
                (for example an HTTP date) sent as is. ``None`` sends no header.
            error_code: the envelope's ``error_code``; by default one fitting ``code``
                (``"RATE_LIMITED"`` for 429, ``"SERVICE_UNAVAILABLE"`` for 503, ...).
            message: the envelope's ``message``; by default the status phrase.

        Raises:
            ValueError: ``code`` is not an error status, or ``retry_after`` is negative.
        """
        _check_status(code, lowest=400)
        if isinstance(retry_after, (int, float)) and retry_after < 0:
            raise ValueError(f"retry_after must not be negative, got {retry_after}")
        return cls(
            "status",
            status_code=code,
            retry_after=retry_after,
            error_code=default_error_code(code) if error_code is None else error_code,
            message=_phrase(code) if message is None else message,
            http_code=code,
        )

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """Answer with a proxy's ``text/html`` error page (a 502 by default)."""
        _check_status(status)
        return cls("html", status_code=status)

    @classmethod
    def empty(cls, status: int = 200) -> Fault:
        """Answer with status ``status`` and an empty body."""
        _check_status(status)
        return cls("empty", status_code=status)

    @classmethod
    def truncated(cls, status: int = 200) -> Fault:
        """Answer with status ``status`` and a JSON body cut short (a complete HTTP answer)."""
        _check_status(status)
        return cls("truncated", status_code=status)

    @classmethod
    def wrong_shape(cls) -> Fault:
        """Answer 200 with JSON that is not the envelope: ``{"data": {"token": 5}}``."""
        return cls("wrong_shape")

    @classmethod
    def error_in_200(cls, http_code: int = 401) -> Fault:
        """Answer HTTP 200 with an error envelope whose ``status.http_code`` is ``http_code``."""
        _check_status(http_code, lowest=400)
        return cls(
            "error_in_200",
            error_code=default_error_code(http_code),
            message=_phrase(http_code),
            http_code=http_code,
        )

    @classmethod
    def drop_before(cls) -> Fault:
        """Drop the connection before any byte of the answer.

        Over a socket served by :meth:`IndigoEmulator.serve` the connection is reset
        (the client sees ``httpx.ReadError``); in process the app raises
        ``httpx.ReadError`` itself.
        """
        return cls("drop_before")

    @classmethod
    def drop_midway(cls) -> Fault:
        """Handle the request, send the headers and half the body, then close the connection.

        Over a socket the client reads the status and headers, then reading the body
        raises ``httpx.RemoteProtocolError``; in process the app raises
        ``httpx.RemoteProtocolError`` before the client sees anything.
        """
        return cls("drop_midway")

    @classmethod
    def stall(cls, *, seconds: float = MAX_STALL) -> Fault:
        """Handle the request, send the headers and half the body, then send nothing more.

        After ``seconds`` (at most 60) the emulator closes the connection; a client
        whose read timeout is shorter sees ``httpx.ReadTimeout`` first. In process,
        where the transport has no timeouts, the app raises ``httpx.ReadTimeout``
        after ``seconds``: pass a short one there.

        Raises:
            ValueError: ``seconds`` is negative or more than 60.
        """
        if not 0 <= seconds <= MAX_STALL:
            raise ValueError(f"seconds must be between 0 and {MAX_STALL}, got {seconds}")
        return cls("stall", seconds=float(seconds))

    @property
    def handles_request(self) -> bool:
        """Whether the request is handled for real before this fault strikes."""
        return self.kind in ("latency", "drop_midway", "stall")


class _Injection:
    __slots__ = ("endpoint", "fault", "probability", "random", "remaining")

    def __init__(
        self,
        endpoint: str,
        fault: Fault,
        remaining: int | None,
        probability: float | None,
        seed: int | None,
    ) -> None:
        self.endpoint = endpoint
        self.fault = fault
        self.remaining = remaining
        self.probability = probability
        # Seeded schedules are what a test wants: the same seed strikes the same requests.
        self.random = random.Random(seed)  # noqa: S311 - not for security, a reproducible schedule

    def fires(self, endpoint: str) -> bool:
        if self.endpoint not in ("*", endpoint):
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.probability is not None and self.random.random() >= self.probability:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


class FaultSchedule:
    """The injected faults, in the order they were injected. Safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._injections: list[_Injection] = []

    def add(
        self,
        endpoint: str,
        fault: Fault,
        *,
        times: int | None,
        probability: float | None,
        seed: int | None,
    ) -> None:
        """Queue ``fault`` for ``endpoint``; see :meth:`IndigoEmulator.inject`."""
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(
                f"unknown endpoint {endpoint!r}: expected '*' or one of {', '.join(ENDPOINTS)}"
            )
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault, got {type(fault).__name__}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, got {probability}")
        if seed is not None and probability is None:
            raise ValueError("seed only makes sense with a probability")
        with self._lock:
            self._injections.append(_Injection(endpoint, fault, times, probability, seed))

    def clear(self) -> None:
        """Forget every injected fault."""
        with self._lock:
            self._injections.clear()

    def pick(self, endpoint: str) -> Fault | None:
        """The fault for this request to ``endpoint``, or ``None``; uses up a ``times`` slot."""
        with self._lock:
            for injection in self._injections:
                if injection.fires(endpoint):
                    if injection.remaining == 0:
                        self._injections.remove(injection)
                    return injection.fault
        return None
