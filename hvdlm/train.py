"""The training loop: Horovod's five steps around a nanoGPT-style loop, top to bottom.

Every rank runs this same function. The Horovod calls are in ``distributed.py`` (``dist.``);
everything here also runs unchanged as a single process.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hvdlm import checkpoint, watchdog
from hvdlm import distributed as dist
from hvdlm import mfu as model_flops
from hvdlm.config import Config, model_shape, save_toml
from hvdlm.data import load_meta, load_tokenizer, open_tokens, verify_checksums
from hvdlm.data.sampler import ShardedSampler, get_batch, num_sequences, split_global_batch
from hvdlm.errors import HvdlmError
from hvdlm.metrics import Metrics
from hvdlm.model import GPT, GPTConfig
from hvdlm.optim import build_optimizer, lr_at, set_lr


@dataclass
class Data:
    meta: dict
    train: np.ndarray
    val: np.ndarray


def load_data(cfg: Config, block_size: int) -> Data:
    """Open the token shards and check they hold at least a sequence each (same on every rank),
    and unless ``--verify_data false`` that they match their sha256 (a corrupt shard stops here)."""
    meta = load_meta(cfg.data.data_dir)
    if cfg.train.verify_data:
        verify_checksums(cfg.data.data_dir, meta)
    train, val = open_tokens(cfg.data.data_dir, "train", meta), open_tokens(cfg.data.data_dir, "val", meta)
    for split, tokens in (("training", train), ("validation", val)):
        if len(tokens) < block_size + 1:
            raise HvdlmError(
                f"the {split} split of {cfg.data.data_dir} has {len(tokens)} tokens, fewer than one sequence "
                f"of block_size {block_size} + 1; use a shorter block_size or more text")
    return Data(meta, train, val)


@dataclass
class BatchPlan:
    """How one optimizer step's ``global_batch`` sequences are split: ranks x micro x accum."""
    global_batch: int
    micro: int
    accum: int
    peak_lr: float
    min_lr: float


def plan_batches(cfg: Config, size: int, num_train_seqs: int, resume: dict | None) -> BatchPlan:
    """The global batch and lr schedule of the run; a resumed run keeps its own, on any rank count."""
    d, o = cfg.data, cfg.optim
    reference = d.batch_size * cfg.distributed.grad_accum  # what --lr is tuned for: one rank's batch
    if resume is not None:
        global_batch, peak_lr, min_lr = resume["global_batch"], resume["lr"]["peak"], resume["lr"]["min"]
    else:
        global_batch = d.global_batch_size or size * reference
        factor = global_batch / reference  # = the number of ranks unless --global_batch_size is set
        peak_lr = dist.scaled_lr(o.lr, factor, o.lr_scaling)
        min_lr = dist.scaled_lr(o.min_lr, factor, o.lr_scaling)
    try:
        micro, accum = split_global_batch(global_batch, size, d.batch_size)
    except ValueError as e:
        raise HvdlmError(f"{e}; use a rank count that divides it") from None
    if num_train_seqs < global_batch:
        raise HvdlmError(
            f"the training split of {d.data_dir} holds {num_train_seqs} sequences, fewer than one global batch "
            f"of {global_batch} (ranks x batch_size x grad_accum); use a shorter block_size, a smaller batch, "
            "fewer ranks, or more text")
    return BatchPlan(global_batch, micro, accum, peak_lr, min_lr)


