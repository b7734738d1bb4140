"""Checkpoint and resume at real size: what a save blocks, what it costs in all, what a resume
costs against reading the file once, and each rank's peak memory in each phase (issue 29).

    python benchmarks/checkpoint_bench.py run --preset gpt2 --np 2 --sync every_step --out DIR [--code CHECKOUT]
        [--background true|false] [--watchdog true|false] [--extra "--n_embd 1024"]

runs, under ``horovodrun --gloo``, a first invocation that trains ``--steps`` steps with a save every
``--interval`` (two saves at least: the first allocates the host copies the later ones reuse), then
the same command again, which resumes from the last save and trains one more interval. Each rank
runs this file's ``rank`` mode, which wraps hvdlm's own functions to time them and resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``) at each phase's start, reading ``VmHWM`` at its
end, and writes one JSON line per rank. ``--code`` times another checkout of hvdlm (the code
before a change) with this same probe. Prints one JSON line of figures; ``--out`` keeps the logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()


def vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def rank(report: str, flags: list[str]) -> None:
    """One rank of the job: hvdlm train with its checkpoint, resume and loop functions timed."""
    import hvdlm.checkpoint.checkpointer as ck
    import hvdlm.inputs as inputs
    import hvdlm.loop as loop
    from hvdlm.cli import main

    rec: dict = {"saves": [], "steps": []}
    real_read, real_save, real_batch = inputs.load_resume_state, ck.Checkpointer.save, loop.get_batch
    real_wait = getattr(ck.Checkpointer, "wait", None)

    def read(*a, **k):
        t = time.perf_counter()
        try:
            return real_read(*a, **k)
        finally:
            rec["rank0_read_s"] = time.perf_counter() - t

    state = {"batches": 0, "phase_start": None}

    def batch(*a, **k):
        now = time.perf_counter()
        if state["batches"] == 0:  # the first step starts: start-up (and the resume) is over
            rec["ready_s"], rec["startup_peak_mb"], rec["first_batch"] = now - T0, vm_hwm_mb(), now
            reset_hwm()
        elif state["phase_start"] is not None:
            rec["steps"].append(now - state["phase_start"])
        state["phase_start"] = now
        state["batches"] += 1
        return real_batch(*a, **k)

    def save(self, world):
        if not rec["saves"]:
            rec["train_peak_mb"] = vm_hwm_mb()  # training alone, before any save
        reset_hwm()
        t = time.perf_counter()
        real_save(self, world)
        blocked = time.perf_counter() - t
        writer = getattr(self, "_writer", None)
        entry = {"step": self.entries["train"].step, "blocked_s": blocked, "start": t}
        if writer is not None:  # background: done when its thread is
            thread = writer._thread

            def done(thread=thread, entry=entry):
                thread.join()
                entry["total_s"] = time.perf_counter() - entry["start"]
                entry["peak_mb"] = vm_hwm_mb()
            import threading
            threading.Thread(target=done, daemon=True).start()
        else:
            entry["total_s"], entry["peak_mb"] = blocked, vm_hwm_mb()
        rec["saves"].append(entry)
        state["phase_start"] = None  # the step that saved is not a training step's time

    def wait(self, world):
        real_wait(self, world)

    import hvdlm.distributed as dist
    real_on_root, real_load = dist.on_root, ck.Checkpointer.load

    def on_root(fn):  # rank 0's reads handed to every rank (the resume's state among them)
        t = time.perf_counter()
        try:
            return real_on_root(fn)
        finally:
            rec["on_root_s"] = rec.get("on_root_s", 0) + time.perf_counter() - t

    def load(self, saved, world):  # the state into the model, optimizer and strategy, and this rank's own file
        t = time.perf_counter()
        try:
            return real_load(self, saved, world)
        finally:
            rec["load_s"] = time.perf_counter() - t

    dist.on_root, ck.Checkpointer.load = on_root, load
    inputs.load_resume_state, ck.Checkpointer.save, loop.get_batch = read, save, batch
    if real_wait is not None:
        ck.Checkpointer.wait = wait
    code = 0
    try:
        main(["train", *flags])
    except SystemExit as e:
        code = e.code or 0
    finally:
        time.sleep(0.2)  # the done() threads of the last save
        rank_id = int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
        rec.update(rank=rank_id, exit=code, end_peak_mb=vm_hwm_mb())
        if "first_batch" in rec:  # the steps, their saves and the final wait: what a user waits for
            rec["loop_s"] = time.perf_counter() - 0.2 - rec["first_batch"]
        with open(f"{report}.{rank_id}", "w") as fh:
            json.dump(rec, fh)
    sys.exit(code)


def bare_broadcast(report: str, nbytes: int) -> None:
    """The link's floor: Horovod's own broadcast of ``nbytes``, as one tensor up to 1 GiB (Horovod
    cannot send one of 2 GiB or more: its counts are int32), best of 3."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    buf = torch.ones(nbytes, dtype=torch.uint8)
    best = float("inf")
    for i in range(3):
        hvd.allreduce(torch.zeros(1), name=f"sync.{i}")
        t = time.perf_counter()
        for j, piece in enumerate(buf.split(1 << 30)):
            hvd.broadcast_(piece, root_rank=0, name=f"floor.{i}.{j}")
        best = min(best, time.perf_counter() - t)
    if hvd.rank() == 0:
        with open(report, "w") as fh:
            json.dump({"bare_broadcast_s": best}, fh)


