"""The strategy object for a configuration: the one place a mode's name becomes a class. Built
before Horovod starts (nothing here asks the world); each strategy carries its ``modes.Mode``
(``Sync.mode``)."""

from __future__ import annotations

from hvdlm.config import Config
from hvdlm.sync.allreduce import Adasum, Bf16Allreduce, GradientAllreduce
from hvdlm.sync.base import Sync
from hvdlm.sync.modes import mode_of_config
from hvdlm.sync.periodic import Periodic
from hvdlm.sync.powersgd import PowerSGD


def build_strategy(cfg: Config) -> Sync:
    """The strategy ``--sync`` and ``--compression`` (and ``--reduce_op``) select."""
    d = cfg.distributed
    mode = mode_of_config(d)
    if mode.periodic:
        outer = (d.outer_lr, d.outer_momentum) if mode.name == "diloco" else None
        return Periodic(d.sync_every, cfg.train.max_steps, outer, d.compression, d.overlap_steps)
    if mode.name == "powersgd":
        return PowerSGD(d.powersgd_rank, d.powersgd_start or cfg.optim.warmup_steps, d.powersgd_min_compression,
                        cfg.train.seed)
    if mode.name == "bf16":
        return Bf16Allreduce()
    # none, fp16: Horovod's DistributedOptimizer
    return (Adasum if d.reduce_op == "adasum" else GradientAllreduce)(d.compression, d.elastic)