def prepare_out_dir(out_dir: str) -> None:
    """Rank 0 makes the output folder and proves it can write there, before any training."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise HvdlmError(f"cannot write to out_dir {out_dir}: {e.strerror or e}") from None


def load_resume_state(cfg: Config, shape: dict, meta: dict) -> dict | None:
    """Rank 0 reads the newest valid checkpoint in ``out_dir``, if any, and checks it fits this run.
    ``state["resumed_from"]`` says which file it is and which newer ones were skipped, and why."""
    found = checkpoint.newest_valid(cfg.train.out_dir) if cfg.train.resume else None
    if found is None:
        return None
    state, path = found.state, found.path
    state["resumed_from"] = {"path": str(path), "note": found.note()}
    checkpoint.check_shape(state, shape, path)
    if state.get("tokenizer") != meta["tokenizer"]:
        raise HvdlmError(
            f"checkpoint {path} was trained on data tokenized as {state.get('tokenizer', {}).get('kind')!r} "
            f"but {cfg.data.data_dir} uses {meta['tokenizer']['kind']!r} with another vocabulary; "
            "point data_dir at the data it was trained on")
    return state


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    # Measured (README, "Precision"): bf16 autocast pays off on GPUs with bf16; on CPUs only for
    # models of ~10M parameters and up, so the CPU default stays fp32 for the tiny default.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def describe_hosts(hosts: list[str]) -> str:
    """'node1 (ranks 0-1), node2 (ranks 2-3)' or, on one host, 'node1'."""
    ranks: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        ranks.setdefault(host, []).append(rank)
    if len(ranks) == 1:
        return hosts[0]
    return ", ".join(f"{h} (rank{'s' if len(r) > 1 else ''} {','.join(map(str, r))})" for h, r in ranks.items())


@torch.no_grad()
def evaluate(model: GPT, val: np.ndarray, cfg: Config, world: dist.World, precision: str) -> float:
    """Mean validation loss over the same ``eval_sequences`` sequences, split across ranks."""
    block_size = model.cfg.block_size
    available = num_sequences(len(val), block_size)
    # spread over the whole split, not its first few files; rank r takes every size-th of them
    chosen = np.unique(np.linspace(0, available - 1, min(cfg.train.eval_sequences, available)).astype(np.int64))
    mine = chosen[world.rank::world.size]
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(mine), cfg.data.batch_size):
        idx = mine[start:start + cfg.data.batch_size]
        x, y = get_batch(val, idx, block_size, world.device)
        with autocast(precision, world.device):
            _, loss = model(x, y)
        total, count = total + loss.item() * len(idx), count + len(idx)
        watchdog.beat()
    model.train()
    total, count = dist.sum_all([total, count], name="eval_loss")
    return total / count


def train(cfg: Config) -> dict:
    """Train as configured; returns the final summary (the same dict on every rank)."""
    # 1. Horovod: start, pin a GPU or size the CPU threads.
    world = dist.init(cfg.distributed.threads)
    # The watchdog ends the job, with one line, if this rank or a peer stops making progress.
    watch = watchdog.start(world, cfg, dist.allgather)

    # Inputs first, on every rank, so bad input stops the job before any training.
    meta = dist.agree(lambda: load_meta(cfg.data.data_dir))
    shape = model_shape(cfg.model, meta["vocab_size"])
    data = dist.agree(lambda: load_data(cfg, shape["block_size"]))
    dist.on_root(lambda: prepare_out_dir(cfg.train.out_dir))
    resume = dist.on_root(lambda: load_resume_state(cfg, shape, data.meta))
    num_train_seqs = num_sequences(len(data.train), shape["block_size"])
    plan = dist.agree(lambda: plan_batches(cfg, world.size, num_train_seqs, resume))
    precision = resolve_precision(cfg.train.precision, world.device)

    torch.manual_seed(cfg.train.seed)
    model = GPT(GPTConfig(**shape)).to(world.device)

    # 2. Shard the data by rank.
    sampler = ShardedSampler(num_train_seqs, plan.micro, world.rank, world.size, cfg.train.seed, plan.accum)

    # 3. The learning rate was scaled with the global batch (plan_batches); wrap the optimizer,
    # before any state is loaded: Horovod rebuilds the optimizer from its param groups.
    optimizer = build_optimizer(model, cfg.optim, plan.peak_lr)
    optimizer = dist.wrap_optimizer(optimizer, model, cfg.distributed.compression,
                                    cfg.distributed.reduce_op, plan.accum)

    # 4. Start every rank from rank 0's state: fresh weights, or the checkpoint being resumed.
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        sampler.load_state_dict(resume["sampler"])
        step = resume["step"]
    dist.broadcast_parameters(model)

    t, o = cfg.train, cfg.optim
    last_step = t.max_steps if not t.stop_after else min(t.max_steps, step + t.stop_after)
    tokens_per_step = plan.global_batch * shape["block_size"]
    if world.is_root:
        save_toml(cfg, Path(t.out_dir) / "config.toml")
    hosts = dist.allgather(world.host)
    metrics = Metrics(t.out_dir, world.is_root, t.max_steps, step, t.progress, tensorboard=t.tensorboard)
    mfu = model_flops.for_run(shape, world.device, precision, world.threads, world.size)
    metrics.info(
        f"hvdlm: {world.size} rank(s) on {describe_hosts(hosts)}, {world.threads} thread(s) per rank on {world.device.type}, "
        f"{model.num_params() / 1e6:.2f}M parameters, {precision}, global batch {plan.global_batch} x "
        f"{shape['block_size']} tokens ({world.size} x {plan.micro} x {plan.accum} micro-steps), "
        f"lr {plan.peak_lr:g}" + (f", resuming at step {step}" if step else ""))
    metrics.info(f"hvdlm: {mfu.describe()}" if mfu else "hvdlm: no MFU: this GPU's peak is not in hvdlm.mfu.GPU_PEAKS")
    if resume is not None and resume["resumed_from"]["note"]:
        metrics.info(resume["resumed_from"]["note"])

    def save_checkpoint():
        watch.phase("checkpointing")
        if world.is_root:
            checkpoint.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "sampler": sampler.state_dict(), "global_batch": plan.global_batch,
                "lr": {"peak": plan.peak_lr, "min": plan.min_lr}, "model_shape": shape,
                "tokenizer": data.meta["tokenizer"], "config": cfg.to_dict(), "world_size": world.size,
            }, t.out_dir, keep=t.keep_checkpoints)

    val_loss = float("nan")
    if step == 0:  # the untrained model's loss: the baseline every later evaluation is read against
        val_loss = evaluate(model, data.val, cfg, world, precision)
        metrics.record("eval", step=0, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50)))
    stop = dist.StopSignals()
    stopped_by = None
    run_start, run_steps, train_time, last_loss = time.perf_counter(), 0, 0.0, float("nan")
    while step < last_step and not stopped_by:
        t0 = time.perf_counter()
        stop.begin_step()
        # Dropout masks from (seed, step, rank): a resumed run draws what an uninterrupted one would.
        torch.manual_seed(hash((t.seed, step, world.rank)))
        lr = lr_at(step, plan.peak_lr, plan.min_lr, o.warmup_steps, t.max_steps)
        set_lr(optimizer, lr)
        loss_sum = 0.0
        for _ in range(plan.accum):
            watch.phase("data loading")
            x, y = get_batch(data.train, sampler.next_indices(), shape["block_size"], world.device)
            watch.phase("forward/backward")
            with autocast(precision, world.device):
                _, loss = model(x, y)
            # Horovod allreduces each gradient as backward produces it (on the last micro-step).
            (loss / plan.accum).backward()
            loss_sum += loss.item()
        # 5. Wait for the averaged gradients, clip them, step.
        watch.phase("allreduce")
        wait, grad_norm = dist.optimizer_step(optimizer, model, o.grad_clip)
        step += 1
        run_steps += 1
        stopped_by = stop.end_step()
        watch.step_done(step)
        step_time = time.perf_counter() - t0
        train_time += step_time
        metrics.advance()

        if step % t.log_interval == 0 or step == last_step or stopped_by:
            (last_loss,) = dist.average([loss_sum / plan.accum], name="train_loss")
            metrics.record("train", step=step, loss=last_loss, lr=lr, grad_norm=grad_norm,
                           tokens_per_s=tokens_per_step / step_time, step_time=step_time, allreduce_wait=wait,
                           **({"mfu": mfu(tokens_per_step / step_time)} if mfu else {}))
        if (t.eval_interval and step % t.eval_interval == 0) or step == last_step:
            watch.phase("evaluation")
            val_loss = evaluate(model, data.val, cfg, world, precision)
            metrics.record("eval", step=step, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50)))
            metrics.info(f"step {step}: train loss {last_loss:.4f}, val loss {val_loss:.4f}, "
                         f"val ppl {math.exp(min(val_loss, 50)):.2f}")
        if (t.checkpoint_interval and step % t.checkpoint_interval == 0) or step == last_step or stopped_by:
            save_checkpoint()
    stop.restore()
    dist.barrier("hvdlm.final")  # no rank exits (and no launcher reaps rank 0) before the last checkpoint is on disk

    if run_steps == 0:  # resumed a finished run: nothing to train, but still report where it stands
        metrics.info(f"checkpoint is at step {step} of max_steps {t.max_steps}: nothing to train "
                     "(raise --max_steps to continue, or --resume false to start over)")
        val_loss = evaluate(model, data.val, cfg, world, precision)
    watch.stop()  # the last collective is behind us: a rank that exits now is not a lost peer
    elapsed = time.perf_counter() - run_start
    summary = {
        "step": step, "max_steps": t.max_steps, "finished": step >= t.max_steps, "stopped_by": stopped_by,
        "val_loss": val_loss, "train_loss": last_loss, "ranks": world.size, "hosts": hosts,
        "threads_per_rank": world.threads,
        "global_batch": plan.global_batch, "micro_batch": plan.micro, "grad_accum": plan.accum,
        "precision": precision, "params": model.num_params(), "seconds": elapsed,
        # throughput of the training steps alone (evaluation and checkpoints excluded)
        "tokens_per_s": tokens_per_step * run_steps / train_time if run_steps else 0.0,
        "tokens_per_s_per_rank": tokens_per_step * run_steps / train_time / world.size if run_steps else 0.0,
    }
    if mfu and run_steps:
        summary["mfu"] = mfu(summary["tokens_per_s"])
    metrics.record("summary", **summary)
    metrics.close()
    if world.is_root:
        ckpt = checkpoint.path_in(t.out_dir)
        if stopped_by:
            print(f"hvdlm: stopped at step {step}/{t.max_steps} on {stopped_by}: checkpoint written to {ckpt}; "
                  "run the same command to resume", flush=True)
        else:
            print(f"hvdlm: done at step {step}/{t.max_steps} in {elapsed:.1f}s: val loss {val_loss:.4f}, "
                  f"{summary['tokens_per_s']:.0f} tokens/s"
                  + (f" ({100 * summary['mfu']:.1f}% of {mfu.against})" if "mfu" in summary else "") + f", checkpoint {ckpt}",
                  flush=True)
        if t.sample_tokens and summary["finished"]:
            from hvdlm.sample import generate_text
            tokenizer = load_tokenizer(cfg.data.data_dir)
            text = generate_text(model, tokenizer, prompt="", max_new_tokens=t.sample_tokens,
                                 device=world.device, seed=t.seed)
            print("--- sample ---\n" + text + "\n--------------", flush=True)
    summary["model"] = model  # for callers in-process (tests, benchmarks)
    return summary
