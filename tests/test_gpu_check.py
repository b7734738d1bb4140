"""scripts/gpu_check.sh and scripts/install.sh's NCCL decision, in seconds on any machine: both
parse; gpu_check says in one line that it needs a GPU where there is none; install.sh builds
Horovod with NCCL exactly when torch has CUDA, nvcc is found and a GPU is there, and HVDLM_NCCL
forces either way. What gpu_check does on a GPU is checked only by running it on one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK, INSTALL = ROOT / "scripts" / "gpu_check.sh", ROOT / "scripts" / "install.sh"
NO_GPU = ("gpu_check: no GPU here (nvidia-smi finds none): this script checks hvdlm's GPU path and needs a "
          "CUDA GPU")


def bash(*args, env: dict | None = None, path_first: Path | None = None) -> subprocess.CompletedProcess:
    """``bash ARGS`` with the test venv as HVDLM_VENV (the torch the tests import), HVDLM_NCCL unset
    unless ``env`` sets it, and ``path_first`` put before PATH (fake tools)."""
    full = {k: v for k, v in os.environ.items() if k != "HVDLM_NCCL"}
    full["HVDLM_VENV"] = sys.prefix
    if path_first:
        full["PATH"] = f"{path_first}{os.pathsep}{full['PATH']}"
    full.update(env or {})
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=120, env=full,
                          stdin=subprocess.DEVNULL)


def decision(**kw) -> str:
    run = bash(INSTALL, "--nccl-decision", **kw)
    assert run.returncode == 0, run.stdout + run.stderr
    (line,) = run.stdout.splitlines()  # one line, nothing installed
    assert line.startswith("[install] NCCL: "), line
    return line


def tool(folder: Path, name: str, script: str) -> None:
    (folder / name).write_text("#!/bin/sh\n" + script)
    (folder / name).chmod(0o755)


def gpus_listed() -> bool:
    """What both scripts take for a GPU here: `nvidia-smi -L` lists one (or, for install.sh,
    /dev/nvidia0 exists)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
    return any(line.startswith("GPU ") for line in out.splitlines())


