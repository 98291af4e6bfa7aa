"""A store in one file: the processes of one machine share one sign-in.

The file holds the tokens of any number of accounts, each under its key (a hash of
base URL, email and workspace)::

    {"format": "indigo-auth/tokens", "version": 1, "tokens": {"<key>": {<state>}}}

It is only ever replaced whole, by a rename of a fully written and fsynced
temporary file, so a reader sees the old content or the new one, never half of
either. Writers take a short lock on ``<file>.lock`` to read, change and replace
it. Renewals of one account take ``<file>.<key>.lock``, so that of all processes
exactly one renews while the others wait and then read what it wrote. Both are
``flock`` locks (through :mod:`filelock`): the kernel drops them when their holder
dies, even by ``kill -9``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.to_thread

from .._runtime import LoopLocal
from .._token import TokenState

__all__ = ["FileStore", "default_cache_dir"]

logger = logging.getLogger("indigo_auth")

_FORMAT = "indigo-auth/tokens"
_VERSION = 1
#: Polling of a contended renewal lock: first and longest pause, in seconds.
_POLL_FIRST = 0.002
_POLL_MAX = 0.05
#: A writer holds the write lock for milliseconds; waiting longer means something is wrong.
_WRITE_LOCK_TIMEOUT = 30.0
#: Keys that may appear in a file name as they are (``store_key`` makes 32 hex digits).
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Anything larger is not a token file of ours.
_MAX_FILE_BYTES = 4 * 1024 * 1024


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/indigo-auth``, or ``~/.cache/indigo-auth`` where it is unset."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "indigo-auth"


class FileStore:
    """Keeps tokens in a file, shared by every process of the machine that uses it.

    Processes that share the file share one sign-in and one refresh per renewal:
    one of them renews under a lock while the others wait, without blocking their
    event loop, and then take its token from the file. The file is written
    atomically (temporary file, fsync, rename) with mode ``0600``, in a directory
    created with mode ``0700``. A corrupt, empty or foreign file is ignored with a
    warning and replaced at the next write. One file holds any number of accounts,
    each under its own key. No password or digest is ever written::

        store = FileStore("~/.cache/indigo-auth/tokens.json")
        manager = AsyncTokenManager.from_env(store=store)

    Args:
        path: the token file (``~`` is expanded). Its directory is created if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path).expanduser().absolute()
        self._locks: dict[str, LoopLocal[anyio.Lock]] = {}
        self._warned: str | None = None

    @classmethod
    def default(cls) -> FileStore:
        """The store the command line uses: ``tokens.json`` in :func:`default_cache_dir`."""
        return cls(default_cache_dir() / "tokens.json")

    def __repr__(self) -> str:
        return f"FileStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The token file."""
        return self._path

    # -- the store contract -------------------------------------------------------------

    async def load(self, key: str) -> TokenState | None:
        """The state stored under ``key``, or ``None``. Never raises for bad data."""
        tokens = await anyio.to_thread.run_sync(self._read)
        state = TokenState.from_dict(tokens.get(key))
        if state is None or state.remaining() <= 0:
            return None
        return state

    async def save(self, key: str, state: TokenState) -> None:
        """Store ``state`` under ``key``, keeping the other accounts' tokens."""
        await anyio.to_thread.run_sync(self._update, key, state)

    async def delete(self, key: str) -> None:
        """Forget the state under ``key``."""
        await anyio.to_thread.run_sync(self._update, key, None)

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """The renewal lock of ``key``, shared by every process using this file.

        Waiting polls a non-blocking ``flock`` with growing pauses, so the event loop
        keeps running and a cancelled waiter leaves nothing behind. Tasks of one
        event loop queue on an in-process lock first.
        """
        local = self._locks.get(key)
        if local is None:
            local = self._locks[key] = LoopLocal(anyio.Lock)
        async with local.get():
            import filelock  # here: importing it costs every user of the package 30 ms

            await anyio.to_thread.run_sync(self._make_directory)
            # A lock object of our own for each hold: filelock's objects are re-entrant,
            # and two holders in one process must exclude each other like two processes.
            file_lock = filelock.FileLock(self._lock_path(key), mode=0o600, thread_local=False)
            pause = _POLL_FIRST
            while True:
                try:
                    file_lock.acquire(blocking=False)
                except filelock.Timeout:
                    await anyio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                    pause = min(pause * 2, _POLL_MAX)
                else:
                    break
            try:
                yield
            finally:
                file_lock.release()

    async def aclose(self) -> None:
        """Nothing to release: files are opened only for each read and write."""
        return None

    # -- the file -----------------------------------------------------------------------

    def _lock_path(self, key: str) -> Path:
        if not _SAFE_KEY.fullmatch(key):
            key = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self._path.with_name(f"{self._path.name}.{key}.lock")

    def _make_directory(self) -> None:
        directory = self._path.parent
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _read(self) -> dict[str, object]:
        """The tokens in the file; an empty dict, with a warning, where it is not ours."""
        try:
            with self._path.open("rb") as file:
                raw = file.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"cannot be read ({type(exc).__name__})")
            return {}
        if not raw.strip():
            self._warn("is empty")
            return {}
        if len(raw) > _MAX_FILE_BYTES:
            self._warn("is too large to be a token file")
            return {}
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            self._warn("is not valid JSON")
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(data.get("tokens"), dict)
        ):
            self._warn("is not an indigo-auth token file")
            return {}
        if data.get("version") != _VERSION:
            self._warn(f"has an unknown version {data.get('version')!r}")
            return {}
        self._warned = None
        tokens: dict[str, object] = data["tokens"]
        return tokens

    def _warn(self, problem: str) -> None:
        # Once per problem, not at every renewal of every manager.
        if self._warned != problem:
            self._warned = problem
            logger.warning(
                "token file %s %s; ignoring it, it will be replaced", self._path, problem
            )

    def _update(self, key: str, state: TokenState | None) -> None:
        """Read, change and atomically replace the file, under the write lock."""
        import filelock

        self._make_directory()
        write_lock = filelock.FileLock(
            self._path.with_name(f"{self._path.name}.lock"), mode=0o600, thread_local=False
        )
        with write_lock.acquire(timeout=_WRITE_LOCK_TIMEOUT):
            tokens: dict[str, object] = {}
            for other, data in self._read().items():
                kept = TokenState.from_dict(data)
                if other != key and kept is not None and kept.remaining() > 0:
                    tokens[other] = kept.to_dict()
            if state is not None:
                tokens[key] = state.to_dict()
            document = {"format": _FORMAT, "version": _VERSION, "tokens": tokens}
            self._replace(json.dumps(document, indent=1, sort_keys=True).encode())

    def _replace(self, content: bytes) -> None:
        directory = self._path.parent
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{self._path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self._path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where the platform can open a directory)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
