"""The README's examples: each is a file under examples/, shown verbatim in the README
and run here, as a user would run it, against the emulator on a loopback port."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from indigo_auth.testing import IndigoEmulator

from ._support.launcher import WEBDRIVER_PORT, FakeLauncher
from .conftest import EMAIL, PASSWORD

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SHOWN = (
    "asyncio_service.py",
    "trio_task.py",
    "requests_script.py",
    "httpx_scraper.py",
    "selenium_bot.py",
    "redis_fleet.py",
)


@pytest.fixture
def env(tmp_path: Path, api: str) -> dict[str, str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("INDIGO_", "REDIS_")) and "proxy" not in key.lower()
    }
    clean.update(
        INDIGO_EMAIL=EMAIL,
        INDIGO_PASSWORD=PASSWORD,
        INDIGO_API_URL=api,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        HOME=str(tmp_path),
    )
    return clean


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def python(example: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(EXAMPLES / example)], env)


def test_the_readme_shows_every_example_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", readme, flags=re.DOTALL | re.MULTILINE)
    for name in (*SHOWN, "token_loop.sh"):
        assert (EXAMPLES / name).read_text() in blocks, f"{name} is not in the README as it is"


def test_requests_script(emu: IndigoEmulator, env: dict[str, str]) -> None:
    done = python("requests_script.py", env)
    assert done.returncode == 0, done.stderr
    names = [line.split(" ", 1)[1] for line in done.stdout.splitlines()]
    assert names == ["Default folder", "Shops"]
    assert emu.counters.sign_ins == 1


def test_asyncio_service(emu: IndigoEmulator, env: dict[str, str]) -> None:
    done = python("asyncio_service.py", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "100 workers, 200 folders, 1 sign-in\n"
    assert emu.counters.sign_ins == 1
    assert emu.counters.requests["folders"] == 100


def test_trio_task(emu: IndigoEmulator, env: dict[str, str]) -> None:
    done = python("trio_task.py", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "100 of 100 requests answered, 1 sign-in\n"
    assert emu.counters.sign_ins == 1
    assert emu.counters.requests["folders"] == 100


def test_httpx_scraper(emu: IndigoEmulator, env: dict[str, str]) -> None:
    done = python("httpx_scraper.py", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "64 pages, 128 folders, 1 sign-in\n"
    assert emu.counters.sign_ins == 1
    assert emu.counters.requests["folders"] == 64


_SELENIUM_STUB = """
import json, os

def _log(event):
    with open(os.environ["SELENIUM_STUB_LOG"], "a") as log:
        log.write(json.dumps(event) + "\\n")

class Remote:
    def __init__(self, command_executor, options):
        _log({"remote": command_executor, "options": type(options).__name__})
        self.title = ""

    def get(self, url):
        _log({"get": url})
        self.title = "Example Domain"

    def quit(self):
        _log({"quit": True})
"""


def test_selenium_bot(emu: IndigoEmulator, env: dict[str, str], tmp_path: Path) -> None:
    # Selenium itself is replaced by a stub that records what the bot asked of it.
    stub = tmp_path / "stub" / "selenium"
    (stub / "webdriver" / "chromium").mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "webdriver" / "__init__.py").write_text(_SELENIUM_STUB)
    (stub / "webdriver" / "chromium" / "__init__.py").write_text("")
    (stub / "webdriver" / "chromium" / "options.py").write_text("class ChromiumOptions: ...\n")
    log = tmp_path / "selenium.log"
    launcher = FakeLauncher(emu)
    with launcher as launcher_url:
        env.update(
            INDIGO_LAUNCHER_URL=launcher_url,
            INDIGO_FOLDER_ID="f-1",
            INDIGO_PROFILE_ID="p-1",
            PYTHONPATH=str(stub.parent),
            SELENIUM_STUB_LOG=str(log),
        )
        done = python("selenium_bot.py", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Example Domain\n"
    (start,) = launcher.seen
    assert start.path == "/api/v2/profile/f/f-1/p/p-1/start"
    assert start.query == {"automation_type": ["selenium"]}
    assert start.status == 200 and start.authorization is not None
    assert emu.decode(start.authorization.removeprefix("Bearer "))["sub"] == EMAIL
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events == [
        {"remote": f"http://127.0.0.1:{WEBDRIVER_PORT}", "options": "ChromiumOptions"},
        {"get": "https://example.com"},
        {"quit": True},
    ]


@pytest.mark.redis
def test_redis_fleet(emu: IndigoEmulator, env: dict[str, str], redis_url: str) -> None:
    env["REDIS_URL"] = redis_url
    bots = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLES / "redis_fleet.py")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    for bot in bots:
        out, err = bot.communicate(timeout=60)
        assert bot.returncode == 0, err
        outputs.append(out)
    assert emu.counters.sign_ins == 1
    assert sum("signed in" in out for out in outputs) == 1
    assert sum("took the fleet's token" in out for out in outputs) == 3


def shell_env(env: dict[str, str]) -> dict[str, str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    scripts = Path(sys.executable).parent
    if not (scripts / "indigo-auth").exists():
        pytest.skip("the indigo-auth console script is not installed next to this Python")
    return {**env, "PATH": f"{scripts}{os.pathsep}{env.get('PATH', '')}"}


def test_token_loop(emu: IndigoEmulator, env: dict[str, str]) -> None:
    done = run(["sh", str(EXAMPLES / "token_loop.sh")], shell_env(env))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.rsplit(" <- ", 1)[1] for line in lines] == [f"call {n}" for n in range(1, 6)]
    assert emu.counters.sign_ins == 1
    assert emu.counters.requests["folders"] == 5


def test_token_loop_reports_refused_credentials(emu: IndigoEmulator, env: dict[str, str]) -> None:
    env["INDIGO_PASSWORD"] = "hunter2 is not it"
    done = run(["sh", str(EXAMPLES / "token_loop.sh")], shell_env(env))
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.endswith("wrong email or password\n")
    assert "hunter2" not in done.stderr
