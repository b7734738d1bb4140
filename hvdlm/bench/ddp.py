"""The PyTorch DDP baseline for ``hvdlm bench train``: the same model, data, batch split, optimizer
and threads as ``hvdlm train``, with ``DistributedDataParallel`` over gloo instead of Horovod.

    torchrun --nproc_per_node 2 -m hvdlm.bench.ddp <hvdlm train flags>

Rank 0 writes ``metrics.jsonl`` rows in hvdlm's format (``train`` rows with step times; DDP
overlaps its allreduce with backward and offers no wait time to report) and a ``summary``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from hvdlm.config import add_config_args, config_from_args
from hvdlm.data.sampler import get_batch
from hvdlm.distributed.world import cores_per_rank
from hvdlm.inputs import read_inputs
from hvdlm.metrics import Metrics
from hvdlm.model import GPT, GPTConfig
from hvdlm.optim import build_optimizer, lr_at, set_lr
from hvdlm.precision import autocast, resolve_precision


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m hvdlm.bench.ddp")
    add_config_args(parser)  # hvdlm train's options
    cfg = config_from_args(parser.parse_args(argv))
    tdist.init_process_group("gloo")
    rank, size = tdist.get_rank(), tdist.get_world_size()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    torch.set_num_threads(cfg.distributed.threads or cores_per_rank(local_size))
    device = torch.device("cpu")

    inputs = read_inputs(cfg, size, on_root=None)  # the same checks and batch plan as hvdlm train
    shape, data, state = inputs.shape, inputs.data, inputs.state
    state.replan(rank, size)
    plan, micro, accum, sampler = state.plan, state.micro, state.accum, state.sampler
    precision, _ = resolve_precision(cfg.train.precision, device, shape["n_embd"], torch.get_num_threads())

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank, as DDP expects
    model = DistributedDataParallel(GPT(GPTConfig(**shape)))
    optimizer = build_optimizer(model.module, cfg.optim, plan.peak_lr)
    t = cfg.train
    metrics = Metrics(t.out_dir, rank == 0, t.max_steps, 0, progress=False)
    tokens_per_step = plan.global_batch * shape["block_size"]
    start, train_time = time.perf_counter(), 0.0
    for step in range(1, t.max_steps + 1):
        t0 = time.perf_counter()
        lr = lr_at(step - 1, plan.peak_lr, plan.min_lr, cfg.optim.warmup_steps, t.max_steps)
        set_lr(optimizer, lr)
        for i in range(accum):
            x, y = get_batch(data.train, sampler.next_indices(), shape["block_size"], device)
            # gradients are allreduced on the last micro-step only, as Horovod's backward_passes_per_step
            sync = contextlib.nullcontext() if i == accum - 1 else model.no_sync()
            with sync:
                with autocast(precision, device):
                    _, loss = model(x, y)
                (loss / accum).backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_time = time.perf_counter() - t0
        train_time += step_time
        if step % t.log_interval == 0:
            metrics.record("train", step=step, loss=loss.item(), lr=lr, grad_norm=float("nan"),
                           tokens_per_s=tokens_per_step / step_time, step_time=step_time,
                           allreduce_wait=float("nan"))
    metrics.record("summary", step=t.max_steps, ranks=size, threads_per_rank=torch.get_num_threads(),
                   global_batch=plan.global_batch, micro_batch=micro, grad_accum=accum,
                   precision=precision, seconds=time.perf_counter() - start,
                   tokens_per_s=tokens_per_step * t.max_steps / train_time)
    metrics.close()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
