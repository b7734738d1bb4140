"""Elastic training on this machine: lose a rank, go on at size 1 from the last commit, take it
back; the loss keeps falling and the parameters end where an uninterrupted 2-rank run's do.

Two ways to lose a rank, both with Horovod elastic over Gloo and a discovery script:
  * the script drops a slot (localhost:2, then localhost:1, then localhost:2 again): a host leaves
    and returns in good order;
  * kill -9 of the rank on one of two "hosts" (localhost:1 and 127.0.0.1:1, both this machine):
    Horovod blacklists that host, the other rank goes on alone, and the host returns after
    --host_cooldown seconds.
The command is what `hvdlm elastic` builds (elastic.launch_command), with each rank run through
tests/rank_probe.py, which slows every batch a little so that the changes land mid-training.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from hvdlm import checkpoint
from support.elastic import start_elastic, train_rows
from support.launch import HVDLM, PROBE, TINY, check, launch
from support.runs import reference_params

STEPS = 240
FLAGS = [*TINY, "--max_steps", str(STEPS), "--log_interval", "5", "--eval_interval", "0",
         "--checkpoint_interval", "50", "--commit_interval", "5", "--threads", "1",
         "--progress", "true"]  # the default, which TINY turns off: the progress lines are part of the test


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """The same run on 2 ranks, not elastic: the parameters the elastic runs must reach."""
    return reference_params(tmp_path_factory, lambda out: ["--data_dir", corpus, "--out_dir", out, *FLAGS], timeout=300)


def at_size(out: Path, size: int, after_step: int = 0, steps: int = 0):
    """A predicate: rank 0 has logged ``steps`` steps at this world size after ``after_step``."""
    def done() -> bool:
        rows = [r for r in train_rows(out) if r["ranks"] == size and r["step"] > after_step]
        return bool(rows) and rows[-1]["step"] - rows[0]["step"] >= steps
    return done


def last_step(out: Path) -> int:
    rows = train_rows(out)
    return rows[-1]["step"] if rows else 0


def check_the_run(result, out: Path, reference: dict) -> None:
    assert result.returncode == 0, result.output
    rows = train_rows(out)
    sizes = [r["ranks"] for r in rows]
    changes = [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]
    assert changes == [2, 1, 2], changes
    assert "hvdlm: elastic: 1 rank(s) now (were 2)" in result.output, result.output
    assert "hvdlm: elastic: 2 rank(s) now (were 1)" in result.output
    assert f"hvdlm: done at step {STEPS}/{STEPS} on 2 rank(s)" in result.output, result.output
    assert re.search(r"step \d+: loss [\d.]+, lr .* tokens/s", result.output), result.output
    # the loss keeps falling: before the loss, while alone, after the return
    phases = [[r["loss"] for r in rows if r["ranks"] == s] for s in (2, 1)]
    first, alone = phases[0][:6], phases[1]
    back = [r["loss"] for r in rows[sizes.index(1):] if r["ranks"] == 2]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(first) > mean(alone) > mean(back), (mean(first), mean(alone), mean(back))
    # every optimizer step took the same 16 sequences, whatever the size: the same parameters
    got = checkpoint.load(out / "checkpoint.pt")
    assert got["step"] == STEPS and got["train"]["global_batch"] == 16
    for name, ref in reference.items():
        torch.testing.assert_close(got["model"][name], ref, rtol=1e-4, atol=1e-5, msg=name)


def test_a_host_leaves_and_returns_through_the_discovery_script(corpus, tmp_path, uninterrupted):
    job, out, hosts = start_elastic(FLAGS, corpus, tmp_path, "localhost:2\n", network_interface="lo",
                                    host_cooldown=2)
    job.wait_until(lambda: last_step(out) >= 30, what="step 30 on 2 ranks")
    hosts.write_text("localhost:1\n")
    job.wait_until(at_size(out, 1, steps=25), what="25 steps on 1 rank")
    hosts.write_text("localhost:2\n")
    job.wait_until(at_size(out, 2, after_step=last_step(out), steps=1), what="2 ranks again")
    result = job.wait(180)
    check_the_run(result, out, uninterrupted)


def test_kill_9_a_rank_then_its_host_returns(corpus, tmp_path, uninterrupted):
    job, out, _ = start_elastic(FLAGS, corpus, tmp_path, "localhost:1\n127.0.0.1:1\n", network_interface="",
                                host_cooldown=2)
    job.wait_until(lambda: last_step(out) >= 30, what="step 30 on 2 ranks")
    job.inject(job.rank_pid(1), signal.SIGKILL)
    job.wait_until(at_size(out, 1, steps=1), what="1 rank going on")
    recovered = job.since_fault()
    assert recovered < 60, f"went on at size 1 {recovered:.0f}s after the kill"
    job.wait_until(at_size(out, 2, after_step=last_step(out), steps=1), what="the host back")
    result = job.wait(180)
    check_the_run(result, out, uninterrupted)


def test_a_joining_rank_gets_rank_0s_adamw_state_without_a_zero_gradient_step(tmp_path):
    """Horovod's TorchState syncs the optimizer with broadcast_optimizer_state, which steps a
    fresh AdamW once with zero gradients: the weights move by their weight decay."""
    out = tmp_path / "sync.json"
    check(launch("single", [sys.executable, PROBE, "elastic_sync", str(out)]))
    moved = json.loads(out.read_text())
    assert moved["TorchState"]["max_change"] > 1e-4 and moved["TorchState"]["optimizer_steps"] == [1.0, 1.0]
    assert moved["ElasticState"] == {"max_change": 0.0, "optimizer_steps": []}


# --- bad input: one line before anything starts --------------------------------------------------

def elastic(tmp_path, *args: str):
    return launch("single", [HVDLM, "elastic", "--out_dir", str(tmp_path / "o"), *args])


@pytest.mark.parametrize("args, message", [
    (["--min_ranks", "3", "--max_ranks", "2", "--discovery_script", "echo localhost:2"],
     "the elastic range is empty: min_ranks 3 is above max_ranks 2"),
    (["--discovery_script", "echo no route >&2; exit 3"],
     "discovery script echo no route >&2; exit 3 failed with exit status 3: no route"),
    (["--discovery_script", "echo 'localhost:2 and more'"],
     "printed 'localhost:2 and more': expected one `host` or `host:slots`"),
    (["--discovery_script", "echo localhost:0"], "printed 'localhost:0'"),
    (["--discovery_script", "true"], "printed no hosts"),
    ([], "elastic training needs --discovery_script"),
    (["--discovery_script", "echo no-such-host.invalid:2"],
     "starts on one host (no-such-host.invalid): give --network_interface"),
    (["--discovery_script", "echo localhost:1", "--min_ranks", "2", "--max_ranks", "2"],
     "offers 1 slot(s) (localhost:1), fewer than min_ranks 2"),
    (["--discovery_script", "echo localhost:3", "--max_ranks", "3", "--global_batch_size", "16",
      "--network_interface", "lo"],
     "a global batch of 16 sequences cannot be split evenly over 3 rank(s), in the elastic range 1..3; "
     "set --global_batch_size to a multiple of 6"),
    (["--discovery_script", "echo localhost:2", "--network_interface", "lo", "--data_dir", "/no/such/data"],
     "data dir /no/such/data does not exist"),
])
def test_bad_elastic_input_is_one_line_before_anything_starts(args, message, corpus, tmp_path):
    # real data first, so each case fails on its own problem (a later --data_dir wins)
    run = elastic(tmp_path, "--data_dir", str(corpus), *args)
    assert run.returncode == 2, run.output
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hvdlm: error: ") and message in lines[0], run.output


def test_elastic_ranks_need_the_elastic_launcher(corpus, tmp_path):
    run = launch("horovodrun-gloo", [HVDLM, "train", "--elastic", "true", "--data_dir", str(corpus),
                                     "--out_dir", str(tmp_path)])
    lines = [line for line in run.output.splitlines() if "hvdlm: error:" in line]
    assert run.returncode != 0 and len(lines) == 1 and "needs Horovod's elastic launcher" in lines[0], run.output
