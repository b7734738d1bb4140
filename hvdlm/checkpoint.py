"""Checkpoints: written so that no crash leaves a broken one, verified when read.

A checkpoint is a main file that rank 0 writes (``torch.save``: the model, the optimizer, the
run's train state, the sync strategy's shared state tagged with the strategy's name, the model
shape, the tokenizer and the config) and, when the strategy keeps state of each rank's own
(PowerSGD's residuals; under local_sgd/diloco each rank's parameters and moments between syncs),
one file per rank, written by that rank. The main file carries a ``checksum`` (a sha256 over
every tensor's bytes and every value, recomputed on load) and a manifest of the rank files (name,
size, sha256), and is written last: a set is complete when its main file exists. Nothing per
rank is gathered or broadcast: on resume each rank reads only its own file (checking its sha256),
and on another rank count the rank files are ignored with one line. Loading uses
``torch.load(weights_only=True)``.

Layout of ``out_dir`` (``keep`` = ``--keep_checkpoints``):

    checkpoint.pt                 always the newest complete checkpoint (what `hvdlm sample` reads)
    checkpoint-step00000120.pt    with keep > 1: the last ``keep`` checkpoints by step; the newest
    checkpoint-step00000100.pt    is the same file as checkpoint.pt (a hard link, or a copy)
    ranks/step00000120-rank00003-of00004.pt   rank 3's own state at step 120 of a 4-rank run

Each file is written under a temporary name, flushed to disk (fsync), then renamed into place,
and ``checkpoint.pt`` is switched to the new file by another rename: a rename is atomic, so a
kill at any moment leaves ``checkpoint.pt`` naming a complete checkpoint (the old or the new
one) and at worst a stray ``.checkpoint*.tmp`` file, which the next save removes. Older
checkpoints are deleted only after the new one is in place; each rank deletes its own older files.

A resume (``newest_valid``) tries the checkpoints newest first and takes the first that loads,
verifies and whose rank files are all there at their size, reporting each one it skipped and why.
Checkpoints of older hvdlm versions (train state at the top level, per-rank states gathered into
the main file) are read through ``upgrade``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hvdlm import distributed as dist
from hvdlm.atomic import atomic_file, fsync_dir
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
        if not _is_disk_full(e, out, state):
            raise
        raise HvdlmError(_disk_full_message(out, state)) from None
    _prune(out, keep if keep > 1 else 0)
    return latest


def _size(obj) -> int:
    """Bytes of the tensors in a state: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_size(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_size(v) for v in obj)
    return 0


def _is_disk_full(e: BaseException, out: Path, state: dict) -> bool:
    """ENOSPC/EDQUOT, or torch.save's own write error (``[enforce fail at inline_container.cc]
    ... unexpected pos``, which drops the errno) with less room left than a checkpoint needs."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        return "inline_container" in str(e) and shutil.disk_usage(out).free < _size(state) + (1 << 20)
    except OSError:
        return False


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
            f"{mb(_size(state))}; {previous}. Free space (or use --out_dir on another disk) and run the same "
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
    state, problem = _try_load(path)
    if problem:
        raise HvdlmError(f"cannot read checkpoint {path}: {problem}")
    return state


def _try_load(path: Path) -> tuple[dict | None, str | None]:
    """(state, None), or (None, why it cannot be used)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, "no such file"
    except Exception as e:  # truncated, not a checkpoint, or holding objects we do not unpickle
        first = (str(e).splitlines() or [""])[0]
        return None, f"{type(e).__name__}: {first}"
    if not isinstance(state, dict):
        return None, f"not an hvdlm checkpoint (a {type(state).__name__})"
    saved = state.pop(CHECKSUM_KEY, None)
    if saved is not None and saved != checksum(state):
        return None, "checksum mismatch (the file changed after it was written: damaged or edited)"
    return state, None


@dataclass
class Found:
    """The checkpoint a resume takes, and those it skipped on the way (newest first)."""
    state: dict
    path: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)

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


