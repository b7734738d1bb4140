"""The one step loop: plain training, elastic training and the training benchmark all run ``run``.

A run differs from another only in its ``Session`` (how it announces itself and when it commits
its state: never in a plain run, every ``commit_interval`` steps under Horovod elastic) and in its
``Sync`` strategy (``sync/``: how ranks exchange). The step itself is written once, here, and
reads top to bottom; the components decide when they act (``evaluator.due``,
``checkpointer.due``, ``metrics.due``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from hvdlm import checkpoint
from hvdlm import mfu as model_flops
from hvdlm import distributed as dist
from hvdlm.config import Config
from hvdlm.console import say
from hvdlm.data.sampler import get_batch
from hvdlm.errors import HvdlmError
from hvdlm.evaluate import Evaluator, perplexity
from hvdlm.inputs import Data
from hvdlm.metrics import Metrics
from hvdlm.model import padded_vocab
from hvdlm.optim import lr_at, set_lr
from hvdlm.precision import autocast
from hvdlm.state import TrainState
from hvdlm.sync.base import Sync


@dataclass
class Timing:
    """This process's training time, kept across elastic resets (for the summary's tokens/s)."""
    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    train_time: float = 0.0


@dataclass
class Job:
    """Everything the loop works on, built once by ``train.py`` (or ``elastic.py``)."""
    cfg: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sync: Sync
    data: Data
    shape: dict
    precision: str
    evaluator: Evaluator
    checkpointer: checkpoint.Checkpointer
    watch: object  # watchdog.Watchdog or watchdog.Idle
    stop: dist.StopSignals
    timing: Timing = field(default_factory=Timing)
    hosts: list[str] = field(default_factory=list)  # each rank's host, in rank order
    precision_why: str = ""  # how --precision auto chose (precision.resolve_precision)
    compiled: bool = False  # --compile: the model's forward went through torch.compile


class Session:
    """A plain run: one world for the whole run, nothing to commit."""

    def enter(self, job: Job, state: TrainState, world: dist.World, metrics: Metrics) -> None:
        """Say what the run is, once it is planned for this world."""
        metrics.info(
            f"hvdlm: {world.size} rank(s) on {describe_hosts(job.hosts)}, {world.threads} thread(s) per rank on "
            f"{world.device.type}, {describe_params(job)}, {describe_precision(job)}, "
            f"{describe_batch(state, world, job)}, {describe_lr(state, job)}"
            + (f", resuming at step {state.step}" if state.step else ""))

    def commit(self, job: Job, state: TrainState) -> None:
        pass


def describe_hosts(hosts: list[str]) -> str:
    """'node1 (ranks 0-1), node2 (ranks 2-3)' or, on one host, 'node1'."""
    ranks: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        ranks.setdefault(host, []).append(rank)
    if len(ranks) == 1:
        return hosts[0]
    return ", ".join(f"{h} (rank{'s' if len(r) > 1 else ''} {','.join(map(str, r))})" for h, r in ranks.items())


def describe_params(job: Job) -> str:
    """'124.37M parameters (vocabulary 50,257, padded to 50,304)': the count depends on the vocabulary
    it assumes, and counts the padding rows (trained and exchanged like the rest, though no token)."""
    vocab, rows = job.shape["vocab_size"], padded_vocab(job.shape)
    padding = f", padded to {rows:,}" if rows != vocab else ""
    return f"{job.model.num_params() / 1e6:.2f}M parameters (vocabulary {vocab:,}{padding})"


def describe_precision(job: Job) -> str:
    """'fp32' or 'bf16 (auto: bf16 matmuls 3.10x fp32's on this CPU), compiled'."""
    text = f"{job.precision} ({job.precision_why})" if job.precision_why else job.precision
    return text + (", compiled" if job.compiled else "")


def describe_lr(state: TrainState, job: Job) -> str:
    """'lr 0.004' (scaled for the global batch) or, under local_sgd/diloco, the inner lr as given."""
    if job.sync.mode.lr_scales:
        return f"lr {state.plan.peak_lr:g}"
    return f"lr {state.plan.peak_lr:g} (inner, each rank's batch: not scaled by the rank count)"


def describe_batch(state: TrainState, world: dist.World, job: Job) -> str:
    text = (f"global batch {state.plan.global_batch} x {job.shape['block_size']} tokens "
            f"({world.size} x {state.micro} x {state.accum} micro-steps)")
    how = job.sync.describe()
    return f"{text}, {how}" if how and world.size > 1 else text


