"""The Indigo sign-in as a user writes it by hand (for the peers that have no Indigo client)."""

from __future__ import annotations

import hashlib

import httpx
import jwt

from servers import PASSWORD

__all__ = ["sign_in"]

_DIGEST = hashlib.md5(PASSWORD.encode(), usedforsecurity=False).hexdigest()


async def sign_in(client: httpx.AsyncClient, url: str, email: str) -> tuple[str, float]:
    """``POST /user/signin``; the token and its ``exp`` (wall clock)."""
    response = await client.post(
        url + "/user/signin",
        json={"email": email, "password": _DIGEST},
        headers={"Accept": "application/json"},
    )
    response.raise_for_status()
    token = str(response.json()["data"]["token"])
    claims = jwt.decode(token, options={"verify_signature": False})
    return token, float(claims["exp"])