def newest_valid(out_dir: str | Path) -> Found | None:
    """The newest checkpoint that loads and verifies; None when there is none at all.

    Raises HvdlmError (one line) when there are checkpoints but none of them can be used: the
    run would otherwise silently start over and, at its first save, push the damaged ones out.
    """
    skipped: list[tuple[Path, str]] = []
    for path in candidates(out_dir):
        state, problem = _try_load(path)
        problem = problem or torn(path.parent, state)
        if problem is None:
            return Found(state, path, skipped)
        skipped.append((path, problem))
    if skipped:
        raise HvdlmError("; ".join(f"cannot read checkpoint {p}: {why}" for p, why in skipped)
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
    if diff:
        raise HvdlmError(
            f"checkpoint {path} is from a different model: {', '.join(diff)}; "
            "use another out_dir, or --resume false to start over"
        )


# --- per-rank files: what each rank alone holds -------------------------------------------------------

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
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
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


# --- the layout, in one place ---------------------------------------------------------------------------

FORMAT = 2
TRAIN_KEYS = ("step", "sampler", "global_batch", "lr", "evaluated", "last_step")


def upgrade(state: dict) -> dict:
    """A checkpoint of an older hvdlm in today's layout: the train state under "train", the sync
    state tagged with the strategy its config names, per-rank states gathered in rank order under
    "rank_states"."""
    if state.get("format") == FORMAT:
        return state
    new = {k: v for k, v in state.items() if k not in TRAIN_KEYS and k not in ("sync", "sync_ranks")}
    new["train"] = {k: state[k] for k in TRAIN_KEYS if k in state}
    new["step"] = state.get("step")
    config = (state.get("config") or {}).get("distributed", {})
    new["sync"] = {"strategy": strategy_of(config.get("sync", "every_step"), config.get("compression", "none")),
                   "state": state.get("sync") or {}}
    if state.get("sync_ranks") is not None:
        new["rank_states"] = state["sync_ranks"]
    new["format"] = FORMAT
    return new


def strategy_of(sync: str, compression: str) -> str:
    """The name a sync strategy's state is tagged with (``Sync.kind``)."""
    if sync != "every_step":
        return sync
    return "powersgd" if compression == "powersgd" else "every_step"  # the others keep no state


class Checkpointer:
    """One checkpoint, saved and loaded as a pair: named entries (the model, the optimizer, the
    run's ``TrainState``) and the sync strategy's shared state in the main file, which rank 0 writes;
    the strategy's per-rank state (``Sync.rank_state``) in one file per rank, written by that rank,
    named in the main file's manifest with its size and sha256. The main file is written last, so
    a set is complete when it exists; nothing per rank crosses the network.

    Decides when the loop saves: every ``interval`` steps, at the last step, on a stop signal."""

    def __init__(self, out_dir: str, interval: int, keep: int, entries: dict, sync, fixed: dict):
        self.out_dir, self.interval, self.keep = out_dir, interval, keep
        self.entries, self.sync, self.fixed = entries, sync, fixed  # entries: name -> object with state_dict()
        self.saved_steps: list[int] = []  # steps whose main file this process knows is complete

    def due(self, step: int, last_step: int, stopped: object = None) -> bool:
        return bool((self.interval and step % self.interval == 0) or step == last_step or stopped)

    def save(self, world) -> None:
        """Every rank calls this. Each writes its own state (if its strategy keeps any); rank 0
        then writes the main file with the manifest; the others go on (the loop's final barrier
        waits for the last one)."""
        step = self.entries["train"].step
        manifest = None
        mine = self.sync.rank_state()
        if mine is not None:
            own = {"strategy": self.sync.kind, "step": step, "rank": world.rank, "world_size": world.size,
                   "state": mine}
            entry = dist.agree(lambda: write_rank_file(self.out_dir, step, world.rank, world.size, own))
            # Every earlier save's main file is complete by now (rank 0 wrote it before joining this
            # collective): keep the newest ``keep`` of them, and this one.
            keep = set(self.saved_steps[-max(1, self.keep):]) | {step}
            prune_rank_files(self.out_dir, world.rank, keep)
            # a name, a size and a digest per rank: the manifest, not the state
            manifest = {"strategy": self.sync.kind, "world_size": world.size,
                        "files": dist.gather_objects(entry, "hvdlm.checkpoint.manifest")}
        self.saved_steps.append(step)
        if world.is_root:
            save({"format": FORMAT, "step": step, **{k: v.state_dict() for k, v in self.entries.items()},
                  "sync": {"strategy": self.sync.kind, "state": self.sync.state_dict()}, "rank_files": manifest,
                  **self.fixed, "world_size": world.size},
                 self.out_dir, keep=self.keep)

    def load(self, saved: dict, world) -> list[str]:
        """Every rank: the entries from the main file (as rank 0 read it), the strategy's shared
        state if this run's strategy wrote it, and this rank's own file if the rank count is the
        same. Returns the lines saying what was dropped or replaced (the same on every rank)."""
        saved = upgrade(saved)
        for name, obj in self.entries.items():
            obj.load_state_dict(saved[name])
        # this rank's files up to the resumed step may belong to the older checkpoints kept beside it
        self.saved_steps = sorted({step for step, _ in own_rank_files(self.out_dir, world.rank) if step <= saved["step"]}
                                  | {saved["step"]})
        theirs, ours = saved["sync"]["strategy"], self.sync.kind
        if theirs != ours:
            return [f"hvdlm: the checkpoint's sync state is {theirs}'s, this run syncs by {ours}: it starts from the "
                    f"checkpoint's model (rank 0's, the same on every rank), {theirs}'s state is dropped"]
        notes = self.sync.load_state_dict(saved["sync"]["state"])
        files, states = saved.get("rank_files"), saved.get("rank_states")
        count = len(files["files"]) if files else len(states) if states else 0
        if count and count != world.size:
            return notes + [f"hvdlm: the checkpoint holds the own state of {count} rank(s) ({self.sync.what_ranks_hold()}), "
                            f"this run has {world.size}: dropped; every rank continues from the shared state "
                            "(rank 0's model and optimizer)"]
        if files:
            own = dist.agree(lambda: read_rank_file(self.out_dir, files["files"][world.rank]))
            notes += self.sync.load_rank_state(own["state"])
        elif states:
            notes += self.sync.load_rank_state(states[world.rank])
        return notes
