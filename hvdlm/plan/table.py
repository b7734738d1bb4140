"""The rows ``hvdlm plan`` prints: every method, then the fastest within the loss budget."""

from __future__ import annotations

import argparse
import json

from hvdlm.plan import penalty, straggler
from hvdlm.plan.methods import Method, Row, Setting, bottleneck, predict
from hvdlm.sync import EVERY_STEP, PERIODIC


def methods(powersgd_ranks: list[int], sync_every: list[int], overlap_steps: int) -> list[Method]:
    """Every sync mode (``sync.MODES``) at each setting asked for: PowerSGD at each rank, each
    periodic mode at each H, on time and overlapped, on each of its wire types."""
    out = []
    for mode in EVERY_STEP:
        ranks = powersgd_ranks if mode.path == "low_rank" else [0]
        out += [Method(mode.name, rank=r) for r in ranks]
    for h in sync_every:
        for t in (0, min(overlap_steps, h)):
            out += [Method(mode.name, every=h, wire=w, overlap=t) for mode in PERIODIC for w in mode.wires]
    return list(dict.fromkeys(out))


def num(x: float) -> str:
    """4 significant digits, thousands separated, never an exponent: 1107514 -> '1,107,514'."""
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def err(x: float) -> str:
    """An error to 2 significant digits: '±1.1', '±23,000'."""
    x = float(f"{x:.2g}")
    return f"±{x:,.0f}" if x >= 100 else f"±{x:g}"


def rows(s: Setting, ms: list[Method]) -> list[Row]:
    return [predict(s, m) for m in ms]


def describe(s: Setting, share: int, source: str) -> str:
    c = s.cluster
    numel = s.numel
    link = lambda k: f"{k.bandwidth * 8 / 1e9:g} Gbit/s, {k.latency * 1e6:g} us"  # noqa: E731
    shape = s.shape
    return (f"hvdlm plan: {shape['n_layer']} layers x {shape['n_embd']} wide, {shape['n_head']} heads, context "
            f"{shape['block_size']}, vocab {shape['vocab_size']}: {numel / 1e6:.1f}M parameters; {c.ranks} ranks "
            f"({c.hosts} host(s) x {c.local}); {share} sequence(s) a rank in {s.accum} micro-step(s); compute "
            f"{s.compute * 1e3:.4g} ms a step ({source}), spread {s.jitter * 1e3:.3g} ms (the wait for the slowest "
            f"rank: {'none assumed' if not s.jitter else 'x ' + format(straggler.expected_max(c.ranks), '.2f')}); "
            f"{network_words(c, link)}"
            f"{', hierarchical allreduce' if c.hierarchical else ''}; cycle {s.cycle * 1e3:g} ms "
            f"(periodic {s.periodic_cycle * 1e3:g} ms), fusion {s.threshold / 2 ** 20:g} MiB, memory "
            f"{s.mem_bw / 1e9:.3g} GB/s")


def network_words(c, link) -> str:
    """The network as the plan sees it, each default of a GPU host with its source."""
    if c.measured is not None:
        m = c.measured
        others = "".join(f"; {o.dtype}: peak busbw {o.peak / 1e9:.3g} GB/s, {o.hop * 1e6:.3g} us a hop"
                         for o in m.others)
        return (f"allreduce measured ({m.source}: {m.ranks} ranks on {m.hosts} host(s); {m.dtype}: peak busbw "
                f"{m.peak / 1e9:.3g} GB/s, overhead {m.overhead * 1e6:.3g} us, {m.hop * 1e6:.3g} us a hop{others}"
                f"{'' if 'fp16' in m.dtypes else '; fp16 priced per byte as ' + m.dtype})")
    if c.fabric is None:
        return f"between hosts {link(c.inter)}, inside {link(c.intra)}"
    f = c.fabric
    sharp = ", SHARP" if f.sharp else ""
    return (f"NCCL on {f.name}, {f.gpus} GPUs a host: {f.intra} ring {f.ring_busbw / 1e9:g} GB/s, NVLS "
            f"{f'{f.nvls_busbw / 1e9:g} GB/s' if f.nvls_busbw else 'none'}, {f.nics} NIC(s) x {f.nic / 1e9:g} GB/s"
            f"{sharp} [" + "; ".join(f"{what}: {where}" for what, where in f.sources) + "]")


