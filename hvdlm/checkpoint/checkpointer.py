"""The checkpoint's layout in one place (``FORMAT``, ``upgrade`` of older ones) and the
``Checkpointer`` that saves and loads a run's named entries and its sync strategy's state."""

from __future__ import annotations

import threading

from hvdlm import distributed as dist
from hvdlm.checkpoint.files import save
from hvdlm.checkpoint.ranks import own_rank_files, prune_rank_files, read_rank_file, write_rank_file
from hvdlm.checkpoint.snapshot import Writer, snapshot, twin
from hvdlm.sync.modes import mode_of

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
    new["sync"] = {"strategy": mode_of(config.get("sync", "every_step"), config.get("compression", "none")).kind,
                   "state": state.get("sync") or {}}
    if state.get("sync_ranks") is not None:
        new["rank_states"] = state["sync_ranks"]
    new["format"] = FORMAT
    return new


class Checkpointer:
    """One checkpoint, saved and loaded as a pair: named entries (the model, the optimizer, the
    run's ``TrainState``) and the sync strategy's shared state in the main file, which rank 0 writes;
    the strategy's per-rank state (``Sync.rank_state``) in one file per rank, written by that rank,
    named in the main file's manifest with its size and sha256. The main file is written last, so
    a set is complete when it exists; nothing per rank crosses the network.

    With ``background``, a save copies what this rank writes into host buffers (``snapshot``:
    allocated once, after the first step, and refilled by every save) and a thread hashes and
    writes the copy while training goes on: one write at a time; the next save and the run's end
    (the last step, a stop signal) wait for it (``wait``), and a write that failed is one error on
    every rank there. Without it (``--background_save false``, and elastic runs, where a reset may
    come mid-write) the live state is written while training waits, with no copy.

    Decides when the loop saves: every ``interval`` steps, at the last step, on a stop signal."""

    def __init__(self, out_dir: str, interval: int, keep: int, entries: dict, sync, fixed: dict,
                 background: bool = True):
        self.out_dir, self.interval, self.keep, self.background = out_dir, interval, keep, background
        self.entries, self.sync, self.fixed = entries, sync, fixed  # entries: name -> object with state_dict()
        self.saved_steps: list[int] = []  # steps whose main file this process knows is complete
        self._writer: Writer | None = None
        self._staging: tuple = (None, None)  # the last save's host copies, refilled by the next save
        self._preparing: threading.Thread | None = None

    def due(self, step: int, last_step: int, stopped: object = None) -> bool:
        return bool((self.interval and step % self.interval == 0) or step == last_step or stopped)

    def prepare(self, world) -> None:
        """After the first step (when the optimizer's state exists): allocate the host copies the
        first background save fills, on a thread. A fresh buffer costs a page fault per 4 KiB, which
        the step that saves would otherwise pay (3.2 s of a 4.5 s synchronous save at gpt2 here)."""
        if self.background and self.interval and self._preparing is None and not self.saved_steps:
            own, main = self._layout(world)
            self._preparing = threading.Thread(target=lambda: setattr(self, "_staging", (twin(own), twin(main))),
                                               name="hvdlm-checkpoint-staging", daemon=True)
            self._preparing.start()

    def _layout(self, world) -> tuple[dict | None, dict | None]:
        """This rank's own state and (rank 0) the main file's, as the live objects (not copies)."""
        step = self.entries["train"].step
        mine = self.sync.rank_state()
        own = None if mine is None else {"strategy": self.sync.kind, "step": step, "rank": world.rank,
                                         "world_size": world.size, "state": mine}
        main = None if not world.is_root else {
            "format": FORMAT, "step": step, **{k: v.state_dict() for k, v in self.entries.items()},
            "sync": {"strategy": self.sync.kind, "state": self.sync.state_dict()}, **self.fixed,
            "world_size": world.size}
        return own, main

    def save(self, world) -> None:
        """Every rank calls this at the same step. Each snapshots its own state (if its strategy
        keeps any) and rank 0 the shared state; then, behind training, each writes its own file,
        the ranks gather the manifest and rank 0 writes the main file last."""
        self.wait(world)  # the previous write is on disk: its main file is complete on rank 0
        if self._preparing is not None:
            self._preparing.join()
        step = self.entries["train"].step
        own, main = self._layout(world)
        if self.background:  # training changes the live tensors while the write runs: write a copy
            own, main = snapshot(own, self._staging[0]), snapshot(main, self._staging[1])
            self._staging = (own, main)
        # keep the newest ``keep`` complete saves (and this one) of this rank's own files
        keep = set(self.saved_steps[-max(1, self.keep):]) | {step}
        self.saved_steps.append(step)
        self._writer = Writer(lambda: self._write(world, step, own, main, keep))
        if not self.background:
            self.wait(world)

    def _write(self, world, step: int, own: dict | None, main: dict | None, keep: set[int]) -> None:
        """The writer thread: this rank's own file, the manifest gathered, rank 0's main file last.
        Its collectives are named for the step: the training thread's run beside them."""
        manifest = None
        if own is not None:
            entry = dist.agree(lambda: write_rank_file(self.out_dir, step, world.rank, world.size, own),
                               name=f"hvdlm.checkpoint.{step}.written")
            prune_rank_files(self.out_dir, world.rank, keep)
            # a name, a size and a digest per rank: the manifest, not the state
            manifest = {"strategy": self.sync.kind, "world_size": world.size,
                        "files": dist.gather_objects(entry, f"hvdlm.checkpoint.{step}.manifest")}
        if main is not None:
            save({**main, "rank_files": manifest}, self.out_dir, keep=self.keep)

    def wait(self, world) -> None:
        """Until the write in flight is on disk; one failed write is an HvdlmError on every rank.
        Every rank calls it at the same step (it ends in a collective when a write was in flight)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            dist.agree(writer.result, name="hvdlm.checkpoint.wait")

    def settle(self) -> None:
        """The run is ending on an error every rank raised at the same step (``HvdlmError.everywhere``,
        a nan say): let the write in flight finish, so the last checkpoint before the error is on
        disk. No collective of its own: every rank settles, so the writers' collectives still meet.
        A write that fails now is dropped: the run's own error is the one to report."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.result()
            except Exception:  # noqa: BLE001 - the previous checkpoint is intact; the run's error is reported
                pass

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
