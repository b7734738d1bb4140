"""The optimizer (AdamW or SGD, weight decay on matrices only) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from hvdlm.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    # Decay the matrices (linear weights, embeddings); not norms or biases, as in GPT-2.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.beta1)
    # fused: one kernel for every parameter's update on a GPU (nanoGPT's default there)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def scaled_lr(lr: float, factor: float, mode: str) -> float:
    """A global batch ``factor`` times the one ``lr`` was tuned for takes a larger step (Goyal et
    al.: linear; or sqrt)."""
    return {"linear": lr * factor, "sqrt": lr * math.sqrt(factor), "none": lr}[mode]


def lr_at(step: int, peak: float, floor: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor`` at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return floor
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
