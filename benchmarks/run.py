"""indigo-auth against what a user would otherwise reach for, and against the physical limits.

One command, one run: ``.venv/bin/python benchmarks/run.py`` (``--quick`` for a short
smoke run, written to ``benchmarks/results/quick/``). Every peer is driven against the
same token servers on 127.0.0.1 (the Indigo emulator, and a small OAuth server for the
peers that speak only OAuth) in a process of their own, with the same latency and a
comparable refresh margin. It prints a table per workload, writes
``benchmarks/results/latest.md`` and the plot ``benchmarks/results/expiry.png``. Needs
the ``bench`` extra (and ``redis`` for the fleet's RedisStore):
``pip install -e '.[bench,redis]'``.

Absolute times depend on the machine and on what else runs on it; the goals are
judged on figures measured in the same run (counts, and ratios to the baselines).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from peers.aiobotocore_creds import AiobotocoreCredentials  # noqa: E402
from peers.authlib_oauth2 import AuthlibOAuth2, authlib_httpx_module  # noqa: E402
from peers.azure_policy import AzureCorePolicy  # noqa: E402
from peers.baselines import OneSharedRequest  # noqa: E402
from peers.httpx_auth_cc import HttpxAuthClientCredentials  # noqa: E402
from peers.indigo import IndigoAuth  # noqa: E402
from peers.vendor import VendorPattern  # noqa: E402
from servers import ServerProcess  # noqa: E402
from workloads.common import Contender, Settings, Table, fresh_account  # noqa: E402
from workloads.expiry import ExpiryResult, run_expiry  # noqa: E402
from workloads.hot_path import HotResult, run_hot_path  # noqa: E402
from workloads.memory import MemoryResult, run_memory  # noqa: E402
from workloads.stampede import StampedeResult, run_stampede  # noqa: E402
from workloads.storm import StormResult, run_storm  # noqa: E402

RESULTS = HERE / "results"
FLEET_TIMEOUT = 150.0
VERSIONS = (
    "indigo-auth",
    "httpx",
    "httpx2",
    "anyio",
    "Authlib",
    "azure-core",
    "aiobotocore",
    "botocore",
    "httpx-auth",
    "uvicorn",
    "matplotlib",
)


def contenders() -> list[Contender]:
    no_wait = "callers never wait: each sends its own sign-in (see 1)"
    too_many = (
        "not run: one sign-in per caller (see 1,000), and 10,000 at once keep this "
        "machine's server busy for over a minute"
    )
    blocks = "a synchronous flow: the first caller blocks the loop, so no caller waits"
    return [
        Contender("indigo-auth", lambda s: IndigoAuth(s, background=True)),
        Contender(
            "vendor pattern",
            VendorPattern,
            cannot={"memory": no_wait, "stampede:10000": too_many},
        ),
        Contender("Authlib", AuthlibOAuth2, server="oauth"),
        Contender("azure-core", AzureCorePolicy),
        Contender("aiobotocore", AiobotocoreCredentials),
        Contender(
            "httpx-auth", HttpxAuthClientCredentials, server="oauth", cannot={"memory": blocks}
        ),
    ]


LAZY = Contender("indigo-auth (lazy)", lambda s: IndigoAuth(s, background=False))
OWN_CLIENT = Contender(
    "indigo-auth, http_client=", lambda s: IndigoAuth(s, background=True, own_client=True)
)
NOTES = [
    IndigoAuth.note,
    VendorPattern.note,
    AuthlibOAuth2.note,
    AzureCorePolicy.note,
    AiobotocoreCredentials.note,
    HttpxAuthClientCredentials.note,
]


# -- the run ---------------------------------------------------------------------------


async def run_all(settings: Settings) -> dict[str, object]:
    results: dict[str, object] = {}
    tables: list[Table] = []
    peers = contenders()
    baseline = Contender("baseline", OneSharedRequest)
    with ServerProcess.start() as server:
        try:
            step("1. cold stampede")
            stampede_peers = [peers[0], OWN_CLIENT, *peers[1:]]
            table, stampede = await run_stampede(server, stampede_peers, baseline, settings)
            emit(table, tables)
            results["stampede"] = stampede

            step("2. expiry under load")
            expiry_peers = [peers[0], LAZY, *peers[1:]]
            static = Contender("baseline", OneSharedRequest)
            table, expiry = await run_expiry(server, expiry_peers, static, settings)
            emit(table, tables)
            results["expiry"] = expiry

            step("3. hot path")
            email = await fresh_account(server, "hot")
            table, hot = await run_hot_path(peers, email, settings)
            emit(table, tables)
            results["hot"] = hot

            step("4. 401 storm")
            table, storm = await run_storm(server, peers, settings)
            emit(table, tables)
            results["storm"] = storm

            step("5. memory")
            table, memory = await run_memory(server, peers, settings)
            emit(table, tables)
            results["memory"] = memory
        finally:
            await server.aclose()
    step("6. fleet")
    fleet = run_fleet(settings)
    print(fleet)
    results["fleet"] = fleet
    results["tables"] = tables
    return results


def step(title: str) -> None:
    print(f"\n== {title} ({time.strftime('%H:%M:%S')})", flush=True)


def emit(table: Table, tables: list[Table]) -> None:
    tables.append(table)
    print(table.render(), flush=True)


def run_fleet(settings: Settings) -> str:
    """Workload 6: ``benchmarks/fleet.py``, where the stores' engineer put it."""
    script = HERE / "fleet.py"
    heading = "### 6. Fleet (16 processes, shared stores vs one MemoryStore each)\n\n"
    if not settings.fleet:
        return heading + "Skipped in --quick mode.\n"
    if not script.exists():
        return heading + "Skipped: the fleet part needs the stores (benchmarks/fleet.py).\n"
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=FLEET_TIMEOUT,
            check=False,
            cwd=HERE.parent,
        )
    except subprocess.TimeoutExpired:
        return heading + f"benchmarks/fleet.py did not finish within {FLEET_TIMEOUT:g} s.\n"
    body = done.stdout.strip()
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        body += f"\n\n(benchmarks/fleet.py exited with {done.returncode}: " + " / ".join(tail) + ")"
    return heading + "Output of `benchmarks/fleet.py`:\n\n```\n" + body + "\n```\n"


