"""How ranks synchronize: the one object the training loop calls wherever ranks exchange anything.

The interface and what the strategies share are in ``base.py``; each strategy is a module:

  ``allreduce.py``  every step, the averaged gradient: Horovod's DistributedOptimizer (fp32 or
                    fp16 on the wire), Adasum, or hvdlm's own bf16 allreduce (a process that
                    trains alone exchanges nothing)
  ``powersgd.py``   every step, a low-rank approximation of the averaged gradient, with error
                    feedback (Vogels et al. 2019)
  ``periodic.py``   each rank steps alone; every H steps the parameters are averaged (local SGD),
                    or their average change is applied by an outer Nesterov SGD (DiLoCo)

``build.build_strategy(cfg)`` makes the one the configuration asks for (``config.validate_sync``
has already refused the combinations that make no sense). What a mode *is* (periodic or not, lr
scaling, Horovod's cycle, its checkpoint tag, its wire bytes) is in ``modes.py`` and its byte
arithmetic in ``hvdlm/wire_bytes.py``: plain Python, and this package's ``__init__`` imports nothing
else, so ``hvdlm plan`` reads them without starting Horovod.
"""

from hvdlm.sync.modes import EVERY_STEP, MODES, PERIODIC, Mode, mode_of, mode_of_config

__all__ = ["EVERY_STEP", "MODES", "Mode", "PERIODIC", "mode_of", "mode_of_config"]
