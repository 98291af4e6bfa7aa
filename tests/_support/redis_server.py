"""A real ``redis-server`` for the tests, started on a free loopback port.

Without the binary the Redis tests are skipped with a loud reason, unless ``CI`` is
set: then they fail, so that CI never passes without having run them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["redis_prefix", "redis_server", "redis_url", "require_redis_server"]

_MISSING = (
    "REDIS TESTS NOT RUN: redis-server is not installed. Install it "
    "(Debian/Ubuntu: apt-get install redis-server; ./scripts/test does it) "
    "to test RedisStore against a real server."
)


def require_redis_server() -> str:
    """The path of ``redis-server``; skips (fails with ``CI`` set) where there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(_MISSING + " CI is set, so this is a failure.", pytrace=False)
        pytest.skip(_MISSING)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _arguments(port: int, directory: Path) -> list[str]:
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        "protected-mode": "yes",
        "save": "",
        "appendonly": "no",
        "dir": str(directory),
        "loglevel": "warning",
    }
    return [part for name, value in options.items() for part in (f"--{name}", value)]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1 and a free port; yields its URL; stops it."""
    binary = require_redis_server()
    directory: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    process = subprocess.Popen(
        [binary, *_arguments(port, directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10.0
        while not _ping(port):
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with status {process.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 10s")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The test Redis server's URL (tests keep apart through :func:`redis_prefix`)."""
    return redis_server


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"