def run(args) -> None:
    here = Path(__file__).resolve()
    root = here.parents[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if args.code:
        env["PYTHONPATH"] = args.code
    py = str(root / ".venv/bin/python")
    mode = ["--sync", "diloco", "--sync_every", str(args.interval), "--compression", "int8"] if args.sync == "diloco" else []
    flags = ["--data_dir", args.data_dir, "--out_dir", str(run_dir), "--preset", args.preset, "--block_size", "32",
             "--batch_size", "1", "--eval_interval", "0", "--eval_sequences", "2", "--progress", "false",
             "--sample_tokens", "0", "--tensorboard", "false", "--log_interval", "1", "--max_steps",
             str(args.steps + args.interval), "--checkpoint_interval", str(args.interval), "--keep_checkpoints", "1",
             "--watchdog", args.watchdog, *mode, *shlex.split(args.extra)]
    if args.background:
        flags += ["--background_save", args.background]
    result: dict = {"preset": args.preset, "np": args.np, "sync": args.sync, "extra": args.extra, "cold": args.cold,
                    "background": args.background, "code": args.code or "this checkout"}
    for phase, more in (("first", ["--stop_after", str(args.steps)]), ("resume", [])):
        cmd = [str(root / ".venv/bin/horovodrun"), "-np", str(args.np), "--gloo", py, str(here), "rank",
               str(out / phase), "--", *flags, *more]
        t = time.perf_counter()
        with open(out / f"{phase}.log", "w") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        result[f"{phase}_exit"], result[f"{phase}_wall_s"] = code, round(time.perf_counter() - t, 1)
        ranks = [json.load(open(f"{out / phase}.{r}")) for r in range(args.np) if Path(f"{out / phase}.{r}").exists()]
        result[phase] = ranks
        if phase == "first" and not (run_dir / "checkpoint.pt").exists():
            break  # the first invocation failed (its log says why): nothing to resume
        if phase == "first":
            main = run_dir / "checkpoint.pt"
            result["main_mb"] = round(main.stat().st_size / 2**20, 1) if main.exists() else None
            files = list((run_dir / "ranks").glob("*.pt")) if (run_dir / "ranks").exists() else []
            result["rank_file_mb"] = round(max((f.stat().st_size for f in files), default=0) / 2**20, 1)
            cat = f"cat {shlex.quote(str(main))} > /dev/null"
            for cache in ("cold", "warm"):  # the floor: one read of the file (dropping the page cache needs root)
                if cache == "cold":
                    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=False)
                t = time.perf_counter()
                subprocess.run(cat, shell=True, check=False)
                result[f"cat_{cache}_s"] = round(time.perf_counter() - t, 2)
            floor = out / "floor.json"
            subprocess.run([str(root / ".venv/bin/horovodrun"), "-np", str(args.np), "--gloo", py, str(here), "floor",
                            str(floor), str(main.stat().st_size)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            if floor.exists():
                result["bare_broadcast_s"] = round(json.load(open(floor))["bare_broadcast_s"], 2)
            if args.cold:  # the resume reads the file as a requeued job on another node would: not cached
                subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=False)
    with open(out / "result.json", "w") as fh:
        json.dump(result, fh)
    print(json.dumps(summarize(result)))


def summarize(r: dict) -> dict:
    """The figures the RESULTS table takes, from the per-rank records."""
    s = {k: r.get(k) for k in ("preset", "np", "sync", "extra", "background", "code", "first_exit", "resume_exit",
                           "main_mb", "rank_file_mb", "cat_cold_s", "cat_warm_s", "cold")}
    s["bare_broadcast_s"] = r.get("bare_broadcast_s")
    first, resumed = r.get("first", []), r.get("resume", [])
    saves = [x["saves"] for x in first if x.get("saves")]
    if saves:
        s["save_blocked_s_first"] = round(max(x[0]["blocked_s"] for x in saves), 2)
        s["save_blocked_s_later"] = round(max(x[-1]["blocked_s"] for x in saves), 2)
        s["save_total_s_later"] = round(max(x[-1].get("total_s", float("nan")) for x in saves), 2)
        s["save_peak_mb"] = [round(max(e.get("peak_mb", 0) for e in x), 0) for x in saves]
    steps = [st for x in first for st in x.get("steps", [])]
    if steps:
        s["median_step_s"] = round(sorted(steps)[len(steps) // 2], 3)
    if first and "loop_s" in first[0]:
        s["first_loop_s"] = round(max(x["loop_s"] for x in first), 1)
    s["train_peak_mb"] = [round(x.get("train_peak_mb", 0), 0) for x in first]
    if resumed:
        s["resume_rank0_read_s"] = round(max(x.get("rank0_read_s", 0) for x in resumed), 2)
        s["resume_on_root_s"] = [round(x.get("on_root_s", 0), 2) for x in resumed]
        s["resume_load_s"] = [round(x.get("load_s", 0), 2) for x in resumed]
        s["resume_ready_s"] = [round(x.get("ready_s", float("nan")), 1) for x in resumed]
        s["first_ready_s"] = [round(x.get("ready_s", float("nan")), 1) for x in first]
        s["resume_peak_mb"] = [round(x.get("startup_peak_mb", 0), 0) for x in resumed]
    return s


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "rank":
        rank(sys.argv[2], sys.argv[sys.argv.index("--") + 1:])
    elif len(sys.argv) > 3 and sys.argv[1] == "floor":
        bare_broadcast(sys.argv[2], int(sys.argv[3]))
    else:
        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        p.add_argument("cmd", choices=["run"])
        p.add_argument("--preset", default="gpt2")
        p.add_argument("--np", type=int, default=2)
        p.add_argument("--sync", choices=["every_step", "diloco"], default="every_step")
        p.add_argument("--steps", type=int, default=6, help="steps of the first invocation")
        p.add_argument("--interval", type=int, default=3, help="steps between saves")
        p.add_argument("--data_dir", default="data/default")
        p.add_argument("--out", required=True)
        p.add_argument("--code", default="", help="another checkout of hvdlm to time (PYTHONPATH)")
        p.add_argument("--background", default="", help="--background_save true|false (this checkout's flag)")
        p.add_argument("--watchdog", default="true")
        p.add_argument("--cold", action="store_true", help="drop the page cache before the resume")
        p.add_argument("--extra", default="", help="more hvdlm train flags, e.g. '--n_embd 1024'")
        run(p.parse_args())
