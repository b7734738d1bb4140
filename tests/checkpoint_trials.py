"""Kill a checkpoint writer with SIGKILL in the middle of writes, many times, and check that no
checkpoint is ever broken or lost.

    python checkpoint_trials.py OUT_DIR MIN_KILLS_MID_WRITE [SEED]  -> one JSON line on stdout

Each trial forks a writer (torch and hvdlm.checkpoint are already imported, so a trial costs
milliseconds, not an interpreter start) that saves checkpoints of a ~4 MB state with
``checkpoint.save(..., keep=2)``, each write trickling out over ~0.2 s; it reports the start and
end of every save through a pipe. The parent picks one save, waits a random time after it starts
and kills the writer. Then, in the same folder:
  * ``checkpoint.pt`` must load and verify, and be at least as new as the last save that returned;
  * ``checkpoint.newest_valid`` must find a checkpoint at least that new and skip nothing;
  * a "broken" trial fails one of these; a "lost" one finds an older step than a completed save.
The next trial continues in the same folder, with whatever the kill left there.
Trials go on until MIN_KILLS_MID_WRITE kills landed between a save's start and its return.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_probe import slow_torch_save  # noqa: E402

from hvdlm import checkpoint  # noqa: E402
from hvdlm.errors import HvdlmError  # noqa: E402

WRITE_SECONDS = 0.2


def writer(out: Path, first_step: int, pipe_w: int) -> None:
    """The child: save step after step until killed."""
    slow_torch_save(WRITE_SECONDS)
    g = torch.Generator().manual_seed(first_step)
    for step in range(first_step, first_step + 1000):
        state = {"model": {"w": torch.randn(1_000_000, generator=g)}, "step": step,
                 "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
        os.write(pipe_w, f"B{step}\n".encode())
        checkpoint.save(state, out, keep=2)
        os.write(pipe_w, f"E{step}\n".encode())
    os._exit(0)


DURATIONS: list[float] = []  # seconds from a save's start to its return, as seen by the parent


def one_trial(out: Path, first_step: int, rng: random.Random) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            writer(out, first_step, w)
        finally:
            os._exit(1)
    os.close(w)
    target = first_step + rng.randrange(0, 3)  # kill during the 1st, 2nd or 3rd save
    events: list[str] = []
    buf = b""
    deadline = time.monotonic() + 30
    began: dict[int, float] = {}
    while f"B{target}" not in events and time.monotonic() < deadline:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for x in lines:
            e = x.decode()
            events.append(e)
            if e.startswith("B"):
                began[int(e[1:])] = time.monotonic()
            elif e.startswith("E") and int(e[1:]) in began:
                DURATIONS.append(time.monotonic() - began[int(e[1:])])
    # Anywhere in the write, or around its end (fsync, the renames, the link, deleting the oldest).
    typical = sorted(DURATIONS)[len(DURATIONS) // 2] if DURATIONS else WRITE_SECONDS * 1.3
    end = rng.random() < 0.4
    time.sleep(rng.uniform(0.93, 1.07) * typical if end else rng.uniform(0, typical))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.set_blocking(r, False)
    try:
        while chunk := os.read(r, 4096):
            buf += chunk
    except BlockingIOError:
        pass
    os.close(r)
    events += [x.decode() for x in buf.split(b"\n") if x]
    begun = [int(e[1:]) for e in events if e.startswith("B")]
    ended = [int(e[1:]) for e in events if e.startswith("E")]
    mid_write = bool(begun) and (not ended or max(begun) > max(ended))
    last_done = max(ended) if ended else None

    result = {"killed_in_save": max(begun) if begun else None, "last_completed": last_done,
              "mid_write": mid_write, "broken": None, "lost": False, "leftover_tmp": 0}
    result["leftover_tmp"] = len(list(out.glob(".checkpoint*.tmp")))
    try:
        latest = checkpoint.load(checkpoint.path_in(out))
        found = checkpoint.newest_valid(out)
    except HvdlmError as e:
        result["broken"] = str(e)
        return result
    if found is None or found.skipped:
        result["broken"] = f"newest_valid: {found and found.note()}"
        return result
    if last_done is not None and (latest["step"] < last_done or found.state["step"] < last_done):
        result["lost"] = True
    result["latest_step"], result["resumable_step"] = latest["step"], found.state["step"]
    return result


def main() -> None:
    out, want = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    # a first checkpoint, so every trial has one that must survive
    checkpoint.save({"model": {"w": torch.zeros(1_000_000)}, "step": 0}, out, keep=2)
    trials, step = [], 1
    while sum(t["mid_write"] for t in trials) < want and len(trials) < 4 * want:
        trials.append(one_trial(out, step, rng))
        step += 10
    print(json.dumps({
        "trials": len(trials),
        "killed_mid_write": sum(t["mid_write"] for t in trials),
        "broken": sum(t["broken"] is not None for t in trials),
        "lost": sum(t["lost"] for t in trials),
        "left_a_temporary_file": sum(t["leftover_tmp"] > 0 for t in trials),
        "details": trials,
    }))


if __name__ == "__main__":
    main()