def seed_device(seed: int, device: torch.device) -> None:
    """Seed the generator dropout draws from on ``device``. Not torch.manual_seed: it seeds every
    device type, and each one not started (CUDA, XPU, MTIA on a CPU host) records a stack trace
    for later, at every step: a cost a small model's step feels (benchmarks/RESULTS.md)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def run(job: Job, state: TrainState, world: dist.World, session: Session) -> dict:
    """Train from ``state`` to ``state.last_step`` (or a stop signal) on this world; returns the
    summary (the same on every rank). Under elastic, Horovod calls this again after each reset."""
    t, o = job.cfg.train, job.cfg.optim
    model, optimizer, sync, watch = job.model, job.optimizer, job.sync, job.watch
    state.replan(world.rank, world.size)
    job.stop.start()
    sync.set_accumulation(optimizer, state.accum)
    optimizer.zero_grad()
    tokens_per_step = state.plan.global_batch * job.shape["block_size"]
    metrics = Metrics(t.out_dir, world.is_root, t.max_steps, state.step, t.progress, tensorboard=t.tensorboard,
                      log_interval=t.log_interval)
    try:
        job.hosts = dist.allgather(world.host)
        session.enter(job, state, world, metrics)
        # MFU against this world's peak (a CPU's is measured once per host and thread count, then cached)
        mfu = model_flops.for_run(job.shape, world.device, job.precision, world.threads, world.size)
        metrics.info(f"hvdlm: {mfu.describe()}" if mfu else "hvdlm: no MFU: this GPU's peak is not in hvdlm.mfu.GPU_PEAKS")
        sent_mark, step_mark = sync.sent_bytes, state.step  # bytes per step between two train records
        val_loss, last_loss = float("nan"), float("nan")
        if not state.evaluated:  # the untrained model's loss: the baseline every later one is read against
            val_loss = job.evaluator(model, world)
            metrics.record("eval", step=state.step, val_loss=val_loss, val_ppl=perplexity(val_loss), ranks=world.size)
            state.evaluated = True
        stopped_by, run_steps = None, 0
        while state.step < state.last_step and not stopped_by:
            t0 = time.perf_counter()
            # Dropout masks from (seed, step, rank): a resumed run draws what an uninterrupted one would.
            seed_device(hash((t.seed, state.step, world.rank)), world.device)
            lr = lr_at(state.step, state.plan.peak_lr, state.plan.min_lr, o.warmup_steps, t.max_steps)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=world.device)  # read back only on logged steps
            for _ in range(state.accum):
                watch.phase("data loading")
                x, y = get_batch(job.data.train, state.sampler.next_indices(), job.shape["block_size"], world.device)
                watch.phase("forward/backward")
                with autocast(job.precision, world.device):
                    _, loss = model(x, y)
                (loss / state.accum).backward()
                loss_sum += loss.detach()
            # Ranks exchange here (Horovod's DistributedOptimizer by default): clip, step.
            watch.phase("allreduce")
            stats = sync.step(optimizer, model, o.grad_clip)
            state.step += 1
            wait = stats.wait + sync.after_step(state.step, model)
            t1 = time.perf_counter()  # the stop check started a step ago: it queues behind an overlapped exchange's slice
            stopped_by = job.stop.after_step(state.step, t1 - t0)
            wait += time.perf_counter() - t1
            watch.step_done(state.step)
            job.checkpointer.prepare(world)  # once: the host copies a background save fills, allocated behind training
            logged = metrics.due(state.step, state.last_step, stopped_by)
            if logged or job.checkpointer.due(state.step, state.last_step, stopped_by):
                sync.check(state.step)  # the exchanges' finiteness, read here only: never before a step needs it
            if logged:
                # A blocking allreduce: it waits for Horovod's next cycle, and behind an exchange still
                # in flight (overlapped local_sgd/diloco), so its time is the step's, and a wait.
                t1 = time.perf_counter()
                (last_loss,) = dist.average([loss_sum.item() / state.accum], name="train_loss")
                wait += time.perf_counter() - t1
            step_time = time.perf_counter() - t0
            run_steps += 1
            job.timing.steps += 1
            job.timing.train_time += step_time
            metrics.advance()

            if logged:
                bytes_per_step = (sync.sent_bytes - sent_mark) / (state.step - step_mark)
                sent_mark, step_mark = sync.sent_bytes, state.step
                grad_norm = float("nan") if stats.grad_norm is None else float(stats.grad_norm)
                metrics.record("train", step=state.step, loss=last_loss, lr=lr, grad_norm=grad_norm,
                               tokens_per_s=tokens_per_step / step_time, step_time=step_time,
                               allreduce_wait=wait, sync_bytes=sync.sent_bytes, bytes_per_step=bytes_per_step,
                               ranks=world.size, **({"mfu": mfu(tokens_per_step / step_time)} if mfu else {}))
            if job.evaluator.due(state.step, state.last_step):
                watch.phase("evaluation")
                val_loss = job.evaluator(model, world)
                metrics.record("eval", step=state.step, val_loss=val_loss, val_ppl=perplexity(val_loss),
                               ranks=world.size)
                metrics.info(f"step {state.step}: train loss {last_loss:.4f}, val loss {val_loss:.4f}, "
                             f"val ppl {perplexity(val_loss):.2f}")
            if job.checkpointer.due(state.step, state.last_step, stopped_by):
                watch.phase("checkpointing")
                job.checkpointer.save(world)
            if not stopped_by:
                session.commit(job, state)
        job.stop.finish()
        job.checkpointer.wait(world)  # the last step's (or the stop's) checkpoint is on disk, on every rank
        dist.barrier("hvdlm.final")  # no rank exits (and no launcher reaps rank 0) before that

        if run_steps == 0 and job.timing.steps == 0:  # resumed a finished run: report where it stands
            metrics.info(f"checkpoint is at step {state.step} of max_steps {t.max_steps}: nothing to train "
                         "(raise --max_steps to continue, or --resume false to start over)")
            val_loss = job.evaluator(model, world)
        summary = summarize(job, state, world, stopped_by, val_loss, last_loss, tokens_per_step)
        if mfu and job.timing.steps:
            summary["mfu"], summary["mfu_against"] = mfu(summary["tokens_per_s"]), mfu.against
        metrics.record("summary", **summary)
        return summary
    except HvdlmError as e:
        if e.everywhere:  # every rank stops here: the checkpoint being written before the error lands
            job.checkpointer.settle()
        raise
    finally:
        metrics.close()


def summarize(job: Job, state: TrainState, world: dist.World, stopped_by, val_loss, last_loss,
              tokens_per_step: int) -> dict:
    timing, t = job.timing, job.cfg.train
    # throughput of the training steps alone (evaluation and checkpoints excluded)
    tokens_per_s = tokens_per_step * timing.steps / timing.train_time if timing.steps else 0.0
    return {
        "step": state.step, "max_steps": t.max_steps, "finished": state.step >= t.max_steps, "stopped_by": stopped_by,
        "val_loss": val_loss, "train_loss": last_loss, "ranks": world.size, "hosts": job.hosts,
        "threads_per_rank": world.threads, "global_batch": state.plan.global_batch, "micro_batch": state.micro,
        "grad_accum": state.accum, "precision": job.precision, "params": job.model.num_params(),
        "seconds": time.perf_counter() - timing.start,
        "tokens_per_s": tokens_per_s, "tokens_per_s_per_rank": tokens_per_s / world.size,
    }


def finish(job: Job, summary: dict, world: dist.World) -> None:
    """Rank 0's last lines: where the run stopped or how it ended, and a sample of text."""
    if not world.is_root:
        return
    t = job.cfg.train
    ckpt = checkpoint.path_in(t.out_dir)
    if summary["stopped_by"]:
        say(f"hvdlm: stopped at step {summary['step']}/{t.max_steps} on {summary['stopped_by']}: checkpoint "
            f"written to {ckpt}; run the same command to resume")
    else:
        say(f"hvdlm: done at step {summary['step']}/{t.max_steps} on {world.size} rank(s) in "
            f"{summary['seconds']:.1f}s: val loss {summary['val_loss']:.4f}, {summary['tokens_per_s']:.0f} tokens/s"
            + (f" ({100 * summary['mfu']:.1f}% of {summary['mfu_against']})" if "mfu" in summary else "")
            + f", checkpoint {ckpt}")
    if t.sample_tokens and summary["finished"]:
        from hvdlm.data import load_tokenizer
        from hvdlm.sample import generate_text

        text = generate_text(job.model, load_tokenizer(job.cfg.data.data_dir), prompt="",
                             max_new_tokens=t.sample_tokens, device=world.device, seed=t.seed)
        say("--- sample ---\n" + text + "\n--------------")

