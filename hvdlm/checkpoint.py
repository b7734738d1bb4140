"""Checkpoints: written by rank 0 atomically, read back with ``weights_only=True``.

A checkpoint is one file, ``<out_dir>/checkpoint.pt``: model and optimizer state, the step, the
data position, the model shape and the config. It is first written to a temporary file in the
same folder, flushed to disk, then renamed over the old one, so a crash or a full disk mid-write
leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from hvdlm.errors import HvdlmError

FILENAME = "checkpoint.pt"


def path_in(out_dir: str | Path) -> Path:
    return Path(out_dir) / FILENAME


def save(state: dict, out_dir: str | Path) -> Path:
    final = path_in(out_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # make the rename itself durable
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HvdlmError(f"no checkpoint at {path}") from None
    except Exception as e:  # truncated, not a checkpoint, or holding objects we do not unpickle
        raise HvdlmError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def check_shape(state: dict, shape: dict, path: str | Path) -> None:
    """Refuse a checkpoint of another model before loading it fails with a wall of size errors."""
    saved = state.get("model_shape", {})
    keys = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")
    diff = [f"{k}={saved.get(k)} (this run: {shape[k]})" for k in keys if saved.get(k) != shape[k]]
    if diff:
        raise HvdlmError(
            f"checkpoint {path} is from a different model: {', '.join(diff)}; "
            "use another out_dir, or --resume false to start over"
        )
