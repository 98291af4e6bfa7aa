"""The main job, `indigo-auth demo`, on a small scale."""

from __future__ import annotations

import subprocess
import sys

import pytest

from indigo_auth._demo import run_demo_async


@pytest.mark.anyio
async def test_demo_bots_never_see_a_dead_token() -> None:
    report = await run_demo_async(
        tasks=100, duration=4.0, token_lifetime=1.5, fault_rate=0.3, seed=3
    )
    assert report.bot_requests > 50
    assert report.unauthorized == 0
    assert report.errors == 0
    assert report.sign_ins == 1
    assert report.refreshes >= 2
    assert report.requests_served >= report.bot_requests + report.sign_ins + report.refreshes
    assert report.ok
    assert "401s seen by bots" in report.render()


def test_demo_command_reports_and_exits_zero() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "indigo_auth._cli",
            "demo",
            "--tasks",
            "30",
            "--duration",
            "2",
            "--token-lifetime",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "indigo-auth demo report" in completed.stdout
    assert "OK: no bot ever saw a dead token" in completed.stdout
    assert "Traceback" not in completed.stderr


def test_demo_rejects_bad_options() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "indigo_auth._cli", "demo", "--tasks", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
