"""The loss each method was measured to cost against fp32 every-step sync, from benchmarks/RESULTS.md.

The worst cell measured for each setting counts (a plan should not promise the best draw). All of
them are small models (tiny, mini) at 2-4 ranks on this project's machine: the penalty of
local_sgd/diloco grew from 2 to 4 ranks at a fixed global batch, so at more ranks it is a lower
bound, said in the row. A setting never measured has no penalty and is never recommended.
"""

from __future__ import annotations

from hvdlm.plan.methods import Method

ADVICE = "RESULTS.md, \"Past 2 ranks ...: the advice at 2 and 4 ranks\" (tiny, 1,000 steps, 2 corpora)"
SLOW_LINK = "RESULTS.md, \"Communication on a slow link\" (mini, 300 steps, 2 ranks)"
SHORTER_H = "RESULTS.md, \"Closing the loss gap\" (mini, 300 steps, 2 ranks)"

# (name, H or rank, overlap steps) -> (worst val-loss penalty in %, source). The wire of diloco's
# exchange changed the loss by at most 0.02 points (fp32 = bf16 at H=50, bf16 = int8 at H=25).
MEASURED: dict[tuple[str, int, int], tuple[float, str]] = {
    ("none", 0, 0): (0.0, "the baseline"),
    ("fp16", 0, 0): (0.02, SLOW_LINK),
    ("bf16", 0, 0): (0.01, SLOW_LINK),
    ("powersgd", 4, 0): (4.45, SLOW_LINK),
    ("powersgd", 8, 0): (2.00, ADVICE),
    ("diloco", 50, 0): (6.30, ADVICE),
    ("diloco", 25, 0): (7.08, ADVICE + ", outer lr 1.2, momentum 0"),
    ("diloco", 25, 4): (3.67, SHORTER_H + ", outer lr 1.2, momentum 0"),
    ("diloco", 25, 12): (4.77, SHORTER_H + ", outer lr 1.2, momentum 0"),
    ("local_sgd", 50, 0): (6.04, ADVICE),
}


def measured(m: Method) -> tuple[float, str] | None:
    """(penalty in %, source), or None when this setting was never measured."""
    return MEASURED.get((m.name, m.setting, m.overlap))
