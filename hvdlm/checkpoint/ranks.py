"""Per-rank files: what each rank alone holds (error-feedback residuals; under local_sgd/diloco
its parameters and moments between syncs), written by that rank, named with its size and sha256 in
the main file's manifest, read back only by the same rank."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from hvdlm.atomic import atomic_file
from hvdlm.checkpoint.space import is_disk_full
from hvdlm.errors import HvdlmError

RANKS_DIR = "ranks"
RANK_FILE = re.compile(r"^step(\d+)-rank(\d+)-of(\d+)\.pt$")


def rank_file_name(step: int, rank: int, size: int) -> str:
    return f"{RANKS_DIR}/step{step:08d}-rank{rank:05d}-of{size:05d}.pt"


class _HashingWriter:
    """A file that hashes what passes through it: the rank file's sha256 without reading it back."""

    def __init__(self, fh):
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        return self.fh.write(view)

    def flush(self) -> None:
        self.fh.flush()


def write_rank_file(out_dir: str | Path, step: int, rank: int, size: int, state: dict) -> dict:
    """Write one rank's own state atomically; returns its manifest entry (name, size, sha256)."""
    name = rank_file_name(step, rank, size)
    final = Path(out_dir) / name
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(final) as fh:
            writer = _HashingWriter(fh)
            torch.save(state, writer)
    except Exception as e:
        if is_disk_full(e, final.parent, state):
            raise HvdlmError(f"disk full: cannot write {final} (rank {rank}'s own state of step {step}); the previous "
                             "checkpoint is intact. Free space and run the same command to resume") from None
        raise
    return {"name": name, "size": writer.size, "sha256": writer.sha.hexdigest()}


def read_rank_file(out_dir: str | Path, entry: dict) -> dict:
    """This rank's own state, checked against the manifest entry; any problem is one HvdlmError."""
    path = Path(out_dir) / entry["name"]
    sha, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise HvdlmError(f"cannot read {path}: {e.strerror or e}; move the checkpoint away or use --resume false "
                         "to start over") from None
    if size != entry["size"] or sha.hexdigest() != entry["sha256"]:
        raise HvdlmError(f"{path} does not match its checkpoint's manifest (damaged or replaced); move the "
                         "checkpoint away or use --resume false to start over")
    return torch.load(path, map_location="cpu", weights_only=True)


def torn(out_dir: Path, state: dict) -> str | None:
    """Why a checkpoint's set of rank files is incomplete where this process can see them, or None.
    Sizes only: each rank checks its own file's sha256 when it reads it."""
    for entry in (state.get("rank_files") or {}).get("files", []):
        try:
            if (out_dir / entry["name"]).stat().st_size != entry["size"]:
                return f"{entry['name']} has another size than its manifest says"
        except FileNotFoundError:
            return f"{entry['name']} is missing (a torn set)"
    return None


def own_rank_files(out_dir: str | Path, rank: int) -> list[tuple[int, Path]]:
    """(step, path) of this rank's own files, of any rank count."""
    found = ((RANK_FILE.match(p.name), p) for p in (Path(out_dir) / RANKS_DIR).glob(f"step*-rank{rank:05d}-of*.pt"))
    return [(int(m.group(1)), p) for m, p in found if m]


def prune_rank_files(out_dir: str | Path, rank: int, keep_steps: set[int]) -> None:
    """Delete this rank's own files except those of ``keep_steps`` (each rank prunes only its own:
    on node-local disks no rank sees the others')."""
    for step, p in own_rank_files(out_dir, rank):
        if step not in keep_steps:
            p.unlink(missing_ok=True)
    for p in (Path(out_dir) / RANKS_DIR).glob(f".step*-rank{rank:05d}-of*.tmp"):  # half-written by a killed save of this rank's
        p.unlink(missing_ok=True)
