"""FileStore: atomic, private, shared through a file lock, never broken by a bad file."""

from __future__ import annotations

import json
import logging
import stat
import time
from pathlib import Path

import anyio
import httpx
import pytest

from indigo_auth import AsyncTokenManager, FileStore, TokenState, TokenStore
from indigo_auth._api import md5_hex
from indigo_auth._stores import default_cache_dir
from indigo_auth.testing import Fault, IndigoEmulator

from ._support.store_contract import assert_lock_excludes
from .conftest import EMAIL, PASSWORD

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:9"


def state(token: str = "tok-1", refresh: str | None = "ref-1", **kwargs: object) -> TokenState:  # noqa: S107 - fixture values
    settings: dict[str, object] = {"lifetime": 1800.0, "received_at": time.time()}
    settings.update(kwargs)
    return TokenState(token, refresh, workspace_id="ws-1", **settings)  # type: ignore[arg-type]


def manager(client: httpx.AsyncClient, store: TokenStore) -> AsyncTokenManager:
    return AsyncTokenManager(EMAIL, PASSWORD, base_url=BASE, http_client=client, store=store)


async def test_is_a_token_store(tmp_path: Path) -> None:
    assert isinstance(FileStore(tmp_path / "t.json"), TokenStore)


async def test_round_trip_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "indigo-auth" / "tokens.json"
    store = FileStore(path)
    saved = state()
    await store.save("k1", saved)
    assert await store.load("k1") == saved
    assert await store.load("k2") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Nothing but the file and its write lock: no temporary file left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]
    await store.aclose()


async def test_accounts_kept_apart_in_one_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "t.json")
    other = FileStore(tmp_path / "t.json")
    await store.save("alice", state("tok-a", "ref-a"))
    await other.save("bob", state("tok-b", "ref-b"))
    alice, bob = await other.load("alice"), await store.load("bob")
    assert alice is not None and alice.token == "tok-a"
    assert bob is not None and bob.token == "tok-b"
    await store.delete("alice")
    assert await other.load("alice") is None
    assert await other.load("bob") == bob


async def test_expired_state_is_not_handed_out_and_is_pruned(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = FileStore(path)
    await store.save("old", state("tok-old", lifetime=10.0, received_at=time.time() - 11))
    assert await store.load("old") is None
    await store.save("new", state())
    assert set(json.loads(path.read_text())["tokens"]) == {"new"}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b'{"format": "indigo-auth/tokens", "version": 1, "tok',
        b"\xff\xfe\x00garbage",
        b'{"editor": "vim", "theme": "dark"}',
        b"[1, 2, 3]",
        b'{"format": "indigo-auth/tokens", "version": 99, "tokens": {}}',
    ],
    ids=["empty", "blank", "cut", "binary", "foreign", "list", "future-version"],
)
async def test_a_bad_file_is_ignored_with_a_warning_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(content)
    store = FileStore(path)
    with caplog.at_level(logging.WARNING, logger="indigo_auth"):
        assert await store.load("k") is None
    assert any("token file" in r.getMessage() for r in caplog.records)
    await store.save("k", state())
    assert await store.load("k") == state(received_at=(await store.load("k")).received_at)  # type: ignore[union-attr]
    assert json.loads(path.read_bytes())["format"] == "indigo-auth/tokens"


async def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    good = state().to_dict()
    document = {
        "format": "indigo-auth/tokens",
        "version": 1,
        "tokens": {"bad": {"token": 5}, "worse": "x", "good": good},
    }
    path.write_text(json.dumps(document))
    store = FileStore(path)
    assert await store.load("bad") is None
    assert await store.load("worse") is None
    assert await store.load("good") is not None


async def test_no_secret_in_repr_or_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t.json"
    path.write_text("not json")
    store = FileStore(path)
    with caplog.at_level(logging.DEBUG, logger="indigo_auth"):
        await store.load("k")
        await store.save("k", state("tok-Zq81xv", "ref-Zq81xv"))
        await store.load("k")
    assert "Zq81xv" not in repr(store)
    assert "Zq81xv" not in caplog.text


