"""What a plan starts from: the model's parameters, and one rank's compute per optimizer step.

The model: a preset (with shape overrides), a run's ``out_dir`` (its ``config.toml``; the
vocabulary from its data's ``meta.json``), or an ``--init_from`` folder (``model_from_init``). The
parameters are those of hvdlm's own GPT, built on the meta device (shapes only, no memory).

One rank's compute per optimizer step, at this plan's per-rank batch, from the first of:
  --step_ms               given;
  --metrics PATH          a run's metrics.jsonl (or its out_dir): its mean step time minus its
                          allreduce wait (``bench.train.figures``), per token, times this plan's
                          tokens per rank (and its spread from step to step: ``straggler.py``);
  --measure STEPS         that, from a run of ``hvdlm train`` started here for STEPS steps on
                          ``--measure_ranks`` local ranks (horovodrun --gloo) at this plan's
                          per-rank batch;
  --gpu NAME --mfu F      FLOPs per token (``mfu.flops_per_token``) x tokens per rank /
                          (the GPU's dense peak in ``mfu.GPU_PEAKS`` x F).
Memory-bound copies (hvdlm's own exchanges, PowerSGD's passes) run at ``--mem_bw``, else the
GPU's memory bandwidth from the same table, else a copy timed here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from hvdlm.bench.train import BIN, RunSpec, figures, measure
from hvdlm.config import ModelConfig, load_config, model_shape, saved_vocab_multiple
from hvdlm.errors import HvdlmError
from hvdlm.hf import shape_from_folder
from hvdlm.mfu import GPU, flops_per_token
from hvdlm.model import GPT, GPTConfig
from hvdlm.sync.low_rank import LowRank


def vocab_of(data_dir: str | Path, given: int) -> int:
    if given:
        return given
    try:
        return int(json.loads((Path(data_dir) / "meta.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError):
        return 50257  # GPT-2's BPE, when no prepared data says otherwise


def model_from_preset(preset: str, overrides: dict, vocab_size: int) -> dict:
    return model_shape(ModelConfig(preset=preset, **{k: v for k, v in overrides.items() if v}), vocab_size)


def model_from_out_dir(out_dir: str, vocab_size: int) -> dict:
    path = Path(out_dir) / "config.toml"
    if not path.is_file():
        raise HvdlmError(f"--out_dir {out_dir} holds no config.toml (the folder of an `hvdlm train` run)")
    cfg = load_config(str(path))
    cfg.model.vocab_multiple = saved_vocab_multiple(out_dir) or 1  # a config.toml older than the option: unpadded
    return model_shape(cfg.model, vocab_of(cfg.data.data_dir, vocab_size))


def model_from_init(folder: str, block_size: int) -> dict:
    """The model ``hvdlm train --init_from FOLDER`` would train: a GPT-2 folder's config.json (its
    weights are not read: a plan needs shapes only; biases counted, as GPT-2 has them), or an hvdlm
    out_dir's config.toml; ``block_size`` (the run's --block_size) may shorten the context."""
    path = Path(folder)
    if (path / "config.json").is_file():
        shape = shape_from_folder(path, f"--init_from {folder}")
    elif (path / "config.toml").is_file():
        shape = model_from_out_dir(folder, 0)
    else:
        raise HvdlmError(f"--init_from {folder} is neither a Hugging Face GPT-2 folder (config.json) nor an hvdlm "
                         "out_dir (config.toml)")
    if block_size > shape["block_size"]:
        raise HvdlmError(f"--block_size {block_size} is longer than the {shape['block_size']} positions of the "
                         f"model in {folder}")
    # padded as `hvdlm train --init_from` pads it by default: the run's own option, not the folder's
    return dict(shape, block_size=block_size or shape["block_size"], vocab_multiple=ModelConfig().vocab_multiple)


def parameters(shape: dict) -> tuple:
    """((name, shape), ...) of hvdlm's GPT, in registration order, built without memory."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**shape))
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad)


