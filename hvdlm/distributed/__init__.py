"""Every Horovod call in hvdlm lives in this package, so the data-parallel surface reads in one place.

Horovod's five steps, and where ``train.py`` takes them:
  1. ``init()``                       hvd.init(), then pin the GPU by local rank or size CPU threads
  2. (data/sampler.py)                shard the data by rank
  3. ``wrap_optimizer()``             wrap the optimizer (the lr is scaled in ``optim.scaled_lr``)
  4. ``broadcast_parameters()``, ``broadcast_object()``  start every rank from rank 0's state
  5. ``synchronize()``                wait for the allreduce; then clip and step under
                                      ``skip_synchronize()`` (``sync.base.clip_and_step``)

By concern:
  ``world.py``        start-up and the environment: init, the World, the solo engine, CPU defaults
  ``collectives.py``  broadcasts, gathers, small averages, agreeing on an error or a stop signal
  ``optimizer.py``    the gradient allreduce through Horovod's DistributedOptimizer (or Adasum)
  ``exchange.py``     hvdlm's own fused averages: fp32/fp16 allreduce, bf16/int8 as alltoall +
                      allgather of ``codecs.py``'s payloads
  ``elastic_state.py`` elastic state: commit, restore, sync after a reset
Everything also runs at size 1 (plain ``hvdlm train``), where the collectives return at once.
"""

from hvdlm.distributed.collectives import (StopSignals, Unverified, agree, allgather, allreduce_sum_, average,
                                           barrier, broadcast_object, broadcast_parameters, gather_objects, on_root,
                                           ranks_where, settled, sum_all)
from hvdlm.distributed.elastic_state import ElasticState, elastic_launched, elastic_run
from hvdlm.distributed.exchange import Average, allreduce_average, bf16_average
from hvdlm.distributed.optimizer import adasum_step, set_accumulation, skip_synchronize, synchronize, wrap_optimizer
from hvdlm.distributed.world import (World, allreduce_transport, alone,
                                     apply_cpu_defaults, cores_per_rank, gloo_timeout_ms, init, is_peer_failure, rank,
                                     size, solo_engine, world_now)
from hvdlm.launcher import LAUNCHER_VARS

__all__ = ["Average", "ElasticState", "LAUNCHER_VARS", "StopSignals", "Unverified",
           "World", "adasum_step", "agree", "allgather", "allreduce_average", "allreduce_sum_", "allreduce_transport",
           "alone", "apply_cpu_defaults", "average", "barrier", "bf16_average", "broadcast_object",
           "broadcast_parameters", "cores_per_rank", "elastic_launched", "elastic_run", "gather_objects",
           "gloo_timeout_ms", "init", "is_peer_failure", "on_root", "ranks_where", "rank",
           "set_accumulation", "settled", "size", "skip_synchronize", "solo_engine", "sum_all", "synchronize", "world_now",
           "wrap_optimizer"]
