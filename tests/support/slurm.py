"""Submitting to the local SLURM test cluster as a user does (sbatch of the templates) and
following the job (scontrol): what test_slurm.py and the recorded real-size runs share."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .cluster import ROOT, SIZE, STATE, env, sh
from .progress import STALL, files_state, wait_for
from .text import words

TRAIN = ROOT / "slurm" / "train.sbatch"
BENCH = ROOT / "slurm" / "bench_allreduce.sbatch"
HOSTS = [f"hvdnode{i}" for i in range(1, SIZE + 1)]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE")

def prepared(directory: Path, nbytes: int, **kw) -> Path:
    """``nbytes`` of generated words, byte-tokenized, where every host sees them."""
    from hvdlm.data import prepare

    (directory / "words.txt").write_text(words(nbytes))
    prepare([directory / "words.txt"], directory / "data", tokenizer="byte", **kw)
    return directory / "data"


class Job:
    def __init__(self, job_id: str, workdir: Path, name: str, watch: list[Path] = ()):
        self.id, self.workdir, self.name, self.watch = job_id, workdir, name, [workdir, *watch]
        self.info = ""

    @property
    def out_file(self) -> Path:
        return self.workdir / f"{self.name}-{self.id}.out"

    @property
    def output(self) -> str:
        return self.out_file.read_text() if self.out_file.exists() else f"(no output file {self.out_file})"

    def field(self, name: str) -> str:
        m = re.search(rf"\b{name}=(\S+)", self.info)
        return m.group(1) if m else ""

    def progress(self) -> tuple:
        """What moves while the job does: its state, restarts, output file and out_dir."""
        return self.field("JobState"), self.field("Restarts"), files_state(self.watch)

    def wait(self, stall: float = STALL, until=None) -> "Job":
        """Poll scontrol until the job ends (or ``until(info)`` holds). Fails after ``stall`` seconds
        in which neither its state nor its files changed (a hang), however long it has run."""
        def done() -> bool:
            self.info = sh(["scontrol", "show", "job", "-o", self.id]).stdout
            return until(self.info) if until else self.field("JobState") in DONE
        try:
            wait_for(done, f"job {self.id}", self.progress, stall=stall, poll=0.5)
        except RuntimeError as e:
            sh(["scancel", self.id], check=False)
            pytest.fail(f"{e}:\n{self.info}\n{self.output}")
        return self

    def wait_for_train_records(self, out_dir: Path, stall: float = STALL) -> None:
        """Until rank 0 has written a train record: training runs (and its signal handlers are set)."""
        def started() -> bool:
            self.info = sh(["scontrol", "show", "job", "-o", self.id]).stdout
            if self.field("JobState") in DONE:
                pytest.fail(f"job {self.id} ended before training started:\n{self.info}\n{self.output}")
            return (out_dir / "metrics.jsonl").exists() and bool(metrics(out_dir, "train"))
        try:
            wait_for(started, f"job {self.id}'s first train record", self.progress, stall=stall, poll=0.5)
        except RuntimeError as e:
            sh(["scancel", self.id], check=False)
            pytest.fail(f"{e}:\n{self.info}\n{self.output}")

    def assert_state(self, state: str, exit_code: str) -> None:
        assert (self.field("JobState"), self.field("ExitCode")) == (state, exit_code), self.info + self.output


def submit(script: Path, workdir: Path, sbatch_args: list, script_args: list = (), name: str | None = None,
           **knobs) -> Job:
    """sbatch from ``workdir`` (the template's %x-%j.out lands there), knobs in the environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    p = sh(["sbatch", "--parsable", *sbatch_args, script, *script_args], cwd=workdir,
           env=env(**{k: str(v) for k, v in knobs.items()}))
    job_name = name or ("hvdlm-train" if script == TRAIN else "hvdlm-bench-allreduce")
    watch = [Path(knobs["OUT_DIR"])] if "OUT_DIR" in knobs else []
    return Job(p.stdout.strip().split(";")[0], workdir, job_name, watch)


def two_nodes(tasks_per_node: int = 1, time_limit: str = "10") -> list[str]:
    # more than the template's --signal=B:USR1@300 (else the warning comes at once), unless a test
    # wants it
    return ["--nodes", "2", "--ntasks-per-node", str(tasks_per_node), "--cpus-per-task", "1", "--time", time_limit]


def step_hosts(job: Job) -> dict[str, set[str]]:
    """Step id -> the hosts whose slurmd launched tasks of it (from the hosts' slurmd logs)."""
    steps: dict[str, set[str]] = {}
    for h in HOSTS:
        log = STATE / "hosts" / h / "slurmd.log"
        for step in re.findall(rf"launch task StepId={job.id}\.(\d+) ", log.read_text() if log.exists() else ""):
            steps.setdefault(step, set()).add(h)
    return steps


def last_step_hosts(job: Job) -> set[str]:
    """The hosts of the job's last srun step (the training or benchmark, after the checks)."""
    steps = step_hosts(job)
    assert steps, f"no steps of job {job.id} in the slurmd logs"
    return steps[max(steps, key=int)]


def metrics(out_dir: Path, kind: str) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]
