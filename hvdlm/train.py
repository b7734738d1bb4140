"""``hvdlm train``: Horovod's five steps, then the one step loop (``loop.py``), top to bottom.

Every rank runs this same function. The Horovod calls are in ``distributed/`` (``dist.``);
everything here also runs unchanged as a single process. Elastic training (``elastic.py``) sets up
the same job with ``setup`` and runs the same loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hvdlm import checkpoint, loop, pretrained, watchdog
from hvdlm import distributed as dist
from hvdlm.config import Config, save_toml
from hvdlm.evaluate import Evaluator
from hvdlm.inputs import Inputs, read_inputs
from hvdlm.model import GPT, GPTConfig
from hvdlm.optim import build_optimizer
from hvdlm.precision import compiles, configure_matmuls, resolve_precision
from hvdlm.state import TrainState
from hvdlm.sync import mode_of_config
from hvdlm.sync.build import build_strategy


def build_job(cfg: Config, world: dist.World, watch, inputs: Inputs) -> loop.Job:
    """The model, the optimizer wrapped by the sync strategy, and the loop's components; resuming,
    loaded from the checkpoint; on a first start with ``--init_from``, rank 0's model takes the
    pretrained weights (step 4's broadcast gives them to every rank). The same for plain and elastic runs."""
    torch.manual_seed(cfg.train.seed)
    configure_matmuls(world.device)
    model = GPT(GPTConfig(**inputs.shape)).to(world.device)
    # 3. The learning rate was scaled with the global batch (plan_batches); wrap the optimizer
    # before any state is loaded: Horovod rebuilds the optimizer from its param groups.
    strategy = build_strategy(cfg)
    optimizer = strategy.wrap(build_optimizer(model, cfg.optim, inputs.state.plan.peak_lr), model)
    t = cfg.train
    checkpointer = checkpoint.Checkpointer(
        t.out_dir, t.checkpoint_interval, t.keep_checkpoints,
        {"model": model, "optimizer": optimizer, "train": inputs.state}, strategy,
        {"model_shape": inputs.shape, "tokenizer": inputs.data.meta["tokenizer"], "config": cfg.to_dict()},
        background=t.background_save and not cfg.distributed.elastic)  # an elastic reset may come mid-write
    if inputs.resume is not None:
        # shared state from rank 0's file; each rank's own (residuals, parameters between syncs) from its own file
        for note in checkpointer.load(inputs.resume, world):
            if world.is_root:
                loop.say(note)
    pretrained.start_from(inputs.start, model, inputs.resume, world.is_root)  # --init_from: rank 0's weights
    precision, why = resolve_precision(t.precision, world.device, inputs.shape["n_embd"], world.threads)
    compiled = compiles(t.compile, world.device)
    if compiled:
        model.compile()  # in place: the state dict keeps its names (checkpoints, export, Horovod's hooks)
    evaluator = Evaluator(inputs.data.val, t.eval_sequences, cfg.data.batch_size, t.eval_interval, precision)
    return loop.Job(cfg, model, optimizer, strategy, inputs.data, inputs.shape, precision, evaluator, checkpointer,
                    watch, dist.StopSignals(), precision_why=why, compiled=compiled)


def setup(cfg: Config, world: dist.World, watch, size: int, everyone: Callable, on_root: Callable
          ) -> tuple[loop.Job, TrainState]:
    """Inputs checked, the batch planned for ``size`` ranks, the job built (and resumed), the
    effective config written: what plain and elastic training share before the loop."""
    inputs = read_inputs(cfg, size, everyone, on_root)
    job = build_job(cfg, world, watch, inputs)
    state, t = inputs.state, cfg.train
    state.last_step = t.max_steps if not t.stop_after else min(t.max_steps, state.step + t.stop_after)
    if world.is_root:
        save_toml(cfg, Path(t.out_dir) / "config.toml")
        if inputs.resume is not None and inputs.resume["resumed_from"]["note"]:
            loop.say(inputs.resume["resumed_from"]["note"])
    return job, state


def start(cfg: Config) -> tuple[dist.World, watchdog.Watchdog | watchdog.Idle]:
    """What plain and elastic runs start with: Horovod (at the sync mode's cycle: step 1), then the
    watchdog, which ends the job with one line if this rank or a peer stops making progress."""
    world = dist.init(cfg.distributed.threads, cycle_ms=mode_of_config(cfg.distributed).cycle_ms)
    return world, watchdog.start(world, cfg, dist.allgather)


def end(job: loop.Job, summary: dict, world: dist.World) -> dict:
    """What plain and elastic runs end with, after the last collective: the signal handlers
    restored, the watchdog stopped (a rank that exits now is not a lost peer), rank 0's last lines."""
    job.stop.restore()
    job.watch.stop()
    loop.finish(job, summary, world)
    return summary


def train(cfg: Config) -> dict:
    """Train as configured; returns the final summary (the same dict on every rank)."""
    # 1. Horovod: start, pin a GPU or size the CPU threads; the watchdog.
    world, watch = start(cfg)

    # Inputs first, on every rank, so bad input stops the job before any training. 2. The data is
    # sharded by rank: each rank's sampler reads its slice of every global batch.
    job, state = setup(cfg, world, watch, world.size, dist.agree, dist.on_root)

    # 4. Start every rank from rank 0's state: fresh weights, or the checkpoint being resumed.
    job.sync.start(job.model)

    # 5. The step loop: forward, backward, the sync strategy exchanges, clip, step.
    summary = loop.run(job, state, world, loop.Session())
    return end(job, summary, world)