def table(s: Setting, ms: list[Method]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Every row; step ms, tokens/s and efficiency carry +- the network's uncertainty (the cluster's
    ``uncertainty`` of the exposed exchange) plus where Horovod's cycle falls (``methods.cycles``); the
    compute's own error is not in it."""
    header = ["method", "compute ms", "exchange ms", "exposed ms", "step ms", "tokens/s", "efficiency",
              "MB sent/rank/step", "NIC MB/host/step", "allreduce", "bound by", "loss penalty"]
    u = s.cluster.uncertainty
    body, docs = [], []
    for r in rows(s, ms):
        known = penalty.measured(r.method)
        tps = s.tokens_per_step / r.step
        bound = bottleneck(s, r.method)
        d_step = u * r.exposed + r.cycle_error
        d_tps = tps - s.tokens_per_step / (r.step + d_step)
        d_eff = r.compute / r.step - r.compute / (r.step + d_step)
        body.append([r.method.label, num(r.compute * 1e3), f"{num(r.exchange * 1e3)} {err(u * r.exchange * 1e3)}",
                     f"{num(r.exposed * 1e3)} {err(d_step * 1e3)}", f"{num(r.step * 1e3)} {err(d_step * 1e3)}",
                     f"{tps:,.0f} {err(d_tps)}", f"{r.compute / r.step:.0%} ±{d_eff * 100:.0f}", num(r.sent / 1e6),
                     num(r.nic / 1e6), r.algorithm, bound, f"+{known[0]:g}%" if known else "not measured"])
        docs.append({"method": r.method.label, "compute_ms": r.compute * 1e3, "exchange_ms": r.exchange * 1e3,
                     "exposed_ms": r.exposed * 1e3, "step_ms": r.step * 1e3, "tokens_per_s": tps,
                     "efficiency": r.compute / r.step, "sent_bytes_per_step": r.sent, "nic_bytes_per_step": r.nic,
                     "uncertainty": u, "step_ms_error": d_step * 1e3, "tokens_per_s_error": d_tps,
                     "efficiency_error": d_eff, "cycle_error_ms": r.cycle_error * 1e3, "allreduce": r.algorithm,
                     "bound_by": bound, "loss_penalty_pct": known[0] if known else None,
                     "loss_penalty_source": known[1] if known else None})
    return header, body, docs


def report(args: argparse.Namespace, ms: list[Method], s: Setting, share: int, source: str) -> None:
    header, body, docs = table(s, ms)
    setting = describe(s, share, source)
    print(setting)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in body:
        print("| " + " | ".join(line) + " |")
    within = [d for d in docs if d["loss_penalty_pct"] is not None and d["loss_penalty_pct"] <= args.max_loss_penalty]
    best = max(within, key=lambda d: d["tokens_per_s"])
    print(f"hvdlm: fastest within --max_loss_penalty {args.max_loss_penalty:g}%: {best['method']}, "
          f"{best['tokens_per_s']:,.0f} tokens/s ({best['efficiency']:.0%} scaling efficiency), measured loss "
          f"penalty +{best['loss_penalty_pct']:g}% ({best['loss_penalty_source']}). Penalties are from 2-4 ranks "
          f"of small models; local_sgd/diloco's grew with the rank count")
    fastest = max(docs, key=lambda d: d["tokens_per_s"])
    if fastest is not best:
        known, where = fastest["loss_penalty_pct"], fastest["loss_penalty_source"]
        loss = "not measured" if known is None else f"+{known:g}% ({where})"
        print(f"hvdlm: fastest of all: {fastest['method']}, {fastest['tokens_per_s']:,.0f} tokens/s "
              f"({fastest['efficiency']:.0%}), loss penalty {loss}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"setting": setting, "rows": docs, "choice": best["method"]}, fh, indent=1)
