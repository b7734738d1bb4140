"""hvdlm's defaults against nanoGPT's CPU default (fp32, eager, a plain loop) on one rank, at
nanoGPT's character model's shape: 6 layers, 6 heads, 384 wide, 256 tokens of context, batch 12,
dropout 0.2 (issue 31's check of ``--precision auto``).

    .venv/bin/python benchmarks/nanogpt_cpu.py [--steps 250] [--rounds 2] [--data_dir data/default]

Each round runs, in alternating order (a noisy machine drifts; interleaving cancels the drift):

* ``hvdlm train`` with its defaults (``--precision auto``, ``--compile auto``, the vocabulary
  padded to a multiple of 64), 1 rank;
* the bare loop (``python -m hvdlm.bench.bare``: the same model, data, optimizer and schedule in
  a hand-written loop, nothing else) at fp32, eager, the vocabulary unpadded, torch's own dropout
  and attention (``--torch_dropout``): what nanoGPT does on a CPU (its autocast context is a no-op
  there, and its README turns compile off).

Both get the same seed, steps, lr schedule and threads. Their speed is the training steps'
tokens/s each writes in its summary (start-up, evaluation and the checkpoint excluded). Their
models are then evaluated the same way: fp32, training's evaluator, the same ``--eval_sequences``
validation sequences, so that "at equal validation loss" compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hvdlm import checkpoint
from hvdlm.data import load_meta, open_tokens
from hvdlm.distributed import init
from hvdlm.evaluate import Evaluator
from hvdlm.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
HVDLM = [sys.executable, "-m", "hvdlm.cli"]
BARE = [sys.executable, "-m", "hvdlm.bench.bare"]
# nanoGPT's config/train_shakespeare_char.py shape and regularisation (its batch of 64 made 12,
# the figure nanoGPT's README gives for a CPU)
SHAPE = ["--preset", "mini", "--block_size", "256", "--batch_size", "12", "--global_batch_size", "12",
         "--dropout", "0.2"]


def summary_of(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "summary"][-1]


def run(kind: str, out: Path, args: argparse.Namespace) -> dict:
    common = SHAPE + ["--data_dir", args.data_dir, "--out_dir", str(out), "--max_steps", str(args.steps),
                      "--threads", str(args.threads), "--seed", str(args.seed)]
    if kind == "hvdlm":  # its defaults; nothing asked of it that training does not need
        cmd = HVDLM + ["train", *common, "--eval_interval", "0", "--eval_sequences", "4", "--sample_tokens", "0",
                       "--progress", "false"]
    else:
        cmd = BARE + [*common, "--precision", "fp32", "--compile", "false", "--vocab_multiple", "1",
                      "--torch_dropout", "--save_model", str(out / "model.pt")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{kind} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    # hvdlm's start line says the precision and why ("bf16 (auto: bf16 matmuls 2.10x fp32's on this CPU)")
    start_line = next((line for line in proc.stdout.splitlines() if "rank(s) on" in line), "")
    return {"kind": kind, "out": out, "wall": wall, "summary": summary_of(out), "start_line": start_line}


def load_model(result: dict) -> GPT:
    if result["kind"] == "hvdlm":
        state = checkpoint.load(checkpoint.path_in(result["out"]))
    else:
        state = torch.load(result["out"] / "model.pt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**state["model_shape"]))
    model.load_state_dict(state["model"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "default"))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--eval_sequences", type=int, default=256)
    parser.add_argument("--keep", default="", help="keep the runs' folders here (default: a temporary folder)")
    args = parser.parse_args()
    if not (Path(args.data_dir) / "meta.json").exists():
        subprocess.run(HVDLM + ["prepare", "--out_dir", args.data_dir], check=True, stdout=subprocess.DEVNULL)
    work = Path(args.keep or tempfile.mkdtemp(prefix="nanogpt-cpu-"))
    print(f"# {args.rounds} round(s) of {args.steps} steps, {args.threads} threads; load average "
          f"{os.getloadavg()[0]:.2f} at the start; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)
    results = []
    for r in range(args.rounds):
        order = ("hvdlm", "bare") if r % 2 == 0 else ("bare", "hvdlm")
        for kind in order:
            res = run(kind, work / f"round{r + 1}-{kind}", args)
            res["round"] = r + 1
            res["load"] = os.getloadavg()[0]
            results.append(res)
            s = res["summary"]
            print(f"round {r + 1} {kind}: {s['tokens_per_s']:.0f} tokens/s, precision {s['precision']}, "
                  f"wall {res['wall']:.1f} s, load {res['load']:.2f}", flush=True)
            if res["start_line"]:
                print(f"  {res['start_line']}", flush=True)
    # one evaluator for every model: fp32, the same validation sequences
    world = init(threads=args.threads)
    meta = load_meta(args.data_dir)
    evaluate = Evaluator(open_tokens(args.data_dir, "val", meta), args.eval_sequences, 12, 0, "fp32")
    print(f"\n| round | hvdlm default tokens/s | nanoGPT CPU default (bare fp32) tokens/s | speed-up | "
          f"val loss hvdlm | val loss bare | difference |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for r in range(1, args.rounds + 1):
        pair = {res["kind"]: res for res in results if res["round"] == r}
        h, b = pair["hvdlm"], pair["bare"]
        vh, vb = evaluate(load_model(h), world), evaluate(load_model(b), world)
        ratio = h["summary"]["tokens_per_s"] / b["summary"]["tokens_per_s"]
        ratios.append(ratio)
        print(f"| {r} | {h['summary']['tokens_per_s']:.0f} ({h['summary']['precision']}) | "
              f"{b['summary']['tokens_per_s']:.0f} | {ratio:.2f}x | {vh:.4f} | {vb:.4f} | {100 * (vh / vb - 1):+.2f}% |")
    ratios.sort()
    print(f"\nspeed-up, median of {len(ratios)} round(s): {ratios[len(ratios) // 2]:.2f}x; runs kept in {work}")


if __name__ == "__main__":
    main()