async def test_lock_excludes_tasks_and_instances_of_one_process(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    await assert_lock_excludes(FileStore(path), FileStore(path))


async def test_locks_of_two_keys_are_independent(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "t.json")
    with anyio.fail_after(2):
        async with store.lock("alice"), store.lock("bob"):
            pass


async def test_a_cancelled_waiter_and_a_cancelled_holder_leave_the_lock_free(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.json"
    store = FileStore(path)
    other = FileStore(path)
    async with store.lock("k"):
        with anyio.move_on_after(0.2) as scope:
            async with other.lock("k"):
                pytest.fail("entered a held lock")
        assert scope.cancelled_caught

    with anyio.move_on_after(0.1):
        async with store.lock("k"):
            await anyio.sleep_forever()

    with anyio.fail_after(2):
        async with other.lock("k"):
            pass


async def test_managers_sharing_a_file_share_one_sign_in(
    tmp_path: Path, emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    emu.inject("signin", Fault.latency(0.2), times=1)
    path = tmp_path / "t.json"
    managers = [manager(client, FileStore(path)) for _ in range(4)]
    tokens: list[str] = []

    async def one(m: AsyncTokenManager) -> None:
        tokens.append(await m.get_token())

    async with anyio.create_task_group() as tg:
        for m in managers:
            tg.start_soon(one, m)
    assert len(set(tokens)) == 1 and emu.is_valid(tokens[0])
    assert emu.counters.sign_ins == 1
    assert sum(m.stats.adopted for m in managers) == 3
    # Neither the password nor its digest is ever written.
    content = path.read_text()
    assert PASSWORD not in content and md5_hex(PASSWORD) not in content
    # A new process (here: a new manager and store) takes the token from the file.
    late = manager(client, FileStore(path))
    assert await late.get_token() == tokens[0]
    assert emu.counters.sign_ins == 1


async def test_a_refused_refresh_rereads_the_store_before_signing_in(
    tmp_path: Path, emu: IndigoEmulator, client: httpx.AsyncClient
) -> None:
    """A sibling rotated the refresh token: the refresh is refused, the store has the
    sibling's token, and the manager takes it instead of signing in."""
    path = tmp_path / "t.json"
    sibling_token: list[str] = []

    class SiblingRotates(FileStore):
        armed = False

        async def load(self, key: str) -> TokenState | None:
            loaded = await super().load(key)
            if self.armed and loaded is not None and loaded.refresh_token is not None:
                self.armed = False
                # Another process uses the refresh token first and stores its result.
                answer = await client.post(
                    f"{BASE}/user/refresh_token",
                    json={
                        "email": EMAIL,
                        "refresh_token": loaded.refresh_token,
                        "workspace_id": loaded.workspace_id,
                    },
                )
                data = answer.json()["data"]
                sibling_token.append(data["token"])
                fresh = TokenState(
                    data["token"], data["refresh_token"], 1800.0, time.time(), loaded.workspace_id
                )
                await FileStore(path).save(key, fresh)
            return loaded

    store = SiblingRotates(path)
    m = manager(client, store)
    first = await m.get_token()
    store.armed = True
    token = await m.get_token(force_refresh=True)
    assert token == sibling_token[0] != first
    counters = emu.counters
    assert counters.sign_ins == 1, "no second sign-in"
    assert counters.refreshes == 1, "only the sibling's refresh succeeded"
    assert counters.refusals == 1, "ours was refused"


def test_default_location_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "indigo-auth"
    assert FileStore.default().path == tmp_path / "indigo-auth" / "tokens.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "indigo-auth"


async def test_path_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = FileStore("~/tokens.json")
    assert store.path == tmp_path / "tokens.json"
    await store.save("k", state())
    assert (tmp_path / "tokens.json").is_file()