# -- goals -------------------------------------------------------------------------------


Goal = tuple[str, str, str, str, bool]


def _ours(name: str) -> bool:
    return name.startswith("indigo-auth")


def goals(results: dict[str, object], settings: Settings) -> list[Goal]:
    """(workload, indigo-auth, best peer, baseline, met) for each goal of the issue."""
    rows: list[Goal] = []
    latency = settings.token_latency
    stampede: list[StampedeResult] = results["stampede"]  # type: ignore[assignment]
    for size in settings.stampede_sizes:
        of_size = {r.name: r for r in stampede if r.size == size}
        ours, own, base = (
            of_size["indigo-auth"],
            of_size[OWN_CLIENT.name],
            of_size["baseline"],
        )
        peers = [r for r in of_size.values() if not _ours(r.name) and r.name != "baseline"]
        fewest = min(peers, key=lambda r: (r.token_requests, r.p99))
        rows.append(
            (
                f"1. cold stampede, {size:,} callers: token requests",
                str(ours.token_requests),
                f"{fewest.token_requests:,} ({fewest.name})",
                str(base.token_requests),
                ours.token_requests == 1 and own.token_requests == 1,
            )
        )
        fastest = min(peers, key=lambda r: math.inf if r.unfinished else r.p99)
        rows.append(
            (
                f"1. cold stampede, {size:,} callers: p99 minus the server's "
                f"{latency * 1000:.0f} ms",
                f"+{(ours.p99 - latency) * 1000:.0f} ms "
                f"(+{(own.p99 - latency) * 1000:.0f} ms with `http_client=`)",
                f"+{(fastest.p99 - latency) * 1000:.0f} ms ({fastest.name})",
                f"+{(base.p99 - latency) * 1000:.0f} ms",
                ours.p99 - latency <= 0.020,
            )
        )
    expiry: list[ExpiryResult] = results["expiry"]  # type: ignore[assignment]
    duration = settings.lifetime * settings.lifetimes
    # One renewal per token: every lifetime - margin seconds (less the jitter of 10 %).
    most = math.ceil(duration / (settings.lifetime - 1.1 * settings.margin))

    def shown(r: ExpiryResult) -> str:
        return f"{r.renewal_count} / {r.per_renewal:.2f} / {r.unauthorized} / {r.waiters}"

    ours_e = next(r for r in expiry if r.name == "indigo-auth")
    lazy = next(r for r in expiry if r.name == LAZY.name)
    peers_e = [r for r in expiry if not _ours(r.name) and r.name != "baseline"]
    best_e = min(peers_e, key=lambda r: (r.unauthorized, r.waiters, r.per_renewal))
    rows.append(
        (
            "2. expiry: renewals / token requests per renewal / 401s / callers that waited",
            f"{shown(ours_e)} (lazy: {shown(lazy)})",
            f"{shown(best_e)} ({best_e.name})",
            f"{duration / (settings.lifetime - settings.margin):g} / 1 / 0 / 0",
            ours_e.per_renewal == 1.0
            and ours_e.renewal_count <= most
            and ours_e.unauthorized == 0
            and ours_e.waiters == 0,
        )
    )
    hot: list[HotResult] = results["hot"]  # type: ignore[assignment]
    bare_ns = next(r.ns_per_call for r in hot if r.name == "baseline") or math.nan
    ours_h = next(r for r in hot if r.name == "indigo-auth")
    peers_h = [
        r for r in hot if not _ours(r.name) and r.name != "baseline" and r.ns_per_call is not None
    ]
    assert ours_h.ns_per_call is not None
    fastest_h = min(peers_h, key=lambda r: r.ns_per_call or math.inf)
    assert fastest_h.ns_per_call is not None
    rows.append(
        (
            "3. hot path: ns per `get_token()` (x the bare coroutine)",
            f"{ours_h.ns_per_call:,.0f} ({ours_h.ns_per_call / bare_ns:.1f}x)",
            f"{fastest_h.ns_per_call:,.0f} ({fastest_h.ns_per_call / bare_ns:.1f}x, "
            f"{fastest_h.name})",
            f"{bare_ns:,.0f} (1.0x)",
            ours_h.ns_per_call <= 3 * bare_ns and ours_h.ns_per_call <= fastest_h.ns_per_call,
        )
    )
    assert ours_h.overhead is not None
    leanest = min(peers_h, key=lambda r: math.inf if r.overhead is None else r.overhead)
    assert leanest.overhead is not None
    rows.append(
        (
            "3. httpx auth: time per request over a static header",
            f"{ours_h.overhead * 100:+.1f}%",
            f"{leanest.overhead * 100:+.1f}% ({leanest.name})",
            "0%",
            ours_h.overhead <= 0.05,
        )
    )
    storm: list[StormResult] = results["storm"]  # type: ignore[assignment]
    ours_s = next(r for r in storm if r.name == "indigo-auth")
    peers_s = [r for r in storm if not _ours(r.name)]
    best_s = min(peers_s, key=lambda r: (r.unauthorized, r.token_requests))
    rows.append(
        (
            "4. 401 storm: renewals (401s reaching callers)",
            f"{ours_s.renewals} ({ours_s.unauthorized})",
            f"{best_s.token_requests} ({best_s.unauthorized}, {best_s.name})",
            "1 (0)",
            ours_s.renewals == 1 and ours_s.unauthorized == 0,
        )
    )
    memory: list[MemoryResult] = results["memory"]  # type: ignore[assignment]
    base_m = next(r for r in memory if r.name == "baseline")
    ours_m = next(r for r in memory if r.name == "indigo-auth")
    peers_m = [r for r in memory if not _ours(r.name) and r.name != "baseline"]
    best_m = min(peers_m, key=lambda r: r.per_caller)
    rows.append(
        (
            "5. memory: bytes per waiting caller, above a bare waiting task (in all)",
            f"{ours_m.per_caller - base_m.per_caller:,.0f} ({ours_m.per_caller:,.0f})",
            f"{best_m.per_caller - base_m.per_caller:,.0f} ({best_m.per_caller:,.0f}, "
            f"{best_m.name})",
            f"0 ({base_m.per_caller:,.0f})",
            ours_m.valid and ours_m.per_caller - base_m.per_caller < 2048,
        )
    )
    return rows


