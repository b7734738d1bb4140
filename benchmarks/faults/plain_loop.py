"""A plain Horovod training loop, as Horovod's PyTorch examples write one: the baseline of the
fault matrix (docs/faults.md). It trains hvdlm's GPT on the same token shard, but with none of
hvdlm's fault handling: no watchdog, no one-line reports, ``torch.save`` straight onto the
checkpoint file on rank 0.

    horovodrun -np 2 --gloo python plain_loop.py DATA_DIR OUT_DIR [--steps N] [--checkpoint_every K]

Fault hooks (environment variables):
    PLAIN_RAISE_AT=RANK:STEP   that rank raises RuntimeError at that step
    HVDLM_PROBE_SLOW_SAVE=S    torch.save takes ~S seconds (the same hook as hvdlm's fault tests),
                               standing in for the seconds a large model's checkpoint takes
Each rank prints ``plain: rank R step S`` every step (so a harness can see it progress).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import horovod.torch as hvd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hvdlm.model import GPT, GPTConfig  # noqa: E402  (the model only: the loop is Horovod's own)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("out_dir")
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--checkpoint_every", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--block_size", type=int, default=32)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=32)
    args = p.parse_args()

    if os.environ.get("HVDLM_PROBE_SLOW_SAVE"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        from rank_probe import slow_torch_save
        slow_torch_save(float(os.environ["HVDLM_PROBE_SLOW_SAVE"]))
    hvd.init()
    torch.set_num_threads(1)
    meta = json.loads((Path(args.data_dir) / "meta.json").read_text())
    tokens = np.memmap(Path(args.data_dir) / "train.bin", dtype=meta["dtype"], mode="r")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=meta["vocab_size"], block_size=args.block_size, n_layer=args.n_layer,
                          n_head=2, n_embd=args.n_embd))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3 * hvd.size())
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    raise_rank, raise_step = (int(x) for x in os.environ.get("PLAIN_RAISE_AT", "-1:-1").split(":"))
    rng = np.random.default_rng(hvd.rank())
    n_seq = (len(tokens) - 1) // args.block_size
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, n_seq, args.batch_size)
        rows = idx[:, None] * args.block_size + np.arange(args.block_size + 1)[None, :]
        chunk = torch.from_numpy(tokens[rows].astype(np.int64))
        if hvd.rank() == raise_rank and step == raise_step:
            raise RuntimeError(f"injected fault at step {step}")
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"plain: rank {hvd.rank()} step {step} loss {loss.item():.4f}", flush=True)
        if args.checkpoint_every and step % args.checkpoint_every == 0 and hvd.rank() == 0:
            with open(Path(args.out_dir) / "checkpoint.pt", "wb") as fh:  # what torch.save(path) does
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, fh)
    if hvd.rank() == 0:
        print(f"plain: done at step {args.steps} at {time.time():.0f}", flush=True)


if __name__ == "__main__":
    main()
