"""How ranks synchronize: the one object the training loop calls wherever ranks exchange anything.

The interface and what the strategies share are in ``base.py``; each strategy is a module:

  ``allreduce.py``  every step, the averaged gradient: Horovod's DistributedOptimizer (fp32 or
                    fp16 on the wire), Adasum, or hvdlm's own bf16 allreduce; or, for a run of
                    one process, no exchange at all
  ``powersgd.py``   every step, a low-rank approximation of the averaged gradient, with error
                    feedback (Vogels et al. 2019)
  ``periodic.py``   each rank steps alone; every H steps the parameters are averaged (local SGD),
                    or their average change is applied by an outer Nesterov SGD (DiLoCo)

``build(cfg)`` picks one from ``--sync`` and ``--compression`` (``config.validate_sync`` has
already refused the combinations that make no sense).
"""

from __future__ import annotations

from hvdlm import distributed as dist
from hvdlm.config import Config
from hvdlm.sync.allreduce import Adasum, Alone, Bf16Allreduce, GradientAllreduce
from hvdlm.sync.base import StepStats, Sync
from hvdlm.sync.periodic import Periodic
from hvdlm.sync.powersgd import PowerSGD

__all__ = ["Sync", "StepStats", "build"]


def build(cfg: Config) -> Sync:
    """The strategy the configuration asks for."""
    d = cfg.distributed
    if d.sync != "every_step":
        outer = (d.outer_lr, d.outer_momentum) if d.sync == "diloco" else None
        return Periodic(d.sync_every, cfg.train.max_steps, outer, d.compression, d.overlap_steps)
    if d.compression == "powersgd":
        return PowerSGD(d.powersgd_rank, d.powersgd_start or cfg.optim.warmup_steps, d.powersgd_min_compression,
                        cfg.train.seed)
    if d.compression == "bf16":
        return Bf16Allreduce()
    if dist.alone() and not d.elastic:  # one process for the whole run (an elastic one may grow)
        return Alone()
    return Adasum(d.compression) if d.reduce_op == "adasum" else GradientAllreduce(d.compression)
