"""The bare PyTorch baseline for ``hvdlm bench train``: the loop a user would write by hand.

    python -m hvdlm.bench.bare <hvdlm train flags>

The same model (hvdlm's GPT), data (the prepared shards, through training's reader), batch, optimizer (AdamW with
hvdlm's decay groups and lr schedule, fused on a GPU), device (the first GPU if there is one, else
the CPU), precision (``--precision auto`` resolved as training does), ``--compile``, TF32, gradient
clipping and threads as ``hvdlm train`` on one rank, and nothing else: no Horovod, no watchdog, no checksum check of the data,
no evaluation, no checkpoint, no progress printing. Sequences are drawn at random (nanoGPT's
way) rather than by hvdlm's sampler; reading them costs the same. What this loop spends beside
the model's own step is the floor hvdlm's loop is measured against.

Rank-free; writes ``metrics.jsonl`` rows of hvdlm's format (one ``train`` row per logged step and
a ``summary``) so the benchmark reads both the same way, with plain ``json`` after each step's
timing is taken.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hvdlm import dropout as hvdlm_dropout
from hvdlm.config import add_config_args, config_from_args, model_shape
from hvdlm.data import load_meta, open_tokens
from hvdlm.data.sampler import get_batch
from hvdlm.model import GPT, GPTConfig
from hvdlm.optim import build_optimizer, lr_at, set_lr
from hvdlm.precision import autocast, compiles, configure_matmuls, resolve_precision


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m hvdlm.bench.bare")
    add_config_args(parser)
    parser.add_argument("--save_model", default="", help="after the timed loop, write the trained model's "
                        "weights and shape there (torch.save), for a benchmark to evaluate")
    parser.add_argument("--torch_dropout", action="store_true", help="torch's own dropout and attention on the "
                        "CPU too (what nanoGPT computes), not hvdlm's cheaper masks (hvdlm.dropout)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    hvdlm_dropout.TORCH_DROPOUT = args.torch_dropout
    torch.set_num_threads(cfg.distributed.threads or 1)
    meta = load_meta(cfg.data.data_dir)
    shape = model_shape(cfg.model, meta["vocab_size"])
    tokens = open_tokens(cfg.data.data_dir, "train", meta)  # training's reader: one file or many shards
    T, t, o = shape["block_size"], cfg.train, cfg.optim
    # the benchmark gives global_batch_size = batch_size: one micro-step, lr as given
    batch = cfg.data.global_batch_size or cfg.data.batch_size
    lr_peak, lr_min = o.lr, o.min_lr
    # the device hvdlm's rank 0 would take (distributed.world.init): GPU 0, else the CPU
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    configure_matmuls(device)
    precision, _ = resolve_precision(t.precision, device, shape["n_embd"], torch.get_num_threads())

    torch.manual_seed(t.seed)
    model = GPT(GPTConfig(**shape)).to(device)
    if compiles(t.compile, device):
        model.compile()
    optimizer = build_optimizer(model, o, lr_peak)
    rng = np.random.default_rng(t.seed)
    num_seqs = (len(tokens) - 1) // T
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    train_time = 0.0
    for step in range(1, t.max_steps + 1):
        t0 = time.perf_counter()
        lr = lr_at(step - 1, lr_peak, lr_min, o.warmup_steps, t.max_steps)
        set_lr(optimizer, lr)
        x, y = get_batch(tokens, rng.integers(0, num_seqs, batch), T, device)
        with autocast(precision, device):
            _, loss = model(x, y)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logged = step % t.log_interval == 0
        # a logged step reads its loss (on a GPU: waits for the step), as hvdlm's logged steps do
        loss_value = loss.item() if logged else None
        step_time = time.perf_counter() - t0
        train_time += step_time
        if logged:
            log.write(json.dumps({"kind": "train", "step": step, "loss": loss_value, "lr": lr,
                                  "tokens_per_s": batch * T / step_time, "step_time": step_time,
                                  "allreduce_wait": math.nan}) + "\n")
    log.write(json.dumps({"kind": "summary", "step": t.max_steps, "ranks": 1, "threads_per_rank": torch.get_num_threads(),
                          "global_batch": batch, "micro_batch": batch, "grad_accum": 1,
                          "precision": precision, "seconds": time.perf_counter() - start,
                          "tokens_per_s": batch * T * t.max_steps / train_time}) + "\n")
    log.close()
    if args.save_model:
        torch.save({"model_shape": shape, "model": model.state_dict()}, args.save_model)


if __name__ == "__main__":
    main(sys.argv[1:])
