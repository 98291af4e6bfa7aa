"""The Indigo endpoints the manager calls, and the envelope every answer comes in.

Each function makes one HTTP request and returns the envelope's ``data`` in a typed
form, or raises a typed error. Retries are not done here (see ``_retry``).

Classification follows the HTTP status and the envelope's ``status.http_code``
(an error inside an HTTP 200 is an error); the error-code strings are not
published, so they are kept for the user to read, never branched on.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._exceptions import (
    IndigoAPIError,
    IndigoAuthError,
    IndigoProtocolError,
    IndigoUnavailableError,
    InvalidCredentialsError,
    RateLimitedError,
)

__all__ = [
    "AUTOMATION_PERIODS",
    "DEFAULT_BASE_URL",
    "DEFAULT_LAUNCHER_URL",
    "MAX_BODY_BYTES",
    "TRANSIENT_STATUSES",
    "IndigoAPI",
    "SignedIn",
    "Workspace",
    "md5_hex",
    "normalize_base_url",
    "parse_retry_after",
]

DEFAULT_BASE_URL = "https://api.indigobrowser.com"
DEFAULT_LAUNCHER_URL = "https://launcher.indigobrowser.com:45011"
AUTOMATION_PERIODS = ("1h", "3h", "5h", "16h", "24h", "48h", "1w", "2w", "3w", "1mo", "no_exp")
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The largest answer read from the token endpoints; a larger one is a protocol error.
MAX_BODY_BYTES = 1024 * 1024
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def md5_hex(password: str) -> str:
    """The form in which Indigo takes a password: the lowercase MD5 hex digest."""
    return hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()


def normalize_base_url(base_url: str, *, allow_insecure: bool = False) -> str:
    """Check a base URL and return it without a trailing slash.

    A URL without a scheme (as the vendor's sample writes it) is completed with
    ``https://``. Plain ``http://`` is refused unless it points at loopback (the
    emulator) or ``allow_insecure`` is set.
    """
    text = base_url.strip()
    if not text:
        raise ValueError("base_url is empty")
    if "://" not in text:
        text = "https://" + text
    url = httpx.URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if url.userinfo:
        raise ValueError("base_url must not carry credentials")
    if url.scheme == "http" and url.host not in _LOOPBACK_HOSTS and not allow_insecure:
        raise ValueError(
            "base_url uses plain http:// to a host that is not loopback; the token would "
            "travel unencrypted (pass allow_insecure=True to do it anyway)"
        )
    return str(url.copy_with(query=None, fragment=None)).rstrip("/")


def parse_retry_after(value: str | None, *, wall_now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        now = time.time() if wall_now is None else wall_now
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class Workspace:
    """A workspace the account belongs to, as ``GET /user/workspaces`` lists it."""

    workspace_id: str
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class SignedIn:
    """What sign-in and refresh hand back."""

    token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)


def _envelope_status(body: object) -> tuple[int | None, str, str]:
    if not isinstance(body, dict):
        return None, "", ""
    status = body.get("status")
    if not isinstance(status, dict):
        return None, "", ""
    code = status.get("http_code")
    error_code = status.get("error_code")
    message = status.get("message")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        error_code if isinstance(error_code, str) else "",
        message if isinstance(message, str) else "",
    )


class IndigoAPI:
    """The token endpoints of one Indigo API base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def _request(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        what: str,
        json_body: dict[str, Any] | None = None,
        bearer: str | None = None,
        params: dict[str, str] | None = None,
        refused: type[IndigoAuthError] = IndigoAPIError,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        url = f"{self.base_url}{path}"
        try:
            # Never follow a redirect, even with a client that does: it would carry the
            # body (the password's digest, the refresh token) to wherever it points.
            async with client.stream(
                method,
                url,
                headers=headers,
                json=json_body,
                params=params,
                follow_redirects=False,
            ) as response:
                raw = await _read_bounded(response)
        except httpx.TimeoutException as exc:
            raise IndigoUnavailableError(f"{what}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise IndigoUnavailableError(
                f"{what}: connection failed ({type(exc).__name__})"
            ) from None
        return _parse(response, raw, what=what, refused=refused)

    async def sign_in(self, client: httpx.AsyncClient, email: str, password_md5: str) -> SignedIn:
        data = await self._request(
            client,
            "POST",
            "/user/signin",
            what="sign-in",
            json_body={"email": email, "password": password_md5},
            refused=InvalidCredentialsError,
        )
        return _signed_in(data, what="sign-in")

    async def refresh(
        self,
        client: httpx.AsyncClient,
        email: str,
        refresh_token: str,
        workspace_id: str,
    ) -> SignedIn:
        data = await self._request(
            client,
            "POST",
            "/user/refresh_token",
            what="refresh",
            json_body={
                "email": email,
                "refresh_token": refresh_token,
                "workspace_id": workspace_id,
            },
        )
        return _signed_in(data, what="refresh")

    async def automation_token(self, client: httpx.AsyncClient, bearer: str, period: str) -> str:
        data = await self._request(
            client,
            "GET",
            "/workspace/automation_token",
            what="automation token",
            bearer=bearer,
            params={"expiration_period": period},
        )
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise IndigoProtocolError("automation token: the answer carries no token")
        return token

    async def workspaces(self, client: httpx.AsyncClient, bearer: str) -> list[Workspace]:
        data = await self._request(
            client, "GET", "/user/workspaces", what="workspaces", bearer=bearer
        )
        items = data.get("workspaces") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise IndigoProtocolError("workspaces: the answer carries no list of workspaces")
        result = []
        for item in items:
            if not isinstance(item, dict):
                raise IndigoProtocolError("workspaces: an entry is not an object")
            workspace_id = item.get("workspace_id")
            name = item.get("name", "")
            role = item.get("role", "")
            if not isinstance(workspace_id, str) or not workspace_id:
                raise IndigoProtocolError("workspaces: an entry has no workspace_id")
            result.append(
                Workspace(
                    workspace_id,
                    name if isinstance(name, str) else str(name),
                    role if isinstance(role, str) else str(role),
                )
            )
        return result

    async def revoke(
        self,
        client: httpx.AsyncClient,
        bearer: str,
        *,
        token: str | None = None,
        is_automation: bool = False,
    ) -> None:
        body = None if token is None else {"token": token, "is_automation": is_automation}
        await self._request(
            client, "POST", "/user/revoke_tokens", what="revoke", bearer=bearer, json_body=body
        )


async def _read_bounded(response: httpx.Response) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return b""  # too large: the parser reports it from the status and the length
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise IndigoProtocolError(f"the answer is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(
    response: httpx.Response, raw: bytes, *, what: str, refused: type[IndigoAuthError]
) -> Any:
    http_status = response.status_code
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise IndigoProtocolError(
            f"{what}: the answer is larger than {MAX_BODY_BYTES} bytes", status_code=http_status
        )
    body: object = None
    parsed = False
    if raw:
        try:
            body = json.loads(raw)
            parsed = True
        except (ValueError, UnicodeDecodeError):
            parsed = False
    envelope_code, error_code, message = _envelope_status(body)
    status = http_status
    if status < 400 and envelope_code is not None and envelope_code >= 400:
        status = envelope_code

    if 300 <= status < 400:
        raise IndigoProtocolError(
            f"{what}: the API answered with a redirect, which is not followed",
            status_code=status,
        )
    if status >= 400:
        text = message or f"{what} failed"
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimitedError(
                f"{what}: rate limited: {text}",
                status_code=status,
                error_code=error_code,
                retry_after=retry_after,
            )
        if status in TRANSIENT_STATUSES or status >= 500:
            raise IndigoUnavailableError(
                f"{what}: the API is failing: {text}", status_code=status, error_code=error_code
            )
        if status in (401, 403):
            raise refused(f"{what} refused: {text}", status_code=status, error_code=error_code)
        raise IndigoAPIError(f"{what}: {text}", status_code=status, error_code=error_code)

    if not parsed:
        kind = "an empty body" if not raw else "a body that is not JSON"
        raise IndigoProtocolError(f"{what}: the API answered with {kind}", status_code=status)
    if not isinstance(body, dict) or "data" not in body or envelope_code is None:
        raise IndigoProtocolError(
            f"{what}: the answer is not the documented envelope", status_code=status
        )
    return body["data"]


def _signed_in(data: object, *, what: str) -> SignedIn:
    if not isinstance(data, dict):
        raise IndigoProtocolError(f"{what}: the answer carries no token")
    token = data.get("token")
    refresh_token = data.get("refresh_token")
    if not isinstance(token, str) or not token:
        raise IndigoProtocolError(f"{what}: the answer carries no token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise IndigoProtocolError(f"{what}: the refresh token is not a string")
    return SignedIn(token, refresh_token)
