"""Benchmark output: aligned text tables, CSV, JSON and PNG line plots.

Nothing here knows about allreduce: a benchmark hands over rows (flat dicts), column specs and
the series to plot, so a training-throughput benchmark can reuse the same writers.
Only rank 0 should call the writers (the callers check).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


@dataclass
class Column:
    """One column of a fixed-width table: ``key`` in each row, shown as ``title``."""

    key: str
    title: str
    width: int
    fmt: str | Callable[[Any], str] = "{}"
    align: str = ">"  # ">" right, "<" left

    def cell(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "-"
        elif callable(self.fmt):
            text = self.fmt(value)
        else:
            text = self.fmt.format(value)
        return f"{text:{self.align}{self.width}}"


@dataclass
class Table:
    """A table that can be printed line by line as rows arrive (widths are fixed up front)."""

    columns: Sequence[Column]
    sep: str = "  "
    prefix: str = "  "  # data lines; headers start with "#" in the same place (nccl-tests style)

    def header(self, units: Sequence[str] | None = None) -> str:
        """The column titles, and optionally a line of units under them (nccl-tests style)."""
        lead = "#" + " " * (len(self.prefix) - 1)
        lines = [lead + self.sep.join(f"{c.title:{c.align}{c.width}}" for c in self.columns)]
        if units is not None:
            lines.append(lead + self.sep.join(f"{u:{c.align}{c.width}}" for u, c in zip(units, self.columns)))
        return "\n".join(line.rstrip() for line in lines)

    def line(self, row: dict) -> str:
        return (self.prefix + self.sep.join(c.cell(row.get(c.key)) for c in self.columns)).rstrip()

    def render(self, rows: Iterable[dict], units: Sequence[str] | None = None) -> str:
        return "\n".join([self.header(units), *(self.line(r) for r in rows)])


def format_grid(header: Sequence[str], body: Sequence[Sequence[str]], first_left: bool = True) -> str:
    """A table whose widths fit its contents: the first column left-aligned, the rest right."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]

    def fmt(cells, lead):
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths)):
            out.append(f"{cell:<{w}}" if (i == 0 and first_left) else f"{cell:>{w}}")
        return (lead + "  ".join(out)).rstrip()

    return "\n".join([fmt(header, "# "), *(fmt(r, "  ") for r in body)])


def human_bytes(n: float) -> str:
    """1024 -> '1K', 268435456 -> '256M', 6 -> '6B' (binary units, as sweep sizes are given)."""
    for unit, scale in (("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{int(n)}B"


def write_csv(path: str | os.PathLike, rows: Sequence[dict], fields: Sequence[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows back as dicts, with numbers turned back into int/float where they parse."""

    def convert(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: convert(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_json(path: str | os.PathLike, meta: dict, rows: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class Panel:
    """One subplot: named series of (x, y) points."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    logx: int | None = 2  # log base for the x axis, None for linear
    logy: bool = True
    x_bytes: bool = True  # label x ticks as 1K, 1M, ...
    styles: dict[str, dict] = field(default_factory=dict)  # per-series matplotlib kwargs


def plot_panels(path: str | os.PathLike, panels: Sequence[Panel], title: str = "", ncols: int = 2,
                note: str = "", sharey: bool = False) -> Path:
    """Write a PNG with one subplot per panel (matplotlib, Agg backend: no display needed);
    ``sharey``: one y axis for all panels, so they compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.6 * nrows), squeeze=False,
                             sharey=sharey)
    for ax, panel in zip(axes.flat, panels):
        for label, (xs, ys) in panel.series.items():
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None and (y > 0 or not panel.logy)]
            if not pts:
                continue
            style = {"marker": "o", "markersize": 3, "linewidth": 1.6, **panel.styles.get(label, {})}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
        if panel.logx:
            ax.set_xscale("log", base=panel.logx)
            if panel.x_bytes:
                ax.xaxis.set_major_locator(LogLocator(base=panel.logx, numticks=40))
                ax.xaxis.set_major_formatter(FuncFormatter(_every_other_pow4))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_minor_formatter(NullFormatter())
        if panel.logy:
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
        ax.tick_params(axis="x", labelsize=8)
        if panel.series:
            ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="0.35", va="bottom")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _every_other_pow4(x: float, _pos=None) -> str:
    """Tick labels for a log2 byte axis: label 1, 4, 16, 64, ... and leave the rest blank."""
    if x <= 0:
        return ""
    e = round(math.log2(x))
    if abs(math.log2(x) - e) > 1e-6 or e % 2:
        return ""
    return human_bytes(2 ** e)
