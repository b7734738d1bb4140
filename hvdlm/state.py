"""Where a run stands: the step, the data position and the batch plan, in one ``TrainState``.

One object serves checkpoint save, resume and elastic commit alike (``state_dict`` /
``load_state_dict``). The global batch and the lr schedule are fixed when a run starts; how they
split over ranks (micro-batch x micro-steps) and which sequences each rank reads follow from the
world size, so ``replan(rank, size)`` rebuilds both after a resume on another rank count or an elastic
reset, and the data goes on where it was without repeating or skipping a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdlm.config import Config
from hvdlm.data.sampler import ShardedSampler, split_global_batch
from hvdlm.errors import HvdlmError
from hvdlm.optim import scaled_lr
from hvdlm.sync import mode_of_config


@dataclass
class BatchPlan:
    """One optimizer step's ``global_batch`` sequences and the lr schedule tuned for them."""
    global_batch: int
    peak_lr: float
    min_lr: float


def plan_batches(cfg: Config, size: int, num_train_seqs: int, resume: dict | None) -> BatchPlan:
    """The global batch and lr schedule of the run; a resumed run keeps its own, on any rank count.
    ``size`` is the rank count the run is planned for (an elastic job's largest)."""
    d, o = cfg.data, cfg.optim
    reference = d.batch_size * cfg.distributed.grad_accum  # what --lr is tuned for: one rank's batch
    if resume is not None:
        saved = resume["train"]
        plan = BatchPlan(saved["global_batch"], saved["lr"]["peak"], saved["lr"]["min"])
    else:
        global_batch = d.global_batch_size or size * reference
        # Every-step sync takes one step on the global batch: the lr scales with it (= the number of
        # ranks unless --global_batch_size is set). Under local_sgd/diloco each rank's optimizer steps
        # on its own batch, so the inner lr is the one tuned for that batch, at any rank count.
        factor = global_batch / reference if mode_of_config(cfg.distributed).lr_scales else 1.0
        plan = BatchPlan(global_batch, scaled_lr(o.lr, factor, o.lr_scaling),
                         scaled_lr(o.min_lr, factor, o.lr_scaling))
    split(plan.global_batch, size, d.batch_size)
    if num_train_seqs < plan.global_batch:
        raise HvdlmError(
            f"the training split of {d.data_dir} holds {num_train_seqs} sequences, fewer than one global batch "
            f"of {plan.global_batch} (ranks x batch_size x grad_accum); use a shorter block_size, a smaller batch, "
            "fewer ranks, or more text")
    return plan


def split(global_batch: int, size: int, max_micro: int) -> tuple[int, int]:
    """(micro-batch per rank, micro-steps) for ``global_batch`` on ``size`` ranks, or one clear error."""
    try:
        return split_global_batch(global_batch, size, max_micro)
    except ValueError as e:
        raise HvdlmError(f"{e}; use a rank count that divides it") from None


class TrainState:
    """The step, the data position and the plan; the sampler and micro-batch split of the current
    world come from ``replan``."""

    def __init__(self, plan: BatchPlan, num_train_seqs: int, seed: int, max_micro: int):
        self.plan, self.num_train_seqs, self.seed, self.max_micro = plan, num_train_seqs, seed, max_micro
        self.step = 0
        self.last_step = 0  # where this invocation stops: max_steps, or earlier with --stop_after
        self.evaluated = False  # the untrained model's loss is measured once, at step 0
        self.position: dict | None = None  # the sampler's place in the data, None at the start
        self.sampler: ShardedSampler | None = None
        self.micro = self.accum = 0

    def replan(self, rank: int, size: int) -> None:
        """Split the global batch over ``size`` ranks and place this rank's sampler where the data is."""
        position = self.state_dict()["sampler"]  # where the data is now, on any world size
        self.micro, self.accum = split(self.plan.global_batch, size, self.max_micro)
        self.sampler = ShardedSampler(self.num_train_seqs, self.micro, rank, size, self.seed, self.accum)
        if position is not None:
            self.sampler.load_state_dict(position)

    def state_dict(self) -> dict:
        position = self.sampler.state_dict() if self.sampler is not None else self.position
        return {"step": self.step, "sampler": position, "global_batch": self.plan.global_batch,
                "lr": {"peak": self.plan.peak_lr, "min": self.plan.min_lr},
                "evaluated": self.evaluated, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.position = state["step"], state["sampler"]
        self.plan = BatchPlan(state["global_batch"], state["lr"]["peak"], state["lr"]["min"])
        self.evaluated = state.get("evaluated", self.step > 0)
        self.last_step = state.get("last_step", self.last_step)
        if self.sampler is not None and self.position is not None:
            self.sampler.load_state_dict(self.position)
