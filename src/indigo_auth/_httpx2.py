"""The base class that makes the managers an auth for httpx and, where installed, httpx2.

httpx2 (the maintained fork of httpx) keeps httpx's auth protocol, ``sync_auth_flow``
and ``async_auth_flow`` generators over requests and responses with the same
attributes, but takes as an auth only an instance of its own ``httpx2.Auth``
(anything else that is callable it wraps as a plain function). Where httpx2 can be
imported, the managers therefore derive from both ``Auth`` classes; where it
cannot, from httpx's alone. No flow changes: the managers' flows only read
``request.url``, set ``request.headers`` and look at ``response.status_code``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import httpx

__all__ = ["AuthBase", "httpx2_available"]


def _auth_base() -> type[httpx.Auth]:
    try:
        httpx2 = importlib.import_module("httpx2")
    except ImportError:
        return httpx.Auth
    other = getattr(httpx2, "Auth", None)
    # After httpx2.alias_httpx() the two names are one module: nothing to add.
    if not isinstance(other, type) or issubclass(httpx.Auth, other):
        return httpx.Auth

    class Auth(httpx.Auth, other):  # type: ignore[misc, valid-type]
        """``httpx.Auth`` and ``httpx2.Auth`` at once."""

    Auth.__module__ = __name__
    return Auth


if TYPE_CHECKING:
    AuthBase = httpx.Auth
else:
    AuthBase = _auth_base()


def httpx2_available() -> bool:
    """Whether the managers are also an auth for httpx2 clients in this process."""
    return AuthBase is not httpx.Auth
