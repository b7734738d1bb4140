"""What each sync strategy is, apart from how it runs: the one table everything outside ``sync/``
asks instead of comparing mode names. Plain Python (no Horovod), so the command line, the
checkpoint's tags, ``hvdlm plan`` and ``hvdlm bench sync`` read it before (or without) Horovod.

A mode is a ``Mode``: its name (what ``plan`` and ``bench sync`` call it), how it exchanges (the
path ``plan`` costs), whether it exchanges every H steps (then Horovod runs at the slower periodic
cycle and the lr is each rank's own, not scaled with the ranks), the tag of its checkpointed state,
the wire types it sends (their bytes: ``hvdlm/wire_bytes.py``) and the ``hvdlm train`` flags that select it.
Each strategy class carries its mode (``Sync.mode``). A new strategy is its module, one entry here
and one branch in ``build.py`` (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdlm.launcher import PERIODIC_CYCLE_MS


@dataclass(frozen=True)
class Mode:
    name: str
    path: str  # hooks: Horovod's DistributedOptimizer; fused: one buffer after backward; low_rank: PowerSGD; periodic
    kind: str  # the tag of its checkpointed state: a resume under another kind drops it
    periodic: bool = False  # an exchange every --sync_every steps, not every step
    wires: tuple[str, ...] = ("none",)  # what it can send: its first is the default

    @property
    def lr_scales(self) -> bool:
        """Every-step sync takes one step on the global batch, so the lr scales with it; a periodic
        mode's inner optimizer steps on each rank's own batch, at the lr tuned for that batch."""
        return not self.periodic

    @property
    def cycle_ms(self) -> str | None:
        """Horovod's cycle under this mode, where hvdlm sets one (a user's HOROVOD_CYCLE_TIME wins)."""
        return PERIODIC_CYCLE_MS if self.periodic else None

    def flags(self, wire: str | None = None) -> list[str]:
        """The ``hvdlm train`` flags that select this mode (with ``wire`` on a periodic mode's exchange)."""
        if not self.periodic:
            return ["--compression", self.name]
        return ["--sync", self.name] + (["--compression", wire] if wire and wire != "none" else [])


MODES = {m.name: m for m in (
    Mode("none", "hooks", "every_step"),
    Mode("fp16", "hooks", "every_step", wires=("fp16",)),
    Mode("bf16", "fused", "every_step", wires=("bf16",)),
    Mode("powersgd", "low_rank", "powersgd"),
    Mode("local_sgd", "periodic", "local_sgd", periodic=True),
    Mode("diloco", "periodic", "diloco", periodic=True, wires=("none", "fp16", "bf16", "int8")),
)}
EVERY_STEP = tuple(m for m in MODES.values() if not m.periodic)
PERIODIC = tuple(m for m in MODES.values() if m.periodic)


def mode_of_config(d) -> Mode:
    """The mode a run's ``DistributedConfig`` selects."""
    return mode_of(d.sync, d.compression)


def mode_of(sync: str, compression: str) -> Mode:
    """The mode ``--sync`` and ``--compression`` select (a periodic mode takes --compression as
    its exchange's wire type)."""
    if sync in MODES and MODES[sync].periodic:
        return MODES[sync]
    return MODES[compression]
