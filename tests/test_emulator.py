"""The emulator's endpoints, tokens, rate limits and counters, driven in process."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import jwt
import pytest

import indigo_auth.testing
from indigo_auth.testing import Account, Counters, Fault, IndigoEmulator

EMAIL = "bot@example.com"
PASSWORD = "s3cret"
PERIODS = {
    "1h": 3600,
    "3h": 3 * 3600,
    "5h": 5 * 3600,
    "16h": 16 * 3600,
    "24h": 86400,
    "48h": 2 * 86400,
    "1w": 7 * 86400,
    "2w": 14 * 86400,
    "3w": 21 * 86400,
    "1mo": 30 * 86400,
}


def md5(password: str) -> str:
    return hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def client_for(emu: IndigoEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://indigo.test") as c:
        yield c


async def sign_in(
    c: httpx.AsyncClient, email: str = EMAIL, password: str = PASSWORD
) -> dict[str, Any]:
    r = await c.post("/user/signin", json={"email": email, "password": md5(password)})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(r: httpx.Response, status: int, error_code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["data"] is None
    assert body["status"]["http_code"] == status
    assert body["status"]["error_code"]
    assert body["status"]["message"]
    if error_code is not None:
        assert body["status"]["error_code"] == error_code


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# --- the package ----------------------------------------------------------------


def test_public_names() -> None:
    assert indigo_auth.testing.__all__ == [
        "Account",
        "Counters",
        "Fault",
        "IndigoEmulator",
        "run_emulator",
    ]


def test_accounts_keep_only_the_digest() -> None:
    emu = IndigoEmulator()
    account = emu.add_account("ops@example.com", "hunter2", workspaces=[("Team", "manager")])
    assert isinstance(account, Account)
    assert account.email == "ops@example.com"
    assert [(name, role) for _, name, role in account.workspaces] == [
        ("ops's workspace", "owner"),
        ("Team", "manager"),
    ]
    assert account.default_workspace_id == account.workspaces[0][0]
    assert emu.account("ops@example.com") is account
    assert "hunter2" not in repr(account)
    assert "hunter2" not in repr(emu._accounts)
    with pytest.raises(ValueError, match="already exists"):
        emu.add_account("ops@example.com", "other")


# --- sign-in --------------------------------------------------------------------


@pytest.mark.anyio
async def test_signin_issues_a_jwt_and_a_refresh_token() -> None:
    clock = FakeClock()
    emu = IndigoEmulator({EMAIL: PASSWORD}, token_lifetime=1800, clock=clock)
    async with client_for(emu) as c:
        r = await c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"]["error_code"] == ""
    assert body["status"]["http_code"] == 200
    token, refresh = body["data"]["token"], body["data"]["refresh_token"]
    assert isinstance(refresh, str)
    assert len(refresh) >= 32
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    got = emu.decode(token)
    assert got["sub"] == EMAIL
    assert got["workspace_id"] == emu.account(EMAIL).default_workspace_id
    assert got["iat"] == 1_700_000_000
    assert got["exp"] == 1_700_001_800
    assert "is_automation" not in got
    assert emu.is_valid(token)
    assert emu.counters.sign_ins == 1
    assert emu.counters.tokens_issued == 1


@pytest.mark.anyio
async def test_every_token_is_unique() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None, clock=FakeClock())
    async with client_for(emu) as c:
        results = [await sign_in(c) for _ in range(5)]
    assert len({r["token"] for r in results}) == 5
    assert len({emu.decode(r["token"])["jti"] for r in results}) == 5
    assert len({r["refresh_token"] for r in results}) == 5


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("email", "password"),
    [
        (EMAIL, md5("wrong")),
        ("nobody@example.com", md5(PASSWORD)),
        (EMAIL, PASSWORD),  # the plain password instead of its digest
        (EMAIL, md5(PASSWORD).upper()),
    ],
)
async def test_signin_refuses_wrong_credentials(email: str, password: str) -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        r = await c.post("/user/signin", json={"email": email, "password": password})
    assert_error(r, 401, "INVALID_CREDENTIALS")
    assert emu.counters.refusals == 1
    assert emu.counters.sign_ins == 0
    assert emu.counters.unauthorized == 0  # sign-in needs no bearer


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        b'{"email": "bot@example.com"}',
        b'{"email": 1, "password": "x"}',
        b"",
    ],
)
async def test_signin_refuses_bad_bodies(content: bytes) -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        r = await c.post("/user/signin", content=content)
    assert_error(r, 400, "BAD_REQUEST")


@pytest.mark.anyio
async def test_unknown_paths_and_wrong_methods() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        missing = await c.get("/user/nothing")
        wrong = await c.get("/user/signin")
        wrong_post = await c.post("/workspace/folders")
    assert_error(missing, 404, "NOT_FOUND")
    assert_error(wrong, 405, "METHOD_NOT_ALLOWED")
    assert wrong.headers["allow"] == "POST"
    assert_error(wrong_post, 405)
    assert emu.counters.requests == {"unknown": 1, "signin": 1, "folders": 1}


# --- refresh --------------------------------------------------------------------


@pytest.mark.anyio
async def test_refresh_rotates_and_is_single_use() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, clock=FakeClock())
    workspace = emu.account(EMAIL).default_workspace_id
    async with client_for(emu) as c:
        first = await sign_in(c)
        body = {"email": EMAIL, "refresh_token": first["refresh_token"], "workspace_id": workspace}
        r = await c.post("/user/refresh_token", json=body)
        assert r.status_code == 200, r.text
        second = r.json()["data"]
        assert second["refresh_token"] != first["refresh_token"]
        assert second["token"] != first["token"]
        assert emu.decode(second["token"])["workspace_id"] == workspace

        again = await c.post("/user/refresh_token", json=body)
        assert_error(again, 401)

        body["refresh_token"] = second["refresh_token"]
        third = await c.post("/user/refresh_token", json=body)
        assert third.status_code == 200
    assert emu.counters.refreshes == 2
    assert emu.counters.tokens_issued == 3
    assert emu.counters.refusals == 1


@pytest.mark.anyio
async def test_refresh_switches_workspace() -> None:
    emu = IndigoEmulator()
    account = emu.add_account(EMAIL, PASSWORD, workspaces=[("Team", "manager")])
    team = account.workspaces[1][0]
    async with client_for(emu) as c:
        first = await sign_in(c)
        assert emu.decode(first["token"])["workspace_id"] == account.default_workspace_id
        body = {"email": EMAIL, "refresh_token": first["refresh_token"], "workspace_id": team}
        r = await c.post("/user/refresh_token", json=body)
        assert r.status_code == 200
        token = r.json()["data"]["token"]
        assert emu.decode(token)["workspace_id"] == team
        restrictions = await c.get("/workspace/restrictions", headers=bearer(token))
        assert restrictions.json()["data"]["workspace_id"] == team


@pytest.mark.anyio
async def test_refresh_refuses_a_foreign_workspace_without_using_the_token() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD, "other@example.com": "pw"})
    foreign = emu.account("other@example.com").default_workspace_id
    async with client_for(emu) as c:
        first = await sign_in(c)
        body = {"email": EMAIL, "refresh_token": first["refresh_token"], "workspace_id": foreign}
        r = await c.post("/user/refresh_token", json=body)
        assert_error(r, 403)
        body["workspace_id"] = emu.account(EMAIL).default_workspace_id
        assert (await c.post("/user/refresh_token", json=body)).status_code == 200
    assert emu.counters.refusals == 1


@pytest.mark.anyio
async def test_refresh_refuses_unknown_and_other_accounts_tokens() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD, "other@example.com": "pw"})
    workspace = emu.account(EMAIL).default_workspace_id
    async with client_for(emu) as c:
        other = await sign_in(c, "other@example.com", "pw")
        for refresh in ("made-up", other["refresh_token"]):
            body = {"email": EMAIL, "refresh_token": refresh, "workspace_id": workspace}
            assert_error(await c.post("/user/refresh_token", json=body), 401)
        nobody = {"email": "x@example.com", "refresh_token": "x", "workspace_id": workspace}
        assert_error(await c.post("/user/refresh_token", json=nobody), 401)
        partial = {"email": EMAIL, "refresh_token": other["refresh_token"]}
        assert_error(await c.post("/user/refresh_token", json=partial), 400)


@pytest.mark.anyio
async def test_refresh_tokens_expire() -> None:
    clock = FakeClock()
    emu = IndigoEmulator({EMAIL: PASSWORD}, refresh_token_lifetime=100.0, clock=clock)
    workspace = emu.account(EMAIL).default_workspace_id
    async with client_for(emu) as c:
        first = await sign_in(c)
        clock.advance(100.0)
        body = {"email": EMAIL, "refresh_token": first["refresh_token"], "workspace_id": workspace}
        assert_error(await c.post("/user/refresh_token", json=body), 401)


# --- automation tokens ------------------------------------------------------------


@pytest.mark.anyio
async def test_automation_token_periods() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None, clock=FakeClock())
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        for period, seconds in PERIODS.items():
            r = await c.get(
                "/workspace/automation_token",
                params={"expiration_period": period},
                headers=bearer(token),
            )
            assert r.status_code == 200, r.text
            got = emu.decode(r.json()["data"]["token"])
            assert got["is_automation"] is True
            assert got["exp"] - got["iat"] == seconds, period
            assert got["sub"] == EMAIL
        r = await c.get(
            "/workspace/automation_token",
            params={"expiration_period": "no_exp"},
            headers=bearer(token),
        )
        forever = r.json()["data"]["token"]
        assert "exp" not in emu.decode(forever)
        assert emu.is_valid(forever)
        default = await c.get("/workspace/automation_token", headers=bearer(token))
        got = emu.decode(default.json()["data"]["token"])
        assert got["exp"] - got["iat"] == 86400
        assert got["workspace_id"] == emu.decode(token)["workspace_id"]
    assert emu.counters.automation_tokens_issued == len(PERIODS) + 2
    assert emu.counters.tokens_issued == 1


@pytest.mark.anyio
@pytest.mark.parametrize("period", ["2h", "", "24H", "forever"])
async def test_automation_token_refuses_unknown_periods(period: str) -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get(
            "/workspace/automation_token",
            params={"expiration_period": period},
            headers=bearer(token),
        )
    assert_error(r, 400)


@pytest.mark.anyio
async def test_automation_token_needs_the_plan() -> None:
    emu = IndigoEmulator()
    emu.add_account(EMAIL, PASSWORD, automation=False)
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get("/workspace/automation_token", headers=bearer(token))
        assert_error(r, 403, "AUTOMATION_NOT_AVAILABLE")
        restrictions = await c.get("/workspace/restrictions", headers=bearer(token))
        assert restrictions.json()["data"]["automation_available"] is False
    assert emu.counters.refusals == 1
    assert emu.counters.automation_tokens_issued == 0


@pytest.mark.anyio
async def test_automation_tokens_work_as_bearers() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get("/workspace/automation_token", headers=bearer(token))
        automation = r.json()["data"]["token"]
        folders = await c.get("/workspace/folders", headers=bearer(automation))
        assert folders.status_code == 200


# --- workspaces, restrictions, folders --------------------------------------------


@pytest.mark.anyio
async def test_workspaces() -> None:
    emu = IndigoEmulator()
    account = emu.add_account(EMAIL, PASSWORD, workspaces=[("Team", "manager"), ("Ops", "user")])
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get("/user/workspaces", headers=bearer(token))
    data = r.json()["data"]
    assert data["total_count"] == 3
    assert [(w["workspace_id"], w["name"], w["role"]) for w in data["workspaces"]] == list(
        account.workspaces
    )


@pytest.mark.anyio
async def test_restrictions_reflect_the_limits() -> None:
    clock = FakeClock()
    emu = IndigoEmulator(
        {EMAIL: PASSWORD},
        rate_limit=7,
        automation_rate_limit=70,
        rate_window=30.0,
        clock=clock,
    )
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get("/workspace/restrictions", headers=bearer(token))
        data = r.json()["data"]
        assert data["automation_available"] is True
        assert data["expires_at"] == int(clock.now) + 365 * 86400
        assert data["ratelimit"] == [{"limit_size": 7, "operation": "all", "window_size": "30s"}]

        auto = await c.get("/workspace/automation_token", headers=bearer(token))
        automation = auto.json()["data"]["token"]
        r = await c.get("/workspace/restrictions", headers=bearer(automation))
        assert r.json()["data"]["ratelimit"][0]["limit_size"] == 70

        emu.rate_limit = None
        r = await c.get("/workspace/restrictions", headers=bearer(token))
        assert r.json()["data"]["ratelimit"] == []


@pytest.mark.anyio
async def test_folders() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get("/workspace/folders", headers=bearer(token))
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["total_count"] == len(data["folders"]) >= 2
    assert all(isinstance(f["folder_id"], str) and f["name"] for f in data["folders"])


# --- bearers ----------------------------------------------------------------------

PROTECTED = [
    ("GET", "/workspace/automation_token"),
    ("GET", "/user/workspaces"),
    ("POST", "/user/revoke_tokens"),
    ("GET", "/workspace/restrictions"),
    ("GET", "/workspace/folders"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_endpoints_refuse_bad_bearers(method: str, path: str) -> None:
    clock = FakeClock()
    emu = IndigoEmulator({EMAIL: PASSWORD}, token_lifetime=60.0, rate_limit=None, clock=clock)
    impostor = IndigoEmulator({EMAIL: PASSWORD})
    good = emu.issue_token(EMAIL)
    header, payload, signature = good.split(".")
    tampered_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b"bot@", b"bob@")
    ).decode()
    revoked = emu.issue_token(EMAIL)
    emu.revoke_all(EMAIL)
    expired = emu.issue_token(EMAIL, lifetime=1.0)
    clock.advance(1.0)
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "UNAUTHORIZED_REQUEST"),
        ({"Authorization": "Basic Ym90OnMzY3JldA=="}, "UNAUTHORIZED_REQUEST"),
        ({"Authorization": "Bearer"}, "UNAUTHORIZED_REQUEST"),
        (bearer("not-a-jwt"), "UNAUTHORIZED_REQUEST"),
        (bearer(impostor.issue_token(EMAIL)), "UNAUTHORIZED_REQUEST"),
        (bearer(f"{header}.{tampered_payload}.{signature}"), "UNAUTHORIZED_REQUEST"),
        (bearer(revoked), "TOKEN_REVOKED"),
        (bearer(expired), "TOKEN_EXPIRED"),
    ]
    async with client_for(emu) as c:
        for headers, error_code in cases:
            r = await c.request(method, path, headers=headers)
            assert_error(r, 401, error_code)
        fresh = emu.issue_token(EMAIL)
        assert (await c.request(method, path, headers=bearer(fresh))).status_code == 200
    assert emu.counters.unauthorized == len(cases)
    assert emu.counters.refusals == len(cases)


@pytest.mark.anyio
async def test_a_one_second_token_lives_one_second() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, token_lifetime=1.0)
    async with client_for(emu) as c:
        before = time.time()
        token = (await sign_in(c))["token"]
        got = emu.decode(token)
        assert got["exp"] - got["iat"] == pytest.approx(1.0)
        assert got["exp"] <= time.time() + 1.0
        assert got["exp"] >= before + 1.0 - 0.001
        assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
        await anyio.sleep(max(0.0, got["exp"] - time.time()) + 0.05)
        r = await c.get("/workspace/folders", headers=bearer(token))
        assert_error(r, 401, "TOKEN_EXPIRED")
    assert not emu.is_valid(token)


@pytest.mark.anyio
async def test_token_lifetime_can_change_at_any_time() -> None:
    clock = FakeClock()
    emu = IndigoEmulator({EMAIL: PASSWORD}, clock=clock)
    emu.token_lifetime = 2.5
    async with client_for(emu) as c:
        got = emu.decode((await sign_in(c))["token"])
    assert got["exp"] - got["iat"] == 2.5


@pytest.mark.anyio
@pytest.mark.parametrize("skew", [3600.0, -3600.0])
async def test_a_skewed_server_clock(skew: float) -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, token_lifetime=5.0, clock=lambda: time.time() + skew)
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        got = claims(token)
        # The claims follow the server's clock, not the client's.
        assert got["iat"] - time.time() == pytest.approx(skew, abs=5)
        assert got["exp"] - got["iat"] == 5.0
        assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
        # The server's clock jumps: the token dies at once.
        emu.clock = lambda: time.time() + skew + 10
        assert_error(await c.get("/workspace/folders", headers=bearer(token)), 401, "TOKEN_EXPIRED")


# --- revocation -------------------------------------------------------------------


@pytest.mark.anyio
async def test_revoke_one_token() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        first = (await sign_in(c))["token"]
        second = (await sign_in(c))["token"]
        r = await c.post(
            "/user/revoke_tokens",
            json={"token": first, "is_automation": False},
            headers=bearer(second),
        )
        assert r.status_code == 200
        assert r.json()["data"] is None
        assert_error(await c.get("/workspace/folders", headers=bearer(first)), 401, "TOKEN_REVOKED")
        assert (await c.get("/workspace/folders", headers=bearer(second))).status_code == 200
    assert not emu.is_valid(first)
    assert emu.is_valid(second)
    assert emu.counters.revocations == 1


@pytest.mark.anyio
async def test_revoke_one_automation_token() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get(
            "/workspace/automation_token",
            params={"expiration_period": "no_exp"},
            headers=bearer(token),
        )
        automation = r.json()["data"]["token"]
        r = await c.post(
            "/user/revoke_tokens",
            json={"token": automation, "is_automation": True},
            headers=bearer(token),
        )
        assert r.status_code == 200
    assert not emu.is_valid(automation)
    assert emu.is_valid(token)


@pytest.mark.anyio
@pytest.mark.parametrize("content", [b"", b"{}", b'{"token": null}'])
async def test_revoke_everything(content: bytes) -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD, "other@example.com": "pw"})
    workspace = emu.account(EMAIL).default_workspace_id
    async with client_for(emu) as c:
        first = await sign_in(c)
        second = await sign_in(c)
        other = await sign_in(c, "other@example.com", "pw")
        r = await c.get("/workspace/automation_token", headers=bearer(first["token"]))
        automation = r.json()["data"]["token"]
        r = await c.post("/user/revoke_tokens", content=content, headers=bearer(second["token"]))
        assert r.status_code == 200, r.text
        assert r.json() == {
            "status": {"error_code": "", "http_code": 200, "message": "Tokens revoked"},
            "data": None,
        }
        for token in (first["token"], second["token"], automation):
            assert not emu.is_valid(token)
        for refresh in (first["refresh_token"], second["refresh_token"]):
            body = {"email": EMAIL, "refresh_token": refresh, "workspace_id": workspace}
            assert_error(await c.post("/user/refresh_token", json=body), 401)
        assert emu.is_valid(other["token"])
        # A new sign-in works, and its token is good.
        assert emu.is_valid((await sign_in(c))["token"])


@pytest.mark.anyio
async def test_revoke_refuses_foreign_and_forged_tokens() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD, "other@example.com": "pw"})
    async with client_for(emu) as c:
        mine = (await sign_in(c))["token"]
        theirs = (await sign_in(c, "other@example.com", "pw"))["token"]
        r = await c.post("/user/revoke_tokens", json={"token": theirs}, headers=bearer(mine))
        assert_error(r, 403)
        forged = IndigoEmulator({EMAIL: PASSWORD}).issue_token(EMAIL)
        r = await c.post("/user/revoke_tokens", json={"token": forged}, headers=bearer(mine))
        assert_error(r, 400)
        r = await c.post(
            "/user/revoke_tokens", json={"token": mine, "is_automation": "no"}, headers=bearer(mine)
        )
        assert_error(r, 400)
    assert emu.is_valid(theirs)
    assert emu.is_valid(mine)


@pytest.mark.anyio
async def test_revoke_all_from_another_client() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    workspace = emu.account(EMAIL).default_workspace_id
    async with client_for(emu) as c:
        session = await sign_in(c)
        emu.revoke_all(EMAIL)
        r = await c.get("/workspace/folders", headers=bearer(session["token"]))
        assert_error(r, 401, "TOKEN_REVOKED")
        body = {
            "email": EMAIL,
            "refresh_token": session["refresh_token"],
            "workspace_id": workspace,
        }
        assert_error(await c.post("/user/refresh_token", json=body), 401)
    assert emu.counters.revocations == 1


# --- direct helpers ---------------------------------------------------------------


def test_issue_token_and_decode() -> None:
    clock = FakeClock()
    emu = IndigoEmulator(clock=clock)
    account = emu.add_account(EMAIL, PASSWORD, workspaces=[("Team", "owner")])
    token = emu.issue_token(EMAIL, workspace_id=account.workspaces[1][0], lifetime=2.0)
    got = emu.decode(token)
    assert got["workspace_id"] == account.workspaces[1][0]
    assert got["exp"] - got["iat"] == 2.0
    assert emu.is_valid(token)
    clock.advance(1.999)
    assert emu.is_valid(token)
    clock.advance(0.001)
    assert not emu.is_valid(token)
    assert emu.decode(token)["sub"] == EMAIL  # expired tokens still decode
    assert emu.counters.tokens_issued == 0  # direct mints are not counted
    with pytest.raises(ValueError, match="not a workspace"):
        emu.issue_token(EMAIL, workspace_id="nope")
    with pytest.raises(KeyError):
        emu.issue_token("nobody@example.com")
    with pytest.raises(jwt.InvalidTokenError):
        emu.decode(IndigoEmulator({EMAIL: PASSWORD}).issue_token(EMAIL))
    assert not emu.is_valid("garbage")


def test_fractional_clock_keeps_the_exact_lifetime() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, clock=FakeClock(1_700_000_000.4567))
    got = emu.decode(emu.issue_token(EMAIL, lifetime=1.0))
    assert got["iat"] == 1_700_000_000.456
    assert got["exp"] == 1_700_000_001.456


# --- rate limits ------------------------------------------------------------------


@pytest.mark.anyio
async def test_rate_limit_answers_429_with_retry_after() -> None:
    clock = FakeClock()
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=3, rate_window=60.0, clock=clock)
    token = emu.issue_token(EMAIL)
    async with client_for(emu) as c:
        for _ in range(3):
            assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
        r = await c.get("/workspace/folders", headers=bearer(token))
        assert_error(r, 429, "RATE_LIMITED")
        assert r.headers["retry-after"] == "60"
        clock.advance(30.0)
        r = await c.get("/workspace/folders", headers=bearer(token))
        assert r.headers["retry-after"] == "30"
        clock.advance(29.5)
        r = await c.get("/workspace/folders", headers=bearer(token))
        assert r.headers["retry-after"] == "1"  # never 0
        clock.advance(0.5)
        assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
    assert emu.counters.rate_limited == 3


@pytest.mark.anyio
async def test_sign_ins_and_refreshes_count_against_the_account() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD, "other@example.com": "pw"}, rate_limit=2)
    async with client_for(emu) as c:
        session = await sign_in(c)
        body = {
            "email": EMAIL,
            "refresh_token": session["refresh_token"],
            "workspace_id": emu.account(EMAIL).default_workspace_id,
        }
        assert (await c.post("/user/refresh_token", json=body)).status_code == 200
        r = await c.post("/user/signin", json={"email": EMAIL, "password": md5(PASSWORD)})
        assert_error(r, 429)
        # Another account has a budget of its own.
        await sign_in(c, "other@example.com", "pw")


@pytest.mark.anyio
async def test_automation_tokens_have_their_own_limit() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=2, automation_rate_limit=3)
    async with client_for(emu) as c:
        token = (await sign_in(c))["token"]
        r = await c.get("/workspace/automation_token", headers=bearer(token))
        automation = r.json()["data"]["token"]
        assert_error(await c.get("/workspace/folders", headers=bearer(token)), 429)
        for _ in range(3):
            assert (
                await c.get("/workspace/folders", headers=bearer(automation))
            ).status_code == 200
        assert_error(await c.get("/workspace/folders", headers=bearer(automation)), 429)


@pytest.mark.anyio
async def test_rate_limit_none_turns_it_off() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    token = emu.issue_token(EMAIL)
    async with client_for(emu) as c:
        for _ in range(120):
            assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
    assert emu.counters.rate_limited == 0


@pytest.mark.anyio
async def test_rate_limit_can_change_at_any_time() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None, clock=FakeClock())
    token = emu.issue_token(EMAIL)
    async with client_for(emu) as c:
        assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
        emu.rate_limit = 1
        assert (await c.get("/workspace/folders", headers=bearer(token))).status_code == 200
        assert_error(await c.get("/workspace/folders", headers=bearer(token)), 429)


@pytest.mark.anyio
async def test_concurrent_requests() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    tokens: list[str] = []
    async with client_for(emu) as c:

        async def one() -> None:
            tokens.append((await sign_in(c))["token"])

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
    assert len(set(tokens)) == 50
    assert emu.counters.sign_ins == 50


# --- counters ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_counters() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=6)
    workspace = emu.account(EMAIL).default_workspace_id
    async with client_for(emu) as c:
        session = await sign_in(c)  # 1
        await c.post("/user/signin", json={"email": EMAIL, "password": "x"})  # 2: refused
        body = {
            "email": EMAIL,
            "refresh_token": session["refresh_token"],
            "workspace_id": workspace,
        }
        r = await c.post("/user/refresh_token", json=body)  # 3
        token = r.json()["data"]["token"]
        await c.get("/workspace/automation_token", headers=bearer(token))  # 4
        await c.get("/workspace/folders")  # no bearer: not counted against the limit
        emu.inject("folders", Fault.status(500), times=1)
        await c.get("/workspace/folders", headers=bearer(token))  # a fault takes no slot
        await c.post("/user/revoke_tokens", json={"token": session["token"]}, headers=bearer(token))
        await c.get("/user/workspaces", headers=bearer(token))  # 6
        await c.get("/user/workspaces", headers=bearer(token))  # 429
    counters = emu.counters
    assert isinstance(counters, Counters)
    assert counters.requests == {
        "signin": 2,
        "refresh_token": 1,
        "automation_token": 1,
        "folders": 2,
        "revoke_tokens": 1,
        "workspaces": 2,
    }
    assert counters.total_requests == 9
    assert counters.sign_ins == 1
    assert counters.refreshes == 1
    assert counters.refusals == 2
    assert counters.unauthorized == 1
    assert counters.tokens_issued == 2
    assert counters.automation_tokens_issued == 1
    assert counters.revocations == 1
    assert counters.rate_limited == 1
    assert counters.faults == 1
    emu.reset_counters()
    assert counters == Counters()
    assert emu.counters is counters


# --- ASGI -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lifespan() -> None:
    emu = IndigoEmulator()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await emu({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_transport_is_an_httpx_transport() -> None:
    assert isinstance(IndigoEmulator().transport(), httpx.AsyncBaseTransport)


def test_every_route_can_take_faults() -> None:
    from indigo_auth.testing._emulator import _ROUTES
    from indigo_auth.testing._faults import ENDPOINTS

    assert tuple(name for name, _ in _ROUTES.values()) == ENDPOINTS


@pytest.mark.anyio
async def test_oversized_bodies_are_refused() -> None:
    emu = IndigoEmulator({EMAIL: PASSWORD})
    async with client_for(emu) as c:
        r = await c.post("/user/signin", content=b"x" * (70 * 1024))
    assert_error(r, 413)
