"""The fault matrix of docs/faults.md: each fault, injected the same way into a plain Horovod loop
(plain_loop.py) and into `hvdlm train`, under horovodrun (Gloo) and mpirun, on 2 ranks of this
machine. Records how the job ended, how long after the fault, and what the user saw.

    .venv/bin/python benchmarks/faults/matrix.py [--out benchmarks/results/faults] [--only kill9,sigstop]

Writes OUT.json (every run, with its output) and OUT.md (the table). The harness is
tests/support/faults.py, the one the fault tests use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.faults import Job  # noqa: E402
from support.launch import LAUNCHERS, PROBE, TINY, launch_env  # noqa: E402

PY = sys.executable
PLAIN = str(ROOT / "benchmarks" / "faults" / "plain_loop.py")
HANG_CAP = 150  # seconds after the fault: a job still running then is recorded as hung and killed

FAULTS = {
    "kill9": "kill -9 rank 1",
    "sigstop": "SIGSTOP rank 1 (a stalled peer)",
    "raise": "exception on rank 1 at step 30",
    "kill0_ckpt": "kill -9 rank 0 while it writes a checkpoint",
    "corrupt": "corrupt data shard (1 MB of 0xFF in train.bin)",
    "elastic": "kill -9 a rank under hvdlm elastic",
    "cut": "cut hvdnode2's link (test cluster, 2 hosts)",
}


def prepare_data(work: Path) -> Path:
    from hvdlm.data import prepare

    data = ROOT / "data" / "default"
    if not (data / "meta.json").exists():
        prepare(None, data, tokenizer="byte")
    return data


CLUSTER = ["bash", str(ROOT / "slurm" / "cluster.sh")]
ACROSS = {  # 2 ranks, one on each host of the test cluster, launched from hvdnode1
    "x-horovodrun-gloo": [str(Path(PY).parent / "horovodrun"), "-np", "2", "-H", "hvdnode1:1,hvdnode2:1", "--gloo",
                          "--start-timeout", "120"],
    "x-mpirun": ["mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2", "--bind-to", "none"],
    "x-mpirun-keepalive": ["mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2", "--bind-to", "none",
                           "--mca", "oob_tcp_keepalive_time", "5", "--mca", "oob_tcp_keepalive_intvl", "2",
                           "--mca", "oob_tcp_keepalive_probes", "3"],
}


def command(program: str, launcher: str, data: Path, out: Path) -> list[str]:
    if launcher in ACROSS:
        prefix = CLUSTER + ["exec", "hvdnode1"] + ACROSS[launcher]
    else:
        prefix = LAUNCHERS[launcher]
    if program == "plain":
        return prefix + [PY, PLAIN, str(data), str(out), "--checkpoint_every", "20"]
    return prefix + [PY, PROBE, "fault", "unused", "--", "--data_dir", str(data), "--out_dir", str(out),
                     *TINY, "--max_steps", "100000", "--log_interval", "1", "--eval_interval", "0",
                     "--checkpoint_interval", "20", "--progress", "true", "--threads", "1"]


def progressed(program: str, job: Job, out: Path, step: int):
    if program == "plain":
        return lambda: re.search(rf"rank 0 step {step}\b", job.output()) is not None
    return lambda: re.search(rf"^(\[0\]<stdout>:)?step {step}:", job.output(), re.M) is not None


def writing_checkpoint(program: str, out: Path):
    """A predicate: rank 0 is in the middle of a checkpoint write (the file is growing)."""
    state = {"size": -1}

    def check() -> bool:
        files = [out / "checkpoint.pt"] if program == "plain" else list(out.glob(".checkpoint-step*.tmp"))
        try:
            size = sum(f.stat().st_size for f in files if f.exists())
        except OSError:
            size = 0
        growing = size > 0 and state["size"] >= 0 and size != state["size"]
        state["size"] = size
        return growing
    return check


def checkpoint_state(program: str, out: Path) -> str:
    import torch

    path = out / "checkpoint.pt"
    if not path.exists():
        return "none written"
    if program == "plain":
        try:
            step = torch.load(path, weights_only=True)["step"]
            return f"loads (step {step})"
        except Exception as e:  # noqa: BLE001
            return f"BROKEN: {type(e).__name__}"
    from hvdlm import checkpoint
    from hvdlm.errors import HvdlmError
    try:
        found = checkpoint.newest_valid(out)
    except HvdlmError as e:
        return f"BROKEN: {e}"
    return f"loads (step {found.state['step']}, verified)" if found else "none written"


def one(program: str, launcher: str, fault: str, data: Path, work: Path) -> dict:
    out = work / f"{program}-{launcher}-{fault}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(launch_env())
    run_data = data
    if fault == "raise":
        env["PLAIN_RAISE_AT" if program == "plain" else "HVDLM_PROBE_FAULT"] = \
            "1:30" if program == "plain" else "1:30:raise"  # both count training batches
    if fault == "kill0_ckpt":
        env["HVDLM_PROBE_SLOW_SAVE"] = "3"
    if fault == "corrupt":
        run_data = out / "data"
        shutil.copytree(data, run_data)
        with open(run_data / "train.bin", "r+b") as fh:
            fh.seek(len(fh.read()) // 3)
            fh.write(b"\xff" * (1 << 20))
    job = Job(command(program, launcher, run_data, out), out, env=env, marker=str(out)).start()
    try:
        if fault == "cut":
            job.wait_until(progressed(program, job, out, 25), 180, "step 25")
            subprocess.run(CLUSTER + ["cut", "hvdnode2"], check=True, capture_output=True)
            job.mark_fault()
        elif fault == "corrupt":
            job.mark_fault()  # the fault is there from the start
        elif fault == "raise":
            job.mark_fault()
            job.wait_until(progressed(program, job, out, 29), 120, "step 29")
            job.mark_fault()  # the exception follows within a step
        elif fault == "kill0_ckpt":
            job.wait_until(progressed(program, job, out, 21), 120, "step 21")
            job.wait_until(writing_checkpoint(program, out), 120, "a checkpoint write")
            time.sleep(1.0)
            job.inject(job.rank_pid(0), signal.SIGKILL)
        else:
            job.wait_until(progressed(program, job, out, 25), 120, "step 25")
            job.inject(job.rank_pid(1), signal.SIGKILL if fault == "kill9" else signal.SIGSTOP)
        result = job.wait(HANG_CAP)
    except RuntimeError as e:  # ended before the fault could be injected, or never started
        job.mark_fault()
        result = job.wait(5)
        result.stderr += f"\n(harness: {e})"
    finally:
        if fault == "cut":
            subprocess.run(CLUSTER + ["heal", "hvdnode2"], capture_output=True)
    stderr = [x for x in result.stderr.splitlines() if x.strip()]
    ranks, launcher_lines = split_output(launcher, stderr)
    rank_err = [re.sub(r"^\[\d+\]<stderr>:", "", x) for x in ranks]
    return {
        "program": program, "launcher": launcher, "fault": fault,
        "ended": not result.hung, "returncode": result.returncode,
        "seconds_after_fault": round(result.since_fault, 1) if result.since_fault is not None else None,
        "stderr_lines": len(stderr),
        "rank_lines": len(ranks),
        "launcher_lines": len(launcher_lines),
        "tracebacks": sum("Traceback" in x for x in ranks),
        "launcher_traceback": any("Traceback" in x for x in launcher_lines),
        "hvdlm_lines": [x for x in rank_err if x.startswith("hvdlm:")],
        "checkpoint": checkpoint_state(program, out),
        "leftovers": result.leftovers,
        "logs": {f.name: f.read_text()[:3000] for f in sorted(out.glob("error-rank*.log"))},
        "stderr_tail": "\n".join(stderr[-15:]),
    }


def elastic_kill(data: Path, work: Path) -> dict:
    """hvdlm elastic on two "hosts" of this machine (localhost, 127.0.0.1): kill -9 the rank of
    one; time until the other trains on alone, and until the host is back (cooldown 5 s)."""
    from hvdlm.config import load_config
    from hvdlm.elastic import launch_command
    from hvdlm.metrics import read_jsonl

    out = work / "elastic-kill9"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "hosts.txt").write_text("localhost:1\n127.0.0.1:1\n")
    script = out / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {out / 'hosts.txt'}\n")
    script.chmod(0o755)
    flags = dict(zip(TINY[::2], TINY[1::2]))
    given = {k.lstrip("-"): v for k, v in flags.items()}
    given.update(data_dir=str(data), out_dir=str(out / "run"), max_steps="100000", log_interval="1",
                 eval_interval="0", checkpoint_interval="50", commit_interval="10", threads="1",
                 min_ranks="1", max_ranks="2", discovery_script=str(script))
    from hvdlm.config import FIELDS, _base_type
    cfg = load_config(None, {k: _base_type(FIELDS[k][1])(v) for k, v in given.items()})
    job = Job(launch_command(cfg, given, np=2, network_interface="", host_cooldown=5, config_file=None), out,
              env=launch_env()).start()

    def rows():
        path = out / "run" / "metrics.jsonl"
        return read_jsonl(path, "train") if path.exists() else []

    def sizes_after(t0: float, size: int):
        return lambda: any(r["ranks"] == size and r["time"] > t0 for r in rows())

    result = {"fault": "elastic_kill9", "program": "hvdlm", "launcher": "hvdlm elastic"}
    try:
        job.wait_until(lambda: len(rows()) >= 60, 180, "60 steps")
        t_fault = rows()[-1]["time"]
        job.inject(job.rank_pid(1), signal.SIGKILL)
        job.wait_until(sizes_after(t_fault, 1), 120, "1 rank")
        result["seconds_to_continue_on_1"] = round(job.since_fault(), 1)
        lost = [r for r in rows() if r["ranks"] == 1][0]["step"]
        before = max(r["step"] for r in rows() if r["ranks"] == 2 and r["time"] <= t_fault + 1e-9)
        result["steps_redone"] = before - lost + 1
        job.wait_until(sizes_after(rows()[-1]["time"], 2), 180, "2 ranks again")
        result["seconds_until_back_on_2"] = round(job.since_fault(), 1)
        result["ended"] = True
    except RuntimeError as e:
        result["error"] = str(e)[-2000:]
        result["ended"] = False
    finally:
        res = job.wait(1)
    result["stderr_tail"] = "\n".join(res.stderr.splitlines()[-20:])
    result["stdout_hvdlm"] = [x for x in res.stdout.splitlines() if "hvdlm:" in x]
    return result


def split_output(launcher: str, stderr: list[str]) -> tuple[list[str], list[str]]:
    """(what the ranks wrote, what the launcher wrote). horovodrun tags rank lines "[r]<stderr>:";
    mpirun frames its own messages between lines of dashes."""
    ranks, own, framed = [], [], False
    for line in stderr:
        if "horovodrun" in launcher:
            (ranks if re.match(r"^\[\d+\]<std", line) else own).append(line)
            continue
        if line.startswith("-----"):
            framed = not framed
            own.append(line)
        elif framed or line.startswith("(harness"):
            own.append(line)
        else:
            ranks.append(line)
    return ranks, own


def table(rows: list[dict]) -> str:
    lines = ["| fault | launcher | plain Horovod | hvdlm |", "|---|---|---|---|"]
    for r in rows:
        if r["fault"] == "elastic_kill9" and r.get("ended"):
            lines.append(f"| kill -9 one of two hosts' ranks, elastic | hvdlm elastic | (Horovod elastic does the "
                         f"same; see docs) | trained on at 1 rank **{r['seconds_to_continue_on_1']} s** after the "
                         f"kill ({r['steps_redone']} steps redone from the last commit); 2 ranks again "
                         f"{r['seconds_until_back_on_2']} s after the kill (5 s host cooldown) |")
    key = {(r["program"], r["launcher"], r["fault"]): r for r in rows}

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        if not r["ended"] and r.get("hvdlm_lines"):
            return (f"the ranks ended with {len(r['hvdlm_lines'])} `hvdlm:` line ({r['hvdlm_lines'][0][:60]}...), "
                    f"but **the launcher hung** waiting for its daemon on the cut-off host (killed by the harness "
                    f"{HANG_CAP} s after the fault); checkpoint {r['checkpoint']}")
        if not r["ended"]:
            return (f"**hung, silent** (killed by the harness {HANG_CAP} s after the fault; ranks: "
                    f"{r['rank_lines']} lines); checkpoint {r['checkpoint']}")
        t = r["seconds_after_fault"]
        head = f"ended in **{t:.1f} s** (status {r['returncode']})"
        said = f"{len(r['hvdlm_lines'])} `hvdlm:` line" if r["program"] == "hvdlm" else ""
        tb = f"{r['tracebacks']} traceback(s)" if r["tracebacks"] else "no traceback"
        parts = [head, said, f"ranks: {r['rank_lines']} lines, {tb}", f"checkpoint {r['checkpoint']}"]
        return "; ".join(p for p in parts if p)

    for fault, name in FAULTS.items():
        for launcher in ("horovodrun-gloo", "mpirun", *ACROSS):
            if not any((p, launcher, fault) in key for p in ("plain", "hvdlm")):
                continue
            lines.append(f"| {name} | {launcher} | {cell(key.get(('plain', launcher, fault)))} | "
                         f"{cell(key.get(('hvdlm', launcher, fault)))} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults"))
    p.add_argument("--only", default=",".join(FAULTS))
    p.add_argument("--launchers", default="horovodrun-gloo,mpirun")
    p.add_argument("--programs", default="plain,hvdlm")
    p.add_argument("--table", metavar="JSON", help="only print the table of an earlier run's JSON")
    p.add_argument("--cluster", action="store_true",
                   help="the cut-link fault across the 2 hosts of slurm/cluster.sh (starts and stops it)")
    args = p.parse_args()
    if args.table:
        return print(table(json.loads(Path(args.table).read_text())))
    if args.cluster:
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if netns.strip():
            sys.exit(f"a test cluster (or other network namespaces) is up: {netns.split()}; not starting ours")
        subprocess.run(CLUSTER + ["start", "2"], check=True, capture_output=True)
        args.only, args.launchers = "cut", ",".join(ACROSS)
        if args.out == p.get_default("out"):
            args.out += "-cluster"
        try:
            return run_all(args)
        finally:
            subprocess.run(CLUSTER + ["stop"], capture_output=True)
    run_all(args)


def run_all(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="hvdlm-faults-"))
    data = prepare_data(work)
    rows = []
    if "elastic" in args.only.split(","):
        row = elastic_kill(data, work)
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("stderr_tail",)}, flush=True)
    for fault in [f for f in args.only.split(",") if f != "elastic"]:
        for launcher in args.launchers.split(","):
            for program in args.programs.split(","):
                t = time.monotonic()
                row = one(program, launcher, fault, data, work)
                rows.append(row)
                print(f"{fault:11s} {launcher:16s} {program:6s} ended={row['ended']} "
                      f"after={row['seconds_after_fault']} rc={row['returncode']} lines={row['stderr_lines']} "
                      f"tb={row['tracebacks']} ckpt={row['checkpoint']} ({time.monotonic() - t:.0f}s)", flush=True)
                for line in row["hvdlm_lines"]:
                    print("    " + line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))
    print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
