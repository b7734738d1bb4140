"""A run's inputs, checked before any training: the token shards, the output folder, the
checkpoint to resume from, the batch plan. Each check ends with one HvdlmError line a user can act
on. ``read_inputs`` is the one sequence plain and elastic training, the elastic launcher's check
and the DDP baseline all run; they differ only in how a check is shared between ranks."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from hvdlm import checkpoint, pretrained
from hvdlm.config import Config, model_shape, saved_vocab_multiple
from hvdlm.data import load_meta, open_tokens, verify_checksums
from hvdlm.data.sampler import num_sequences
from hvdlm.distributed import Unverified, settled
from hvdlm.errors import HvdlmError
from hvdlm.state import TrainState, plan_batches

T = TypeVar("T")


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


def load_resume_state(cfg: Config, shape: dict, meta: dict, verify: bool = True) -> dict | Unverified | None:
    """Rank 0 reads the newest valid checkpoint in ``out_dir``, if any, and checks it fits this run.
    ``state["resumed_from"]`` says which file it is and which newer ones were skipped, and why.

    With ``verify`` False the checksum is left for ``distributed.on_root`` to check while it sends
    the state (an ``Unverified``); if it fails, the fallback reads again, verifying first."""
    found = checkpoint.newest_valid(cfg.train.out_dir, verify) if cfg.train.resume else None
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
    return state if verify else Unverified(state, found.check, lambda: load_resume_state(cfg, shape, meta))


def keep_vocab_padding(cfg: Config) -> None:
    """A run that resumes keeps the vocabulary padding it started with, whatever ``--vocab_multiple``
    says now: its checkpoint's embedding, moments and per-rank state have that many rows. Its
    config.toml says which (a run from before the option has none: unpadded); every rank reads it
    alone, as elastic ranks must. With no checkpoint, or ``--resume false``, the option holds; the
    effective config then records it for the next resume."""
    if cfg.train.resume and checkpoint.candidates(cfg.train.out_dir):
        saved = saved_vocab_multiple(cfg.train.out_dir)
        if saved is not None:
            cfg.model.vocab_multiple = saved


@dataclass
class Inputs:
    """What a run starts from, checked: the data, the model's shape, the checkpoint to resume
    (rank 0's; None elsewhere under elastic, or when there is none) and where the run stands."""
    data: Data
    shape: dict
    resume: dict | None
    state: TrainState
    start: pretrained.Start | None = None  # --init_from: the pretrained model's shape and where its weights are


def _here(fn: Callable[[], T]) -> T:
    return settled(fn())


def read_inputs(cfg: Config, size: int, everyone: Callable = _here, on_root: Callable | None = _here) -> Inputs:
    """Check every input in the order a user would fix them, and plan the batches for ``size`` ranks
    (an elastic job's largest). ``everyone(fn)`` runs a check on each rank (``distributed.agree``
    makes one rank's error every rank's); ``on_root(fn)`` reads the checkpoint on rank 0 and shares
    it (``distributed.on_root``, which checks its checksum while sending it; an ``on_root`` that
    sends nothing checks it first: ``distributed.settled``); ``on_root=None`` reads none (a check
    before launching)."""
    meta = everyone(lambda: load_meta(cfg.data.data_dir))
    keep_vocab_padding(cfg)
    # --init_from: rank 0 reads the pretrained model's config and checks it against the flags and the data
    start = on_root(lambda: pretrained.inspect(cfg, meta)) if cfg.train.init_from and on_root else None
    shape = start.shape if start else model_shape(cfg.model, meta["vocab_size"])
    data = everyone(lambda: load_data(cfg, shape["block_size"]))
    everyone(lambda: prepare_out_dir(cfg.train.out_dir))  # every rank: each writes its own checkpoint files
    resume = on_root(lambda: load_resume_state(cfg, shape, data.meta, verify=False)) if on_root else None
    num_train_seqs = num_sequences(len(data.train), shape["block_size"])
    plan = everyone(lambda: plan_batches(cfg, size, num_train_seqs, resume))
    return Inputs(data, shape, resume, TrainState(plan, num_train_seqs, cfg.train.seed, cfg.data.batch_size), start)