def nvcc_found() -> bool:
    places = [os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")] if os.environ.get("CUDA_HOME") else []
    return shutil.which("nvcc") is not None or any(
        os.access(p, os.X_OK) for p in places + ["/usr/local/cuda/bin/nvcc"])


def test_both_scripts_parse():
    for script in (GPU_CHECK, INSTALL):
        run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert run.returncode == 0 and not run.stderr, (script, run.stderr)


def assert_no_gpu_line(run: subprocess.CompletedProcess) -> None:
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == 1 and lines == [NO_GPU], run.stdout + run.stderr
    assert run.stderr.strip() == NO_GPU


def test_gpu_check_without_a_gpu_is_one_line_and_exit_1(tmp_path):
    """Where nvidia-smi lists no GPU (a fake one here, so on any machine), at once and nothing else."""
    tool(tmp_path, "nvidia-smi", "echo 'No devices were found'\nexit 6\n")
    assert_no_gpu_line(bash(GPU_CHECK, path_first=tmp_path))


def test_this_machine_gpu_check_or_nccl_decision():
    """On a machine without a GPU, gpu_check.sh itself; on one with a GPU (where gpu_check would
    install and train for minutes), install.sh's decision: NCCL exactly when torch has CUDA and
    nvcc is found, else no, naming what is missing."""
    no_gpu = not gpus_listed() if shutil.which("nvidia-smi") else not torch.cuda.is_available()
    if no_gpu:
        assert_no_gpu_line(bash(GPU_CHECK))
    line = decision()
    has_gpu = gpus_listed() or os.path.exists("/dev/nvidia0")
    if torch.version.cuda and nvcc_found() and has_gpu:
        assert line.startswith(f"[install] NCCL: yes (torch CUDA {torch.version.cuda}, nvcc at "), line
        return
    assert line.startswith("[install] NCCL: no (") and line.endswith("; set HVDLM_NCCL=1 to force)"), line
    for missing, why in ((not torch.version.cuda, "torch is a CPU build"), (not nvcc_found(), "no CUDA toolkit"),
                         (not has_gpu, "no GPU found")):
        assert (why in line) == missing, (why, line)


def test_hvdlm_nccl_forces_either_way():
    assert decision(env={"HVDLM_NCCL": "0"}) == "[install] NCCL: no (forbidden by HVDLM_NCCL=0)"
    assert decision(env={"HVDLM_NCCL": "1"}) == "[install] NCCL: yes (forced by HVDLM_NCCL=1)"
    bad = bash(INSTALL, "--nccl-decision", env={"HVDLM_NCCL": "yes"})
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip() == ("[install] ERROR: HVDLM_NCCL must be 1 (force an NCCL build) or 0 (forbid it), "
                                  "got 'yes'")


@pytest.mark.parametrize("torch_cuda, gpus, expected", [
    ("12.4", 2, r"yes \(torch CUDA 12\.4, nvcc at \S+/nvcc, 2 GPU\(s\)\)"),
    ("cpu", 2, r"no \(torch is a CPU build; set HVDLM_NCCL=1 to force\)"),
    (None, 1, r"no \(torch not installed yet, its CUDA unknown; set HVDLM_NCCL=1 to force\)"),
])
def test_the_decision_follows_torch_nvcc_and_the_gpus(tmp_path, torch_cuda, gpus, expected):
    """A machine made of fakes: nvidia-smi listing `gpus` GPUs, nvcc under $CUDA_HOME, and a venv
    whose python says torch's CUDA (or has no torch)."""
    bin_, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
    for d in (bin_, venv, tmp_path / "cuda" / "bin"):
        d.mkdir(parents=True)
    tool(bin_, "nvidia-smi", "".join(f"echo 'GPU {i}: NVIDIA Fake (UUID: GPU-{i})'\n" for i in range(gpus)))
    tool(tmp_path / "cuda" / "bin", "nvcc", "exit 0\n")
    tool(venv, "python", f"echo {torch_cuda}\n" if torch_cuda else "exit 1\n")
    line = decision(env={"HVDLM_VENV": str(tmp_path / "venv"), "CUDA_HOME": str(tmp_path / "cuda"),
                         "PYTHON": str(venv / "python")}, path_first=bin_)
    assert re.fullmatch(r"\[install\] NCCL: " + expected, line), line
    tool(bin_, "nvidia-smi", "exit 6\n")  # the driver's tools, and no GPU
    line = decision(env={"HVDLM_VENV": str(tmp_path / "venv"), "CUDA_HOME": str(tmp_path / "cuda"),
                         "PYTHON": str(venv / "python")}, path_first=bin_)
    if os.path.exists("/dev/nvidia0"):  # a GPU device after all: install.sh counts it
        assert "no GPU found" not in line, line
    else:
        assert "no GPU found: nvidia-smi lists none" in line and line.startswith("[install] NCCL: no ("), line


@pytest.mark.parametrize("driver, expected", [
    (None, "https://download.pytorch.org/whl/cpu (the CPU build: nvidia-smi finds no GPU)"),
    ("13.1", "PyPI (CUDA 13.0 (PyPI's default build): the GPU driver supports CUDA 13.1)"),
    ("12.9", "https://download.pytorch.org/whl/cu128 (CUDA 12.8: the GPU driver supports CUDA 12.9, too old for "
             "PyPI's CUDA 13 build)"),
    ("12.6", "https://download.pytorch.org/whl/cu126 (CUDA 12.6: the GPU driver supports CUDA 12.6, too old for "
             "PyPI's CUDA 13 build)"),
])
def test_the_torch_build_follows_the_gpu_driver(tmp_path, driver, expected):
    """A fake nvidia-smi with a GPU and a driver for CUDA `driver` (or none at all): the torch
    build install.sh would take, in one line; an override wins; a driver too old is one error."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    if driver:
        tool(bin_, "nvidia-smi", 'if [ "$1" = -L ]; then echo "GPU 0: NVIDIA Fake (UUID: GPU-0)"; else\n'
                                 f'echo "| NVIDIA-SMI 570.1  Driver Version: 570.1  CUDA Version: {driver}  |"; fi\n')
    else:
        tool(bin_, "nvidia-smi", "exit 6\n")
    run = bash(INSTALL, "--torch-decision", path_first=bin_)
    assert run.returncode == 0 and run.stdout.splitlines() == [f"[install] torch: {expected}"], run.stdout + run.stderr
    given = bash(INSTALL, "--torch-decision", env={"HVDLM_TORCH_INDEX": "https://mirror.example/whl"}, path_first=bin_)
    assert given.stdout.strip() == ("[install] torch: https://mirror.example/whl (from https://mirror.example/whl, "
                                    "as HVDLM_TORCH_INDEX says)"), given.stdout


def test_a_gpu_driver_too_old_for_the_pinned_torch_is_one_error(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    tool(bin_, "nvidia-smi", 'if [ "$1" = -L ]; then echo "GPU 0: NVIDIA Fake (UUID: GPU-0)"; else\n'
                             'echo "| NVIDIA-SMI 470.1  Driver Version: 470.1  CUDA Version: 11.4  |"; fi\n')
    run = bash(INSTALL, "--torch-decision", path_first=bin_)
    assert run.returncode == 1 and run.stdout == "", run.stdout
    assert run.stderr.strip().startswith("[install] ERROR: the GPU driver supports CUDA 11.4; torch=="), run.stderr
    assert "update the driver, or set HVDLM_TORCH_SPEC" in run.stderr


def test_install_checks_its_prerequisites_before_anything_else(tmp_path):
    """A Python that is too old (here: one whose version check fails) and no C++ compiler on PATH:
    one line for each, exit 1, and nothing installed (no venv made)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python-too-old").write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.9.2'\nexit 1\n")
    (fake / "python-too-old").chmod(0o755)
    for tool in ("bash", "sed", "id", "dirname", "head"):  # what the script needs to reach its checks, and no compiler
        (fake / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(fake), "HOME": str(tmp_path), "PYTHON": str(fake / "python-too-old"),
           "HVDLM_VENV": str(tmp_path / "venv")}
    run = subprocess.run([str(fake / "bash"), str(INSTALL)], capture_output=True, text=True, env=env, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and run.stdout == "", run.stdout + run.stderr
    assert lines[0].startswith("[install] ERROR: missing Python 3.11 or newer") and "Python 3.9.2" in lines[0], lines
    assert any("a C++ compiler: install g++" in line for line in lines), lines
    assert all(line.startswith("[install] ERROR: missing ") for line in lines), lines
    assert not (tmp_path / "venv").exists()
