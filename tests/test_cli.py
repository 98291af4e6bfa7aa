"""The ``indigo-auth`` command line, as a subprocess against the emulator on loopback."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from indigo_auth import _cli
from indigo_auth._api import md5_hex
from indigo_auth.testing import Fault, IndigoEmulator

from .conftest import EMAIL, PASSWORD

WRONG = "hunter2 is not it"
COMMAND = [sys.executable, "-m", "indigo_auth._cli"]


@pytest.fixture
def emu() -> IndigoEmulator:
    emulator = IndigoEmulator({EMAIL: PASSWORD}, rate_limit=None)
    emulator.add_account("manual@example.com", PASSWORD, automation=False)
    return emulator


@pytest.fixture
def env(tmp_path: Path, api: str) -> dict[str, str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("INDIGO_") and "proxy" not in key.lower()
    }
    clean.update(
        INDIGO_EMAIL=EMAIL,
        INDIGO_PASSWORD=PASSWORD,
        INDIGO_API_URL=api,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        HOME=str(tmp_path),
    )
    return clean


def cli(
    *args: str, env: dict[str, str], input: str | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    if input is None:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [*COMMAND, *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def assert_clean(stderr: str, *secrets: str) -> None:
    assert "Traceback" not in stderr
    for secret in (PASSWORD, WRONG, md5_hex(PASSWORD), md5_hex(WRONG), *secrets):
        assert secret not in stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def run_main(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """``main()`` in this process (faster than a subprocess), in the environment of ``env``."""
    for name in list(os.environ):
        if name.startswith("INDIGO_"):
            monkeypatch.delenv(name)

    def run(*args: str) -> tuple[int, str, str]:
        for name, value in env.items():
            if name.startswith("INDIGO_") or name in ("XDG_CACHE_HOME", "HOME"):
                monkeypatch.setenv(name, value)
        code = _cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- token -------------------------------------------------------------------------------


def test_token_is_printed_and_reused(
    emu: IndigoEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    runs = [cli("token", env=env) for _ in range(3)]
    token = runs[0].stdout.removesuffix("\n")
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout == token + "\n"
        assert run.stderr == ""
    assert emu.is_valid(token)
    assert emu.counters.requests == {"signin": 1}

    cache = tmp_path / "cache" / "indigo-auth" / "tokens.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    text = cache.read_text()
    assert PASSWORD not in text and md5_hex(PASSWORD) not in text


def test_a_cached_token_needs_no_password(emu: IndigoEmulator, env: dict[str, str]) -> None:
    token = cli("token", env=env).stdout
    del env["INDIGO_PASSWORD"]
    again = cli("token", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == token
    assert emu.counters.sign_ins == 1


def test_force_refresh_and_no_cache(emu: IndigoEmulator, run_main: Any) -> None:
    _, token, _ = run_main("token")
    code, renewed, err = run_main("token", "--force-refresh")
    assert (code, err) == (0, "")
    assert renewed != token
    assert emu.counters.refreshes == 1
    assert run_main("token")[1] == renewed
    assert run_main("token", "--no-cache")[1] not in (token, renewed)
    assert emu.counters.sign_ins == 2


def test_cache_path_and_md5_from_the_environment(
    emu: IndigoEmulator, env: dict[str, str], run_main: Any, tmp_path: Path
) -> None:
    del env["INDIGO_PASSWORD"]
    env["INDIGO_PASSWORD_MD5"] = md5_hex(PASSWORD)
    cache = tmp_path / "elsewhere" / "tokens.json"
    code, out, err = run_main("token", "--cache", str(cache))
    assert code == 0, err
    assert emu.is_valid(out.strip())
    assert cache.exists()
    assert not (tmp_path / "cache" / "indigo-auth" / "tokens.json").exists()


# -- credentials -------------------------------------------------------------------------


def test_password_stdin(emu: IndigoEmulator, env: dict[str, str]) -> None:
    del env["INDIGO_PASSWORD"]
    run = cli("token", "--no-cache", "--password-stdin", env=env, input=PASSWORD + "\n")
    assert run.returncode == 0, run.stderr
    assert emu.is_valid(run.stdout.strip())
    empty = cli("token", "--no-cache", "--password-stdin", env=env, input="")
    assert empty.returncode == _cli.EXIT_USAGE
    assert empty.stderr == "indigo-auth: error: --password-stdin: no password on stdin\n"


def read_until(stream: IO[bytes], marker: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"the stream ended before {marker!r}: {seen!r}"
            seen += chunk
    return seen


def drain(fd: int) -> bytes:
    seen = b""
    while select.select([fd], [], [], 0.05)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_prompts_without_echo_on_a_terminal(emu: IndigoEmulator, env: dict[str, str]) -> None:
    import pty

    del env["INDIGO_EMAIL"], env["INDIGO_PASSWORD"]
    controller, terminal = pty.openpty()
    # A new session: the child has no controlling terminal but this one as its stdin.
    process = subprocess.Popen(
        [*COMMAND, "token", "--no-cache"],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        assert process.stderr is not None
        read_until(process.stderr, b"Indigo email: ")
        os.write(controller, EMAIL.encode() + b"\n")
        read_until(process.stderr, b"Indigo password for bot@example.com: ")
        os.write(controller, PASSWORD.encode() + b"\n")
        out, err = process.communicate(timeout=30)
        echoed = drain(controller)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(controller)
    assert process.returncode == 0, err
    assert emu.is_valid(out.decode().strip())
    assert PASSWORD.encode() not in echoed + err


def test_prompt_reads_through_getpass(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return PASSWORD

    monkeypatch.setattr(_cli, "_interactive", lambda: True)
    monkeypatch.setattr(_cli.getpass, "getpass", fake_getpass)
    for name in ("INDIGO_PASSWORD", "INDIGO_PASSWORD_MD5"):
        monkeypatch.delenv(name, raising=False)
    args = _cli._parser().parse_args(["token"])
    assert _cli._password(args, EMAIL) == (PASSWORD, None)
    assert asked == [f"Indigo password for {EMAIL}: "]


def test_no_password_and_no_terminal_is_a_usage_error(env: dict[str, str]) -> None:
    del env["INDIGO_PASSWORD"]
    run = cli("token", env=env)
    assert run.returncode == _cli.EXIT_USAGE
    assert run.stdout == ""
    assert run.stderr.startswith("indigo-auth: error: no password: set INDIGO_PASSWORD")
    assert run.stderr.count("\n") == 1


# -- exit codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong password", 3),
        ("rate limited", 4),
        ("unreachable", 5),
        ("failing", 5),
        ("not the envelope", 6),
        ("no automation", 1),
        ("unknown option", 2),
        ("bad url", 2),
    ],
)
def test_exit_codes(case: str, code: int, emu: IndigoEmulator, env: dict[str, str]) -> None:
    args = ["token", "--max-attempts", "1"]
    if case == "wrong password":
        env["INDIGO_PASSWORD"] = WRONG
    elif case == "rate limited":
        emu.inject("signin", Fault.status(429, retry_after=0))
    elif case == "unreachable":
        args += ["--api-url", f"http://127.0.0.1:{free_port()}"]
    elif case == "failing":
        emu.inject("signin", Fault.status(503))
    elif case == "not the envelope":
        emu.inject("signin", Fault.wrong_shape())
    elif case == "no automation":
        env["INDIGO_EMAIL"] = "manual@example.com"
        args = ["automation-token", "--period", "1w"]
    elif case == "unknown option":
        args.append("--password=in-a-flag")
    elif case == "bad url":
        args += ["--api-url", "ftp://example.com"]
    run = cli(*args, env=env)
    assert run.returncode == code, run.stderr
    assert run.stdout == ""
    assert_clean(run.stderr, "in-a-flag")
    if case != "unknown option":  # argparse adds its usage line
        assert run.stderr.startswith("indigo-auth: error: ")
        assert run.stderr.count("\n") == 1, run.stderr


def test_retries_stay_off_stderr(emu: IndigoEmulator, env: dict[str, str]) -> None:
    emu.inject("signin", Fault.status(503, retry_after=0), times=1)
    run = cli("token", "--no-cache", "--max-attempts", "2", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert emu.counters.requests == {"signin": 2}


def test_verbose_shows_a_traceback_but_no_secret(env: dict[str, str]) -> None:
    env["INDIGO_PASSWORD"] = WRONG
    run = cli("token", "--verbose", env=env)
    assert run.returncode == _cli.EXIT_CREDENTIALS
    assert "Traceback" in run.stderr
    assert "indigo-auth: error: sign-in refused" in run.stderr
    for secret in (WRONG, md5_hex(WRONG)):
        assert secret not in run.stderr


def test_help_documents_the_exit_codes() -> None:
    run = subprocess.run(
        [*COMMAND, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0
    for line in (
        "0  success",
        "2  usage",
        "3  credentials refused",
        "4  rate limited",
        "5  API unreachable or failing",
        "6  unexpected answer",
    ):
        assert line in run.stdout
    for command in ("token", "automation-token", "workspaces", "revoke", "emulator", "demo"):
        assert command in run.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main([]) == _cli.EXIT_USAGE
    assert "usage: indigo-auth" in capsys.readouterr().err


def test_demo_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("indigo_auth._demo")
    assert _cli.main(["demo", "--help"]) == 0
    assert "usage: indigo-auth demo" in capsys.readouterr().out


# -- the other commands ------------------------------------------------------------------


def test_workspaces_automation_token_and_revoke(emu: IndigoEmulator, run_main: Any) -> None:
    (workspace_id, name, role) = emu.account(EMAIL).workspaces[0]
    code, table, err = run_main("workspaces")
    assert code == 0, err
    assert table.splitlines() == [
        "WORKSPACE ID                          NAME             ROLE",
        f"{workspace_id}  {name}  {role}",
    ]
    listed = json.loads(run_main("workspaces", "--json")[1])
    assert listed == [{"workspace_id": workspace_id, "name": name, "role": role}]

    code, automation, err = run_main("automation-token", "--period", "1w")
    assert code == 0, err
    assert emu.decode(automation.strip())["is_automation"] is True
    assert emu.counters.sign_ins == 1  # the three commands shared the cached token

    token = run_main("token")[1].strip()
    code, out, err = run_main("revoke")
    assert (code, out) == (0, "")
    assert err == f"indigo-auth: every token of {EMAIL} is revoked\n"
    assert not emu.is_valid(token)
    fresh = run_main("token")[1].strip()  # the cache was dropped too
    assert fresh != token and emu.is_valid(fresh)


def test_emulator_command(env: dict[str, str]) -> None:
    port = free_port()
    server = subprocess.Popen(
        [*COMMAND, "emulator", "--port", str(port), "--account", "cli@example.com:sesame"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None, server.communicate()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.05)
        env.update(INDIGO_EMAIL="cli@example.com", INDIGO_PASSWORD="sesame")
        run = cli("token", "--api-url", f"http://127.0.0.1:{port}", "--no-cache", env=env)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("eyJ")
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert f"on http://127.0.0.1:{port}" in err
    assert "sesame" not in err


def test_emulator_needs_an_account(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["emulator", "--account", "no-colon"]) == _cli.EXIT_USAGE
    assert capsys.readouterr().err == "indigo-auth: error: --account takes EMAIL:PASSWORD\n"
