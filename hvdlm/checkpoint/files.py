"""The main checkpoint file: written atomically by rank 0, the newest kept under ``checkpoint.pt``,
verified by its checksum when read; ``newest_valid`` finds the one a resume takes."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hvdlm.atomic import atomic_file, fsync_dir
from hvdlm.checkpoint.ranks import torn
from hvdlm.checkpoint.space import is_disk_full, state_bytes
from hvdlm.errors import HvdlmError

FILENAME = "checkpoint.pt"
STEP_FILE = re.compile(r"^checkpoint-step(\d+)\.pt$")
CHECKSUM_KEY = "checksum"


def path_in(out_dir: str | Path) -> Path:
    return Path(out_dir) / FILENAME


def step_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-step{step:08d}.pt"


# --- the checksum --------------------------------------------------------------------------------

def checksum(state: dict) -> str:
    """sha256 over the content (not the file's bytes): every tensor's dtype, shape and bytes, and
    every other value, in a fixed order. Whatever ``torch.save`` writes, the same content gives
    the same sum, so the loaded state can be checked against the sum saved with it."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return "sha256:" + h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()}|".encode())
    else:  # int, bool, str, None, torch.dtype, ...: a length-prefixed repr
        text = f"{type(obj).__name__}:{obj!r}"
        h.update(f"S{len(text)}|{text}".encode())


# --- writing -------------------------------------------------------------------------------------

def save(state: dict, out_dir: str | Path, keep: int = 1) -> Path:
    """Write ``state`` with its checksum; afterwards ``checkpoint.pt`` is this checkpoint.

    With ``keep`` > 1 the checkpoint is written as ``checkpoint-step<N>.pt`` (``state["step"]``)
    and ``checkpoint.pt`` becomes a second name for it; the oldest beyond ``keep`` are deleted.
    Returns the path of ``checkpoint.pt``.
    """
    out = Path(out_dir)
    _remove_stale_temporaries(out)
    state = dict(state)
    state[CHECKSUM_KEY] = checksum(state)
    latest = path_in(out)
    step = state.get("step")
    try:
        if keep > 1 and isinstance(step, int):
            target = step_path(out, step)
            _write_atomically(state, target)
            _point_latest_at(target, latest)
        else:
            _write_atomically(state, latest)
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e, out, state):
            raise
        raise HvdlmError(_disk_full_message(out, state)) from None
    _prune(out, keep if keep > 1 else 0)
    return latest


def _disk_full_message(out: Path, state: dict) -> str:
    usage = shutil.disk_usage(out)
    mount = out.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    mb = lambda n: f"{n / 2 ** 20:,.1f} MB"  # noqa: E731
    steps = _step_files(out)
    if steps:
        previous = f"the previous checkpoint ({steps[0][1].name}, step {steps[0][0]}) is intact"
    elif path_in(out).exists():
        previous = f"the previous checkpoint ({path_in(out)}) is intact"
    else:
        previous = "there is no earlier checkpoint"
    return (f"disk full: cannot write the checkpoint of step {state.get('step')} to {out}: the filesystem at "
            f"{mount} has {mb(usage.free)} free of {mb(usage.total)} and a checkpoint needs about "
            f"{mb(state_bytes(state))}; {previous}. Free space (or use --out_dir on another disk) and run the same "
            "command to resume")


def _write_atomically(state: dict, final: Path) -> None:
    with atomic_file(final) as fh:
        torch.save(state, fh)


