"""A run's inputs, checked before any training: the token shards, the output folder, the
checkpoint to resume from. Each check ends with one HvdlmError line a user can act on."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvdlm import checkpoint
from hvdlm.config import Config
from hvdlm.data import load_meta, open_tokens, verify_checksums
from hvdlm.errors import HvdlmError


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


def prepare_out_dir(out_dir: str) -> None:
    """Make the output folder and prove this process can write there, before any training.
    The probe's name is this process's own: elastic ranks probe the same folder at once, and a
    shared name let one rank delete the file the other was checking."""
    path = Path(out_dir)
    probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
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
    state, path = checkpoint.upgrade(found.state), found.path
    state["resumed_from"] = {"path": str(path), "note": found.note()}
    checkpoint.check_shape(state, shape, path)
    if state.get("tokenizer") != meta["tokenizer"]:
        raise HvdlmError(
            f"checkpoint {path} was trained on data tokenized as {state.get('tokenizer', {}).get('kind')!r} "
            f"but {cfg.data.data_dir} uses {meta['tokenizer']['kind']!r} with another vocabulary; "
            "point data_dir at the data it was trained on")
    return state
