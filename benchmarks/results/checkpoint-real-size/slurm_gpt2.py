"""The time-limit path at real size on the local SLURM test cluster (issue 29, item 4), a recorded
run rather than a CI test (it takes ~10-20 minutes here):

    PYTHONPATH=tests .venv/bin/python -m pytest -p conftest -s benchmarks/results/checkpoint-real-size/slurm_gpt2.py

`gpt2` (85M parameters on byte data; block 32 and 3 sequences a rank keep a CPU step to seconds)
submitted with slurm/train.sbatch to 2 hosts with a 2-minute limit and the warning 45 s before it
(REQUEUE=1): training stops with a checkpoint and the job requeues itself; the requeued job is then
cancelled and the run resubmitted to 3 hosts (the global batch of 6 splits 2 x 3 and 3 x 2), which
resume and train 3 more steps. Every step's loss is compared with an unbroken run of the same
flags on this machine (2 ranks under horovodrun): equal to rounding under every-step sync; under
DiLoCo int8 the rank files are dropped on the new rank count (one line says so) and the losses
after the resume are within 2% of the unbroken run's.
"""

from __future__ import annotations

import re
import time

import pytest

from support.launch import HVDLM, check, launch
from support.runs import losses
from support.slurm import TRAIN, prepared, submit, two_nodes

GPT2 = ["--preset", "gpt2", "--block_size", "32", "--global_batch_size", "6", "--batch_size", "3",
        "--eval_interval", "0", "--eval_sequences", "3", "--sample_tokens", "0", "--progress", "false",
        "--tensorboard", "false", "--log_interval", "1", "--max_steps", "1000", "--checkpoint_interval", "4",
        "--keep_checkpoints", "1"]
MORE = 3  # steps the 3-host job trains after the resume


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("mode", [[], ["--sync", "diloco", "--sync_every", "2", "--compression", "int8"]],
                         ids=["every_step", "diloco_int8"])
def test_gpt2_time_limit_requeue_then_resume_on_3_hosts(slurm_cluster, tmp_path, mode):
    data = prepared(tmp_path, 300_000)
    out = tmp_path / "out"
    flags = [*GPT2, *mode]
    knobs = dict(DATA_DIR=data, OUT_DIR=out, PREFLIGHT=0)
    t0 = time.monotonic()
    first = submit(TRAIN, tmp_path, two_nodes(time_limit="2") + ["--signal", "B:USR1@45"], flags, REQUEUE=1, **knobs)
    first.wait(until=lambda info: "Restarts=1" in info and "JobState=PENDING" in info)
    print(f"[{mode or 'every_step'}] requeued after {time.monotonic() - t0:.0f}s")
    from support.cluster import sh
    sh(["scancel", first.id])
    first.wait()
    m = re.search(r"hvdlm: stopped at step (\d+)/1000 on SIGUSR1: checkpoint written to", first.output)
    assert m, first.output
    stopped = int(m.group(1))

    more = submit(TRAIN, tmp_path, ["--nodes", "3", "--ntasks-per-node", "1", "--cpus-per-task", "1", "--time", "30"],
                  [*flags, "--stop_after", str(MORE)], **knobs).wait()
    more.assert_state("COMPLETED", "0:0")
    assert "3 rank(s)" in more.output and f"resuming at step {stopped}" in more.output, more.output
    assert "heartbeat" not in first.output + more.output

    whole = tmp_path / "whole"
    check(launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(data), "--out_dir", str(whole), *flags,
                                     "--stop_after", str(stopped + MORE)], timeout=900))
    expected, got = losses(whole), losses(out)
    assert sorted(got) == list(range(1, stopped + MORE + 1))
    rel = 1e-4 if not mode else 0.02
    for step in range(1, stopped + MORE + 1):
        assert got[step] == pytest.approx(expected[step], rel=rel), (step, got[step], expected[step])
    print(f"[{mode or 'every_step'}] stopped at {stopped}, resumed on 3 hosts to {stopped + MORE}; losses "
          + ", ".join(f"{s}: {got[s]:.5f}/{expected[s]:.5f}" for s in range(stopped - 1, stopped + MORE + 1)))