def _point_latest_at(target: Path, latest: Path) -> None:
    """Make ``latest`` a second name of ``target`` (hard link; a copy where links are refused)."""
    tmp = latest.parent / f".{latest.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        try:
            os.link(target, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, latest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(latest.parent)




def _step_files(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step-named checkpoints, newest first."""
    found = []
    for p in out.glob("checkpoint-step*.pt"):
        m = STEP_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _prune(out: Path, keep: int) -> None:
    """Delete step-named checkpoints beyond the newest ``keep`` (0: all of them)."""
    for _, p in _step_files(out)[keep:]:
        p.unlink(missing_ok=True)


def _remove_stale_temporaries(out: Path) -> None:
    """Half-written files of a writer that was killed (only rank 0 writes, one save at a time)."""
    for p in out.glob(".checkpoint*.tmp"):
        p.unlink(missing_ok=True)


# --- reading -------------------------------------------------------------------------------------

def load(path: str | Path) -> dict:
    """Read one checkpoint and verify its checksum; any problem is one HvdlmError line."""
    path = Path(path)
    state, problem, _ = _try_load(path)
    if problem:
        raise HvdlmError(f"cannot read checkpoint {path}: {problem}")
    return state


def _try_load(path: Path, verify: bool = True) -> tuple[dict | None, str | None, str | None]:
    """(state, None, its saved checksum), or (None, why it cannot be used, None). With ``verify``
    False the checksum is left to the caller (``Found.check``)."""
    try:
        # mmap: the tensors are the file's pages, read as the checksum walks them (no copy of the
        # whole file, and no long read in one call that holds the GIL)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # not a zip archive (damaged, or not torch.save's): read as a plain file
            if "mmap can only be used" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, "no such file", None
    except Exception as e:  # truncated, not a checkpoint, or holding objects we do not unpickle
        return None, unreadable(e), None
    if not isinstance(state, dict):
        return None, f"not an hvdlm checkpoint (a {type(state).__name__})", None
    saved = state.pop(CHECKSUM_KEY, None)
    if verify and (problem := mismatch(state, saved)):
        return None, problem, None
    return state, None, saved


def mismatch(state: dict, saved: str | None) -> str | None:
    """Why ``state`` is not what was written (its checksum differs from the saved one), or None."""
    if saved is not None and saved != checksum(state):
        return "checksum mismatch (the file changed after it was written: damaged or edited)"
    return None


def unreadable(e: BaseException) -> str:
    """Why torch.load refused a file, in a few words (its own text runs to hundreds of characters)."""
    text = str(e)
    if isinstance(e, EOFError):
        return "empty or cut short"
    if "zip archive" in text or "central directory" in text:
        return "cut short or not written by torch.save"
    if isinstance(e, pickle.UnpicklingError):
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        return (f"holds a Python object ({found.group(1)}) that a checkpoint does not: not loaded" if found
                else "not a checkpoint (cannot be unpickled)")
    first = (text.splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:120]}"


@dataclass
class Found:
    """The checkpoint a resume takes, and those it skipped on the way (newest first)."""
    state: dict
    path: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    saved_checksum: str | None = None  # read with verify=False: what ``check`` compares against
    content: dict = field(default_factory=dict)  # the state as read, before a caller adds to it

    def check(self) -> str | None:
        """Why the state read with verify=False is not what was written, or None (a pass over
        every byte: meant to run while the state travels to the other ranks)."""
        return mismatch(self.content, self.saved_checksum)

    def note(self) -> str:
        """One line for the log: what was skipped and why, and what is resumed."""
        if not self.skipped:
            return ""
        skipped = "; ".join(f"{p.name} ({why})" for p, why in self.skipped)
        return (f"hvdlm: skipped damaged checkpoint(s): {skipped}; resuming from {self.path.name} "
                f"(step {self.state.get('step')})")


def candidates(out_dir: str | Path) -> list[Path]:
    """Every checkpoint in ``out_dir``, newest first, each file once."""
    out = Path(out_dir)
    steps = [p for _, p in _step_files(out)]
    latest = path_in(out)
    if latest.exists():
        same = any(_same_file(latest, p) for p in steps)
        if not same:  # written with keep 1 (or by an older hvdlm): it is the newest
            steps.insert(0, latest)
        else:  # report it under the name users know when it is the newest
            steps = [latest if _same_file(latest, p) and i == 0 else p for i, p in enumerate(steps)]
    return steps


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def newest_valid(out_dir: str | Path, verify: bool = True) -> Found | None:
    """The newest checkpoint that loads and verifies; None when there is none at all. With
    ``verify`` False its checksum is not checked here: ``Found.check()`` checks it later.

    Raises HvdlmError (one line) when there are checkpoints but none of them can be used: the
    run would otherwise silently start over and, at its first save, push the damaged ones out.
    """
    skipped: list[tuple[Path, str]] = []
    for path in candidates(out_dir):
        state, problem, saved = _try_load(path, verify)
        problem = problem or torn(path.parent, state)
        if problem is None:
            return Found(state, path, skipped, None if verify else saved, dict(state))
        skipped.append((path, problem))
    if skipped:
        # every set torn: most likely rank files on disks rank 0 cannot see (node-local out_dirs)
        where = ("; each rank writes its own file into out_dir, so out_dir must be on a filesystem every rank "
                 "sees" if all("is missing" in why for _, why in skipped) else "")
        raise HvdlmError("; ".join(f"cannot read checkpoint {p}: {why}" for p, why in skipped) + where
                         + "; move them away or use --resume false to start over")
    return None


def check_shape(state: dict, shape: dict, path: str | Path) -> None:
    """Refuse a checkpoint of another model before loading it fails with a wall of size errors."""
    saved = state.get("model_shape", {})
    keys = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")
    diff = [f"{k}={saved.get(k)} (this run: {shape[k]})" for k in keys if saved.get(k) != shape[k]]
    # GPT-2's tanh GELU (a run started from a GPT-2 folder); older checkpoints have the exact one
    if saved.get("activation", "gelu") != shape.get("activation", "gelu"):
        diff.append(f"activation={saved.get('activation', 'gelu')} (this run: {shape.get('activation', 'gelu')})")
    # the embedding's padding rows (out_dir/config.toml keeps it; without that file, the flag decides)
    padding, hint = saved.get("vocab_multiple", 1), ""
    if padding != shape.get("vocab_multiple", 1):
        diff.append(f"vocab_multiple={padding} (this run: {shape.get('vocab_multiple', 1)})")
        hint = f", --vocab_multiple {padding} to resume it (where out_dir has no config.toml that keeps it)"
    if diff:
        raise HvdlmError(
            f"checkpoint {path} is from a different model: {', '.join(diff)}; "
            f"use another out_dir{hint}, or --resume false to start over"
        )


