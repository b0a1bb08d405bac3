"""Units and how figures are shown: MiB / GiB, `mib()` and `fmt()` for table cells,
`cell()` for names holding '|', and `pct()`, the nearest-rank quantile every table uses."""

from __future__ import annotations

from typing import Sequence

MiB = 1 << 20
GiB = 1 << 30


def mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def fmt(x: float, nd: int = 1) -> str:
    return f"{x:,.{nd}f}"


def cell(name: str) -> str:
    """A name as a markdown table cell (tool names contain '|')."""
    return name.replace("|", "\\|")
