"""``hvdlm train``: Horovod's five steps, then the one step loop (``loop.py``), top to bottom.

Every rank runs this same function. The Horovod calls are in ``distributed.py`` (``dist.``);
everything here also runs unchanged as a single process. Elastic training (``elastic.py``) builds
the same job with ``build_job`` and runs the same loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hvdlm import checkpoint, loop, pretrained, sync, watchdog
from hvdlm import distributed as dist
from hvdlm.config import Config, model_shape, save_toml
from hvdlm.data import load_meta
from hvdlm.data.sampler import num_sequences
from hvdlm.evaluate import Evaluator
from hvdlm.inputs import Data, load_data, load_resume_state, prepare_out_dir
from hvdlm.model import GPT, GPTConfig
from hvdlm.optim import build_optimizer
from hvdlm.precision import resolve_precision
from hvdlm.state import TrainState, plan_batches


def build_job(cfg: Config, world: dist.World, watch, data: Data, shape: dict, state: TrainState,
              resume: dict | None) -> loop.Job:
    """The model, the optimizer wrapped by the sync strategy, and the loop's components; with
    ``resume``, loaded from that checkpoint. The same for plain and elastic runs."""
    torch.manual_seed(cfg.train.seed)
    model = GPT(GPTConfig(**shape)).to(world.device)
    # 3. The learning rate was scaled with the global batch (plan_batches); wrap the optimizer
    # before any state is loaded: Horovod rebuilds the optimizer from its param groups.
    strategy = sync.build(cfg)
    state.replan(world.rank, world.size)
    optimizer = strategy.wrap(build_optimizer(model, cfg.optim, state.plan.peak_lr), model, state.accum)
    t = cfg.train
    checkpointer = checkpoint.Checkpointer(
        t.out_dir, t.checkpoint_interval, t.keep_checkpoints,
        {"model": model, "optimizer": optimizer, "train": state}, strategy,
        {"model_shape": shape, "tokenizer": data.meta["tokenizer"], "config": cfg.to_dict()})
    if resume is not None:
        # shared state from rank 0's file; each rank's own (residuals, parameters between syncs) from its own file
        for note in checkpointer.load(resume, world):
            if world.is_root:
                loop.say(note)
    precision = resolve_precision(t.precision, world.device)
    evaluator = Evaluator(data.val, t.eval_sequences, cfg.data.batch_size, t.eval_interval, precision)
    return loop.Job(cfg, model, optimizer, strategy, data, shape, precision, evaluator, checkpointer, watch,
                    dist.StopSignals())


def train(cfg: Config) -> dict:
    """Train as configured; returns the final summary (the same dict on every rank)."""
    # 1. Horovod: start, pin a GPU or size the CPU threads.
    world = dist.init(cfg.distributed.threads, periodic=cfg.distributed.sync != "every_step")
    # The watchdog ends the job, with one line, if this rank or a peer stops making progress.
    watch = watchdog.start(world, cfg, dist.allgather)

    # Inputs first, on every rank, so bad input stops the job before any training.
    meta = dist.agree(lambda: load_meta(cfg.data.data_dir))
    start = dist.on_root(lambda: pretrained.inspect(cfg, meta)) if cfg.train.init_from else None  # rank 0 reads
    shape = start.shape if start else model_shape(cfg.model, meta["vocab_size"])
    data = dist.agree(lambda: load_data(cfg, shape["block_size"]))
    dist.on_root(lambda: prepare_out_dir(cfg.train.out_dir))
    resume = dist.on_root(lambda: load_resume_state(cfg, shape, data.meta))
    num_train_seqs = num_sequences(len(data.train), shape["block_size"])
    plan = dist.agree(lambda: plan_batches(cfg, world.size, num_train_seqs, resume))

    # 2. Shard the data by rank: each rank's sampler reads its slice of every global batch.
    state = TrainState(plan, num_train_seqs, cfg.train.seed, cfg.data.batch_size)
    job = build_job(cfg, world, watch, data, shape, state, resume)
    pretrained.start_from(start, job.model, resume, world.is_root)  # --init_from: rank 0's weights, broadcast next
    t = cfg.train
    state.last_step = t.max_steps if not t.stop_after else min(t.max_steps, state.step + t.stop_after)

    # 4. Start every rank from rank 0's state: fresh weights, or the checkpoint being resumed.
    job.sync.start(job.model)
    if world.is_root:
        save_toml(cfg, Path(t.out_dir) / "config.toml")
        if resume is not None and resume["resumed_from"]["note"]:
            loop.say(resume["resumed_from"]["note"])

    # 5. The step loop: forward, backward, the sync strategy exchanges, clip, step.
    summary = loop.run(job, state, world, loop.Session())
    job.stop.restore()
    watch.stop()  # the last collective is behind us: a rank that exits now is not a lost peer
    loop.finish(job, summary, world)
    summary["model"] = job.model  # for callers in-process (tests, benchmarks)
    return summary
