"""The sweep: every dtype x placement x size x backend, interleaved by size; and the whole run
(start, sweep, print, write, fail on #wrong)."""

from __future__ import annotations

import sys

from hvdlm.bench import output
from hvdlm.bench.allreduce.measure import horovod_gather, measure
from hvdlm.bench.allreduce.results import (COLUMNS, CSV_FIELDS, UNITS, header_lines, loadavg, plot, say,
                                          side_by_side)
from hvdlm.bench.allreduce.settings import PLACEMENTS, Settings
from hvdlm.bench.allreduce.startup import Context, start


def sweep(ctx: Context, s: Settings) -> list[dict]:
    """Every dtype x placement x size x backend, printing rows on rank 0 as they come; the rows
    measured before Horovod started are printed first at their size."""
    table = output.Table(COLUMNS)
    rows: list[dict] = []
    early = {(r["dtype"], r["placement"], r["bytes"]): [] for r in ctx.early}
    for r in ctx.early:
        early[(r["dtype"], r["placement"], r["bytes"])].append(r)
    for dtype in s.dtypes:
        for placement in s.placements:
            backends = [b for b in ctx.backends if b.supports(dtype)]
            labels = [b.label for b in ctx.early_backends] + [b.label for b in backends]
            if not labels:
                continue
            say(ctx.rank, f"#\n# {dtype}, {PLACEMENTS[placement]}: {', '.join(labels)}")
            say(ctx.rank, table.header(UNITS))
            for nbytes in s.sizes:
                for row in early.get((dtype, placement, nbytes), []):
                    rows.append(row)
                    say(ctx.rank, table.line(row))
                for b in backends:
                    row = measure(b, nbytes, dtype, placement, s, ctx.rank, ctx.size, ctx.device, horovod_gather)
                    rows.append(row)
                    say(ctx.rank, table.line(row))
    return rows


def run(s: Settings) -> list[dict]:
    """The whole benchmark: start, sweep, print, write CSV/JSON/PNG on rank 0; fail on #wrong."""
    ctx = start(s)
    try:
        for line in header_lines(ctx, s):
            say(ctx.rank, line)
        rows = sweep(ctx, s)
    finally:
        for b in ctx.backends:
            b.close()
    if ctx.rank == 0:
        for dtype in s.dtypes:
            for placement in s.placements:
                text = side_by_side(rows, dtype, placement)
                if text:
                    print("#\n" + text, flush=True)
        meta = {**ctx.meta, "loadavg_end": loadavg(), "notes": ctx.notes}
        s.out_dir.mkdir(parents=True, exist_ok=True)
        written = [output.write_csv(s.out_dir / "allreduce.csv", rows, CSV_FIELDS),
                   output.write_json(s.out_dir / "allreduce.json", meta, rows)]
        if s.plot and rows:
            written.append(plot(rows, meta, s.out_dir / "allreduce.png"))
        print(f"hvdlm: wrote {', '.join(str(p) for p in written)}", flush=True)
    wrong = [r for r in rows if r["wrong"]]
    if wrong:
        what = "; ".join(f"{r['backend']} {r['dtype']} {PLACEMENTS[r['placement']]} {r['bytes']} B: {r['wrong']}"
                         for r in wrong[:4])
        more = f"; and {len(wrong) - 4} more sizes" if len(wrong) > 4 else ""
        if ctx.rank == 0:
            print(f"hvdlm: error: {sum(r['wrong'] for r in wrong)} wrong elements in allreduce results "
                  f"({what}{more})", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return rows
