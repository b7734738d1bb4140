"""The loss each method was measured to cost against fp32 every-step sync, read from the one
recorded source, ``penalties.json`` (each figure with the benchmarks/RESULTS.md section and table
row it comes from; tests/test_plan.py checks each against that row).

The worst cell measured for each setting counts (a plan should not promise the best draw). All of
them are small models (tiny, mini) at 2-4 ranks on this project's machine: the penalty of
local_sgd/diloco grew from 2 to 4 ranks at a fixed global batch, so at more ranks it is a lower
bound, said in the row. A setting never measured has no penalty and is never recommended.
"""

from __future__ import annotations

import json
from pathlib import Path

from hvdlm.plan.methods import Method

RECORDED = Path(__file__).with_name("penalties.json")


def _load() -> dict[tuple[str, int, int], tuple[float, str]]:
    """(method, its setting, overlap steps) -> (penalty in %, where it was measured)."""
    out = {}
    for e in json.loads(RECORDED.read_text())["penalties"]:
        source = "the baseline" if e["section"] is None else f'RESULTS.md, "{e["section"]}"'
        note = f", {e['note']}" if e.get("note") else ""
        out[(e["method"], e["setting"], e["overlap"])] = (e["pct"], source + note)
    return out


MEASURED = _load()


def measured(m: Method) -> tuple[float, str] | None:
    """(penalty in %, source), or None when this setting was never measured."""
    return MEASURED.get((m.name, m.setting, m.overlap))
