"""The methods ``hvdlm bench sync`` compares, named from the sync modes (``sync.MODES``): each mode;
each periodic mode on each of its other wire types (``diloco-bf16``); each periodic one with
``-overlap``; and the ``hvdlm train`` flags that run each."""

from __future__ import annotations

from hvdlm.sync import EVERY_STEP, MODES, PERIODIC, Mode

METHODS = list(MODES)  # the sync modes, as ``hvdlm plan`` names them too


def variants() -> list[str]:
    """Every method name ``--methods`` accepts: each mode; each periodic mode on each of its other
    wire types (``diloco-bf16``); and each periodic one with ``-overlap`` after it."""
    out = [m.name for m in EVERY_STEP]
    for m in PERIODIC:
        on_wires = [m.name] + [f"{m.name}-{w}" for w in m.wires[1:]]
        out += on_wires + [f"{v}-overlap" for v in on_wires]
    return out


def parse_method(method: str) -> tuple[Mode, str, bool]:
    """'diloco-bf16-overlap' -> (diloco's Mode, 'bf16', True); 'none' -> (none's Mode, 'none', False)."""
    base, *rest = method.split("-")
    overlap = bool(rest) and rest[-1] == "overlap"
    wire = "-".join(rest[:-1] if overlap else rest)
    mode = MODES[base]
    return mode, wire or mode.wires[0], overlap


def method_flags(method: str, args) -> list[str]:
    mode, wire, overlap = parse_method(method)
    flags = mode.flags(wire)
    if mode.path == "low_rank":
        flags += ["--powersgd_rank", str(args.powersgd_rank)]
    if mode.periodic:
        flags += ["--sync_every", str(args.sync_every)]
    if overlap:
        flags += ["--overlap_steps", str(args.overlap_steps or args.sync_every // 2)]
    return flags
