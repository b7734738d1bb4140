"""``hvdlm bench sync``'s figure: validation loss against wall time, one panel per link. The
panels share one y axis and each carries the free link's fp32 ``none`` run (dotted), so a method
is read against the every-step average at a glance, on any link."""

from __future__ import annotations

from hvdlm.bench.output import Panel

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
REFERENCE = "none, free link"


def loss_panels(rows: list[dict]) -> list[Panel]:
    """One panel per link, in the rows' order."""
    links = dict.fromkeys(r["link"] for r in rows)
    return [loss_panel(link, [r for r in rows if r["link"] == link], rows) for link in links]


def loss_panel(link: str, here: list[dict], rows: list[dict]) -> Panel:
    """From the first evaluation after step 0 (the untrained model's loss would squash the
    differences). A shaped run that stopped early, whose losses are the free run's (checked),
    continues dashed: the free run's later losses at this run's measured speed."""
    methods = [r["method"] for r in rows]
    free = {r["method"]: r for r in rows if r["link"] == "free"}
    series, styles = {}, {}
    for r in here:
        color = COLORS[methods.index(r["method"]) % len(COLORS)]
        evals = [e for e in r["evals"] if e[0] > 0]
        series[r["method"]], styles[r["method"]] = ([e[1] for e in evals], [e[2] for e in evals]), {"color": color}
        twin = free.get(r["method"])
        if r["link"] != "free" and twin and r.get("same_as_free") and evals and r["steps"] < twin["steps"]:
            step, t, _ = evals[-1]
            per_step = r["tokens"] / r["steps"] / r["tokens_per_s"]
            later = [(t + (e[0] - step) * per_step, e[2]) for e in twin["evals"] if e[0] > step]
            name = f"{r['method']} (projected)"
            series[name] = ([t] + [x for x, _ in later], [evals[-1][2]] + [y for _, y in later])
            styles[name] = {"color": color, "linestyle": "--", "marker": None}
    if link != "free" and "none" in free:
        evals = [e for e in free["none"]["evals"] if e[0] > 0]
        series[REFERENCE] = ([e[1] for e in evals], [e[2] for e in evals])
        styles[REFERENCE] = {"color": "black", "linestyle": ":", "marker": None, "linewidth": 1.2}
    return Panel(f"link: {link}", "wall time (s)", "validation loss", series, logx=None, logy=False, x_bytes=False,
                 styles=styles)
