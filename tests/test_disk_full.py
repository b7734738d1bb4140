"""A disk that fills up while rank 0 writes a checkpoint: one line that says so (where, how much a
checkpoint needs, that the previous one is intact), on a real small filesystem (tmpfs)."""

from __future__ import annotations

import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from support.launch import HVDLM, TINY, check, launch
from hvdlm import checkpoint
from hvdlm.errors import HvdlmError


@contextmanager
def tmpfs(where: Path, size_bytes: int):
    """A filesystem of ``size_bytes`` at ``where`` (mounting needs root, which CI and these machines have)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def state_of(step: int, nbytes: int) -> dict:
    return {"step": step, "model": {"w": torch.full((nbytes // 4,), float(step))}}


@pytest.mark.parametrize("keep", [1, 3])
def test_save_on_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, keep):
    with tmpfs(tmp_path / "disk", 3 << 20) as disk:
        checkpoint.save(state_of(1, 2 << 20), disk, keep=keep)  # 2 MB of 3: fits once, not twice
        with pytest.raises(HvdlmError) as e:
            checkpoint.save(state_of(2, 2 << 20), disk, keep=keep)
        msg = str(e.value)
        assert msg.startswith("disk full: cannot write the checkpoint of step 2 to")
        assert f"the filesystem at {disk}" in msg and "a checkpoint needs about 2.0 MB" in msg
        assert "the previous checkpoint" in msg and "is intact" in msg
        assert checkpoint.load(disk / "checkpoint.pt")["step"] == 1
        assert not list(disk.glob(".*.tmp"))  # the half-written file is gone, its space free again


def test_training_on_a_disk_that_fills_up_ends_with_one_line(corpus, tmp_path):
    common = ["--data_dir", str(corpus), *TINY, "--max_steps", "6", "--checkpoint_interval", "2",
              "--eval_interval", "0", "--keep_checkpoints", "5", "--tensorboard", "false"]
    # the size of one checkpoint of this model, from a run on an ordinary disk
    check(launch("single", [HVDLM, "train", *common, "--out_dir", str(tmp_path / "sizing"), "--max_steps", "2"]))
    size = (tmp_path / "sizing" / "checkpoint.pt").stat().st_size
    with tmpfs(tmp_path / "disk", int(2.5 * size) + (64 << 10)) as disk:  # room for two, not three
        run = launch("horovodrun-mpi", [HVDLM, "train", *common, "--out_dir", str(disk)])
        assert run.returncode != 0
        lines = [line for line in run.output.splitlines() if "hvdlm: error:" in line]
        assert len(lines) == 1 and "disk full" in lines[0], run.output
        assert re.search(r"previous checkpoint \(checkpoint-step00000004\.pt, step 4\) is intact", lines[0]), lines[0]
        ranks = [line for line in run.output.splitlines() if re.match(r"\[\d+(,\d+)?\]<std", line)]  # not horovodrun's own
        assert not any("Traceback" in line for line in ranks), run.output
        assert checkpoint.newest_valid(disk).state["step"] == 4
