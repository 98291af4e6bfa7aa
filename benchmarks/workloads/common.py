"""What the workloads share: contenders, settings, tables and percentiles."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from peers import Peer, Setup
from servers import ServerProcess

__all__ = [
    "Contender",
    "Settings",
    "Table",
    "fmt_ms",
    "fresh_account",
    "percentile",
]

_accounts = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Contender:
    """A row: a name, how to build the peer, and the workloads it sits out (with why)."""

    name: str
    build: Callable[[Setup], Peer]
    server: str = "indigo"
    cannot: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    """The knobs of one run; ``--quick`` shrinks them."""

    quick: bool
    token_latency: float = 0.050
    resource_latency: float = 0.010
    margin: float = 1.0
    stampede_sizes: tuple[int, ...] = (1_000, 10_000)
    stampede_cap: float = 15.0
    lifetime: float = 4.0
    lifetimes: int = 3
    load_tasks: int = 1_000
    think: tuple[float, float] = (8.0, 16.0)
    hot_calls: int = 2_000
    hot_rounds: int = 20
    httpx_requests: int = 2_000
    storm_requests: int = 500
    memory_tasks: int = 10_000
    memory_latency: float = 2.0
    fleet: bool = True

    @property
    def floor(self) -> float:
        """indigo-auth's hard floor for this lifetime (10 % of it, at most 30 s)."""
        return min(self.lifetime * 0.1, 30.0)

    @classmethod
    def for_run(cls, quick: bool) -> Settings:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            stampede_sizes=(300,),
            stampede_cap=10.0,
            lifetime=2.0,
            margin=0.5,
            lifetimes=1,
            load_tasks=100,
            think=(1.0, 2.0),
            hot_calls=1_000,
            hot_rounds=10,
            httpx_requests=400,
            storm_requests=100,
            memory_tasks=2_000,
            memory_latency=1.0,
            fleet=False,
        )


@dataclass(slots=True)
class Table:
    """A printed and written table: peers as rows."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        """GitHub-flavoured Markdown, readable as plain text too."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]

        def line(cells: Sequence[str]) -> str:
            padded = [c.ljust(w) for c, w in zip(cells, widths, strict=False)]
            return "| " + " | ".join(padded) + " |"

        out = [f"### {self.title}", "", line(self.columns)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += [line(row) for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


async def fresh_account(server: ServerProcess, name: str) -> str:
    """An account (and OAuth client) no earlier run has touched."""
    slug = "".join(ch for ch in name.lower() if ch.isalnum()) or "peer"
    email = f"{slug}-{next(_accounts)}@bench.test"
    await server.account(email)
    return email
