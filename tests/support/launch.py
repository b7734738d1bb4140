"""Launching real ranks: horovodrun (Gloo, MPI) or mpirun with 2 ranks, or one process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .progress import wait_for

TESTS = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv the tests run in holds hvdlm and horovodrun
HVDLM = str(BIN / "hvdlm")
PROBE = str(TESTS / "rank_probe.py")

# How ranks (2 unless told) are started: Horovod over Gloo, Horovod over MPI, and MPI's own launcher.
LAUNCHERS = {
    "single": [],
    "horovodrun-gloo": [str(BIN / "horovodrun"), "-np", "2", "--gloo"],
    "horovodrun-mpi": [str(BIN / "horovodrun"), "-np", "2", "--mpi"],
    "mpirun": ["mpirun", "-np", "2", "--bind-to", "none", "--oversubscribe"],
}


def launcher(name: str, np: int = 2) -> list[str]:
    """The launcher's command line for ``np`` ranks (more ranks than cores: they share them)."""
    return [str(np) if arg == "2" and i and LAUNCHERS[name][i - 1] == "-np" else arg
            for i, arg in enumerate(LAUNCHERS[name])]

# Flags for a model that trains in seconds; TINY_WITH_PROGRESS keeps the progress lines (the
# default), which the tests of the loop's output read.
TINY_WITH_PROGRESS = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "8",
                      "--eval_sequences", "16", "--sample_tokens", "0", "--warmup_steps", "2"]
TINY = [*TINY_WITH_PROGRESS, "--progress", "false"]


def launch_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")  # CI runs as root
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


@dataclass
class Run:
    launcher: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def launch(launcher_name: str, command: list[str], timeout: float = 240, cwd=None, np: int = 2) -> Run:
    """Run ``command`` (e.g. [HVDLM, "train", ...]) under a launcher. A hang fails the test: no
    output for ``timeout`` seconds (a loaded machine makes a run longer, not red), after which the
    launcher's whole session, ranks included, is killed."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(launcher(launcher_name, np) + command, stdout=out, stderr=err, text=True, env=launch_env(),
                             cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)
        sizes = lambda: (os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)  # noqa: E731
        try:
            wait_for(lambda: p.poll() is not None, f"{launcher_name} {' '.join(command)}", sizes, stall=timeout,
                     poll=0.05)
        except RuntimeError as e:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            out.seek(0), err.seek(0)
            pytest.fail(f"{e}:\n{out.read()}\n{err.read()}")
        except BaseException:  # the per-test timeout (pytest.ini), ^C: no ranks left behind
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        out.seek(0), err.seek(0)
        return Run(launcher_name, p.returncode, out.read(), err.read(), time.monotonic() - start)


def check(run: Run) -> Run:
    assert run.returncode == 0, run.output
    return run


LIMIT = 60  # seconds for bad input to fail: "within seconds", with room for loading torch on a busy 2-core machine


def rank_output(run: Run) -> str:
    """What the ranks printed. horovodrun tags each rank's lines ("[1]<stderr>:") and, when a rank
    exits non-zero, adds a traceback of its own (its launcher's RuntimeError): that one is not ours."""
    if not run.launcher.startswith("horovodrun"):
        return run.output
    return "\n".join(line for line in run.output.splitlines() if re.match(r"\[\d+(,\d+)?\]<std", line))


def assert_one_clear_error(run: Run, *words) -> None:
    """Bad input: a non-zero exit within LIMIT, one `hvdlm: error:` line naming ``words``, no traceback."""
    assert run.returncode != 0, run.output
    assert run.seconds < LIMIT, f"took {run.seconds:.0f}s"
    ours = rank_output(run)
    lines = [line for line in ours.splitlines() if "hvdlm: error:" in line or "failed:" in line]
    assert len(lines) == 1, run.output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in ours, run.output
