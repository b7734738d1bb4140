"""Elastic training at real size (issue 29, item 4), a recorded run rather than a CI test:

    PYTHONPATH=tests .venv/bin/python -m pytest -p conftest -s benchmarks/results/checkpoint-real-size/elastic_gpt2.py

`gpt2` (85M parameters on byte data, block 32) under `hvdlm elastic` on two "hosts" of this
machine (localhost:1 and 127.0.0.1:1), the watchdog on: rank 1 is killed with SIGKILL at step 6;
rank 0 goes back to its last commit and trains alone; after --host_cooldown the host returns and
its new rank receives the whole state (model, AdamW moments, train state: ~1 GB) from rank 0 in
the elastic sync, as tensors. The run must end at its last step with the parameters of an
unbroken 2-rank run (every optimizer step takes the same global batch at any size).
"""

from __future__ import annotations

import signal

import pytest
import torch

from hvdlm import checkpoint
from support.elastic import start_elastic, train_rows
from support.launch import HVDLM, check, launch

STEPS = 20
FLAGS = ["--preset", "gpt2", "--block_size", "32", "--batch_size", "2", "--max_steps", str(STEPS),
         "--log_interval", "1", "--eval_interval", "0", "--eval_sequences", "2", "--sample_tokens", "0",
         "--tensorboard", "false", "--checkpoint_interval", "10", "--commit_interval", "2", "--threads", "1",
         "--watchdog", "true"]


@pytest.mark.timeout(3600)
def test_gpt2_elastic_loses_a_host_goes_on_and_takes_it_back(corpus, tmp_path):
    whole = tmp_path / "whole"
    check(launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(whole), *FLAGS],
                 timeout=900))
    job, out, _ = start_elastic(FLAGS, corpus, tmp_path / "elastic", "localhost:1\n127.0.0.1:1\n",
                                network_interface="", host_cooldown=2)

    def steps():
        return [(r["step"], r["ranks"]) for r in train_rows(out)]
    job.wait_until(lambda: len(steps()) >= 6, what="step 6 on 2 ranks", stall=600)
    job.inject(job.rank_pid(1), signal.SIGKILL)
    job.wait_until(lambda: any(size == 1 for _, size in steps()), what="1 rank going on", stall=600)
    recovered = job.since_fault()
    job.wait_until(lambda: [s for _, s in steps()][-1:] == [2] and 1 in [s for _, s in steps()],
                   what="the host back", stall=600)
    result = job.wait(900)
    assert result.returncode == 0, result.output
    sizes = [s for _, s in steps()]
    changes = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]
    assert changes == [2, 1, 2], changes
    assert "heartbeat" not in result.output, result.output
    got, want = checkpoint.load(out / "checkpoint.pt"), checkpoint.load(whole / "checkpoint.pt")
    assert got["step"] == STEPS
    worst = max(float((got["model"][k] - v).abs().max()) for k, v in want["model"].items())
    for name, ref in want["model"].items():
        torch.testing.assert_close(got["model"][name], ref, rtol=1e-4, atol=1e-5, msg=name)
    print(f"elastic gpt2: sizes {changes}, alone {recovered:.0f}s after the kill, back at step "
          f"{next(st for (st, s), prev in zip(steps()[1:], sizes) if s == 2 and prev == 1)}, largest parameter "
          f"difference to the unbroken run {worst:.2e}")