def compute_from_metrics(path: str, tokens_per_rank: int) -> tuple[float, float]:
    """Seconds of one rank's compute for ``tokens_per_rank``, scaled from a run's metrics.jsonl, and
    its spread from step to step (standard deviation, scaled alike)."""
    folder = Path(path).parent if Path(path).name == "metrics.jsonl" else Path(path)
    if not (folder / "metrics.jsonl").is_file():
        raise HvdlmError(f"--metrics {path}: no metrics.jsonl there")
    rows = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    ranks = next((r["ranks"] for r in rows if r.get("kind") == "train"), None)
    if ranks is None or not any(r.get("kind") == "summary" for r in rows):
        raise HvdlmError(f"--metrics {path}: no finished run (train and summary lines) in its metrics.jsonl")
    train = [r for r in rows if r.get("kind") == "train"]
    run = figures(RunSpec(str(folder), [], ranks, 0), folder, warmup=min(2, len(train) - 1), wall=0, cpu=0)
    run_tokens = run["tokens_per_s"] * run["step_ms"] / 1e3 / ranks
    scale = tokens_per_rank / run_tokens
    return run["compute_ms"] / 1e3 * scale, run["compute_sd_ms"] / 1e3 * scale


def compute_by_measuring(shape: dict, per_rank_batch: int, steps: int, ranks: int, data_dir: str,
                         timeout: float = 600) -> tuple[float, float]:
    """Seconds of one rank's compute per step, and its spread from step to step, from ``steps``
    steps of ``hvdlm train`` on ``ranks`` local ranks at this per-rank batch (the first 2 not counted)."""
    launcher = [] if ranks == 1 else [str(BIN / "horovodrun"), "-np", str(ranks), "--gloo"]
    flags = ["--data_dir", data_dir, "--n_layer", str(shape["n_layer"]), "--n_head", str(shape["n_head"]),
             "--n_embd", str(shape["n_embd"]), "--block_size", str(shape["block_size"]),
             "--batch_size", str(per_rank_batch), "--global_batch_size", str(per_rank_batch * ranks),
             "--max_steps", str(steps), "--warmup_steps", "1", "--eval_interval", "0", "--eval_sequences", "1",
             "--sample_tokens", "0", "--progress", "false", "--resume", "false", "--log_interval", "1",
             "--tensorboard", "false", "--checkpoint_interval", "0"]
    threads = max(1, (os.cpu_count() or 1) // ranks)
    with tempfile.TemporaryDirectory(prefix="hvdlm-plan-") as tmp:
        run = measure(RunSpec(f"measure on {ranks} rank(s)", launcher, ranks, threads), flags, Path(tmp), 2, timeout)
    return run["compute_ms"] / 1e3, run["compute_sd_ms"] / 1e3


def powersgd_work(shape: dict, ranks: list[int], min_compression: float, repeats: int = 5) -> dict[int, float]:
    """Seconds of PowerSGD's own work per step at each rank r, measured here per shape: the
    arithmetic hvdlm's PowerSGD runs (``sync.low_rank``) compressing random gradients of this model
    in one process (its mean is its own), so the time is its matmuls, QR, error feedback and
    copies only; the best of ``repeats`` after one untimed step. Holds the model, its gradients and
    the residuals in memory (3 x 4 bytes a parameter)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device(device):
        model = GPT(GPTConfig(**shape))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for r in ranks:
        low = LowRank(r, min_compression=min_compression, seed=0)
        low.setup([n for n, _ in named], params)
        times = []
        for _ in range(repeats + 1):
            grads = [p.grad.clone() for p in params]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            low.average_(grads, lambda flat, name: flat)  # one rank: the mean is its own
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[r] = min(times[1:])
    return out


def compute_from_gpu(shape: dict, tokens_per_rank: int, gpu: GPU, mfu: float, precision: str) -> float:
    peak = gpu.peak(precision)
    if peak is None:
        raise HvdlmError(f"--gpu {gpu.name} has no {precision} tensor cores: give --precision fp32")
    return flops_per_token(shape) * tokens_per_rank / (peak * mfu)


def preflight_bandwidth(path: str) -> float:
    """Bytes/s between hosts from ``hvdlm preflight --json``: the slowest rank's point-to-point
    figure (it records no latency: that stays --link's)."""
    try:
        ranks = json.loads(Path(path).read_text())["per_rank"]
        gbps = min(float(r["p2p_gbps"]) for r in ranks)
    except (OSError, ValueError, KeyError, TypeError):
        raise HvdlmError(f"--preflight {path} is not the JSON of `hvdlm preflight --json` with per-rank "
                         "figures") from None
    if not gbps > 0:  # a rank that measured nothing: no time a transfer could take
        raise HvdlmError(f"--preflight {path}: a rank's p2p_gbps is {gbps:g}, out of range: more than 0")
    return gbps * 1e9


def memory_bandwidth(gpu: GPU | None) -> float:
    """Bytes/s for memory-bound copies: the GPU's memory, or a copy timed here (the best of a few)."""
    if gpu is not None:
        return gpu.memory
    a = torch.empty(8 << 20)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.numel() * 4 / best  # read + write
