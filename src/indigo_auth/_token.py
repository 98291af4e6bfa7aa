"""The token value, its lifetime, and the deadlines derived from it.

Deadlines are measured on the local monotonic clock from the moment a token
arrived, using the lifetime the server gave it (``exp - iat``): a client wall clock
that is minutes off, or that jumps, neither hands out a dead token nor starts a
storm of renewals.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from ._exceptions import IndigoProtocolError

__all__ = ["DEFAULT_LIFETIME", "MAX_LIFETIME", "Token", "TokenState", "parse_jwt_lifetime"]

#: What a token lives when it carries no ``exp``: Indigo's documented 30 minutes.
DEFAULT_LIFETIME = 1800.0
#: The longest lifetime believed (a ``1mo`` automation token, with room to spare).
MAX_LIFETIME = 32 * 86400.0
#: The share of the lifetime at most spent before renewing (renew at half-life at the latest).
_MAX_MARGIN_SHARE = 0.5
#: The hard floor: this close to expiry no token is handed out.
_FLOOR_SHARE = 0.1
_FLOOR_CAP = 30.0
#: How far in the future a stored token may say it arrived: machines sharing a store
#: disagree a little about the time. Further is a wall clock that jumped back.
_CLOCK_TOLERANCE = 30.0
#: Jitter on the renewal point, as a share of the margin, so a fleet does not renew in lockstep.
_JITTER_SHARE = 0.1


def _mask(value: str | None) -> str:
    return "None" if value is None else "'**********'"


@dataclass(frozen=True, slots=True)
class Claims:
    lifetime: float
    exp: float | None
    workspace_id: str | None


def parse_jwt_lifetime(token: str, *, wall_now: float | None = None) -> Claims:
    """Read ``exp``, ``iat`` and ``workspace_id`` from a JWT without verifying it.

    The client has no key: the signature is the server's business. Raises
    :class:`IndigoProtocolError` for a string that is not a JWT or a token that
    is dead on arrival.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            options={"verify_signature": False, "verify_exp": False, "verify_iat": False},
            algorithms=None,
        )
    except jwt.PyJWTError:
        raise IndigoProtocolError("the API answered with a token that is not a JWT") from None
    if not isinstance(claims, dict):  # pragma: no cover - PyJWT always returns a dict
        raise IndigoProtocolError("the API answered with a token that is not a JWT")
    exp = claims.get("exp")
    iat = claims.get("iat")
    workspace = claims.get("workspace_id")
    workspace_id = workspace if isinstance(workspace, str) and workspace else None
    if exp is None:
        return Claims(DEFAULT_LIFETIME, None, workspace_id)
    if not _is_number(exp):
        raise IndigoProtocolError("the API answered with a token whose exp is not a number")
    if iat is not None and _is_number(iat):
        lifetime = float(exp) - float(iat)
    else:
        lifetime = float(exp) - (time.time() if wall_now is None else wall_now)
    if lifetime <= 0:
        raise IndigoProtocolError("the API answered with a token that had already expired")
    return Claims(min(lifetime, MAX_LIFETIME), float(exp), workspace_id)


def _is_number(value: object) -> bool:
    """A finite number: not a bool, NaN, an infinity, or an int too large for a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True, slots=True)
class TokenState:
    """A token as a store keeps it between calls and between processes.

    ``received_at`` is the wall-clock time the token arrived; ``lifetime`` is what
    the server gave it. A process that reads the state computes what is left as
    ``lifetime - (now - received_at)``, so machines need roughly synchronised
    clocks (NTP), not the server's.

    Neither the password nor its digest is ever part of it.
    """

    token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    lifetime: float
    received_at: float
    workspace_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"TokenState(token={_mask(self.token)}, refresh_token={_mask(self.refresh_token)}, "
            f"lifetime={self.lifetime!r}, received_at={self.received_at!r}, "
            f"workspace_id={self.workspace_id!r})"
        )

    @property
    def expires_at(self) -> float:
        """Wall-clock expiry, as this machine sees it."""
        return self.received_at + self.lifetime

    def remaining(self, wall_now: float | None = None) -> float:
        now = time.time() if wall_now is None else wall_now
        elapsed = now - self.received_at
        if elapsed < -_CLOCK_TOLERANCE:
            # Received in the future: the wall clock jumped back since, so the age is
            # unknown. Taken for spent, not for new: a renewal, never a dead token.
            return 0.0
        return self.lifetime - max(0.0, elapsed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "refresh_token": self.refresh_token,
            "lifetime": self.lifetime,
            "received_at": self.received_at,
            "workspace_id": self.workspace_id,
        }

    @classmethod
    def from_dict(cls, data: object) -> TokenState | None:
        """The state in ``data``, or ``None`` where it is not a well-formed state."""
        if not isinstance(data, dict):
            return None
        token = data.get("token")
        refresh = data.get("refresh_token")
        lifetime = data.get("lifetime")
        received = data.get("received_at")
        workspace = data.get("workspace_id")
        if not isinstance(token, str) or not token:
            return None
        if refresh is not None and not isinstance(refresh, str):
            return None
        if not _is_number(lifetime) or not _is_number(received):
            return None
        if workspace is not None and not isinstance(workspace, str):
            return None
        assert isinstance(lifetime, (int, float))
        assert isinstance(received, (int, float))
        if not 0 < lifetime <= MAX_LIFETIME:
            return None
        return cls(token, refresh, float(lifetime), float(received), workspace)


@dataclass(frozen=True, slots=True)
class Token:
    """A token in the hands of one manager, with its deadlines on the monotonic clock.

    - ``refresh_at``: from here a renewal starts (in the background where possible);
      the token is still handed out.
    - ``floor_at``: from here the token is no longer handed out: callers wait for
      the renewal.
    - ``expires_at``: the server's expiry, mapped onto the monotonic clock.
    """

    value: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    workspace_id: str | None
    lifetime: float
    expires_at: float
    floor_at: float
    refresh_at: float
    state: TokenState = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Token(value={_mask(self.value)}, refresh_token={_mask(self.refresh_token)}, "
            f"workspace_id={self.workspace_id!r}, lifetime={self.lifetime!r})"
        )

    @classmethod
    def from_state(
        cls,
        state: TokenState,
        *,
        refresh_margin: float,
        monotonic_now: float,
        wall_now: float | None = None,
        rng: random.Random | None = None,
    ) -> Token:
        """Map a stored state onto the monotonic clock, with this manager's margins."""
        lifetime = state.lifetime
        remaining = min(state.remaining(wall_now), lifetime)
        expires_at = monotonic_now + remaining
        floor = min(lifetime * _FLOOR_SHARE, _FLOOR_CAP)
        margin = max(min(refresh_margin, lifetime * _MAX_MARGIN_SHARE), floor)
        jitter = (rng or random).uniform(0.0, margin * _JITTER_SHARE) if margin > floor else 0.0
        return cls(
            value=state.token,
            refresh_token=state.refresh_token,
            workspace_id=state.workspace_id,
            lifetime=lifetime,
            expires_at=expires_at,
            floor_at=expires_at - floor,
            refresh_at=expires_at - margin - jitter,
            state=state,
        )
