"""Small helpers the benchmark scripts share (run them as `python bench/<name>.py`)."""
from __future__ import annotations

import os
import platform
import socket
from collections.abc import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of values already sorted ascending (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """First column left-aligned, the rest right-aligned, each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(c) for c in cells)
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:]))])

    print(line(header))
    print("-" * len(line(header)))
    for row in rows:
        print(line(row))