def goals_table(rows: list[Goal]) -> Table:
    table = Table(
        "Goals for indigo-auth", ["workload", "indigo-auth", "best peer", "baseline", "goal met?"]
    )
    for workload, ours, best, base, met in rows:
        table.add(workload, ours, best, base, "yes" if met else "**no**")
    table.notes.append(
        "Best peer: the peer with the best figure for that goal, among the five others. "
        "The fleet (6) is the stores' benchmark; its own output below says whether each "
        "store meets one renewal per lifetime."
    )
    return table


# -- output ------------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for name in VERSIONS:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the end of the run",
        f"- Python {platform.python_version()}; " + ", ".join(versions),
        f"- Authlib ran on `{authlib_httpx_module().__name__}`",
    ]


def plot(expiry: list[ExpiryResult], settings: Settings, path: Path) -> None:
    """Request latency over the run, one panel (and one line) per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = settings.lifetime * settings.lifetimes
    width = 0.1
    bins = math.ceil(duration / width)

    def series(result: ExpiryResult) -> tuple[list[float], list[float]]:
        buckets: list[list[float]] = [[] for _ in range(bins)]
        for s in result.samples:
            index = int(s.start / width)
            if 0 <= index < bins:
                buckets[index].append(s.latency * 1000)
        xs = [(i + 0.5) * width for i, b in enumerate(buckets) if b]
        return xs, [max(b) for b in buckets if b]

    base = next((r for r in expiry if r.name == "baseline"), None)
    libraries = [r for r in expiry if r.name != "baseline"]
    columns = 2
    rows = math.ceil(len(libraries) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(12, 2.2 * rows + 1), dpi=100, sharex=True, sharey=True
    )
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (ax, result) in enumerate(zip(flat, libraries, strict=False)):
        color = colors[index % len(colors)]
        if base is not None:
            bx, by = series(base)
            ax.plot(bx, by, color="0.75", linewidth=0.8, label="static header (one lifetime)")
        xs, ys = series(result)
        ax.plot(xs, ys, color=color, linewidth=1.2, label=result.name)
        for start, _ in result.renewals:
            ax.axvline(start, color=color, linewidth=0.6, linestyle=":", alpha=0.7)
            ax.plot([start], [_at(xs, ys, start)], "v", color=color, markersize=6)
        for k in range(1, settings.lifetimes + 1):
            ax.axvline(k * settings.lifetime, color="0.88", linewidth=0.8, zorder=0)
        ax.set_yscale("log")
        ax.set_title(
            f"{result.name}: {_count(result.renewal_count, 'renewal')}, "
            f"{_count(result.token_requests, 'token request')}, "
            f"{_count(result.unauthorized, '401')}",
            fontsize=9,
        )
        ax.grid(True, which="major", axis="y", color="0.93")
        ax.legend(loc="upper right", fontsize=7)
    for ax in flat[len(libraries) :]:
        ax.set_visible(False)
    fig.supxlabel("seconds since the first token (light grey: a token lifetime apart)")
    fig.supylabel("slowest request per 100 ms (ms, log)")
    fig.suptitle(
        f"Expiry under load: {settings.load_tasks:,} tasks, {settings.lifetime:g} s tokens "
        f"renewed {settings.margin:g} s ahead, {settings.token_latency * 1000:.0f} ms token "
        "endpoint; triangles and dotted lines mark token requests",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _at(xs: list[float], ys: list[float], t: float) -> float:
    nearest = min(range(len(xs)), key=lambda i: abs(xs[i] - t))
    return ys[nearest]


def write_markdown(
    results: dict[str, object], goal_rows: Table, settings: Settings, elapsed: float, path: Path
) -> str:
    tables: list[Table] = results["tables"]  # type: ignore[assignment]
    mode = "`--quick` smoke run" if settings.quick else "full run"
    lines = [
        "# indigo-auth benchmarks: latest run",
        "",
        f"Written by `.venv/bin/python benchmarks/run.py{' --quick' if settings.quick else ''}` "
        f"({mode}, {elapsed:.0f} s). Only figures from this run appear here; absolute "
        "times depend on the machine and its load, so the goals are judged on counts and "
        "on ratios to baselines measured in the same run.",
        "",
        *machine(),
        "",
        goal_rows.render(),
    ]
    for table in tables:
        lines.append(table.render())
    lines.append(str(results["fleet"]))
    lines += ["### How each peer is driven", ""]
    lines += [f"- {note}" for note in NOTES if note]
    lines += ["", "![expiry](expiry.png)", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (under a minute)")
    parser.add_argument(
        "--out",
        type=Path,
        help="where latest.md and expiry.png go (default: benchmarks/results, "
        "or benchmarks/results/quick with --quick)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    settings = Settings.for_run(args.quick)
    started = time.perf_counter()
    results = asyncio.run(run_all(settings))
    elapsed = time.perf_counter() - started
    goal_rows = goals_table(goals(results, settings))
    print(goal_rows.render())
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results["expiry"], settings, args.out / "expiry.png")  # type: ignore[arg-type]
    write_markdown(results, goal_rows, settings, elapsed, args.out / "latest.md")
    print(f"wrote {args.out / 'latest.md'} and {args.out / 'expiry.png'} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
