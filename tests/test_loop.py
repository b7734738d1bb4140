"""The one step loop: plain and elastic runs go through the same steps, its components decide
when they act, its state object replans on any world size, and rank 0's lines arrive whole."""

from __future__ import annotations

import io
import multiprocessing
import re

import pytest

from support.elastic import discovery_script
from support.launch import HVDLM, TINY, TINY_WITH_PROGRESS, check, launch
from support.runs import losses
from hvdlm.checkpoint import Checkpointer
from hvdlm.console import say
from hvdlm.elastic import is_this_machine, launch_command
from hvdlm.evaluate import Evaluator
from hvdlm.inputs import prepare_out_dir
from hvdlm.config import load_config
from hvdlm.metrics import Metrics, read_jsonl
from hvdlm.state import BatchPlan, TrainState

# The elastic command: only what a user must give, progress on (the default).
FLAGS = [*TINY_WITH_PROGRESS, "--max_steps", "20", "--log_interval", "5", "--eval_interval", "10", "--threads", "1"]
# A launcher's tag ("[1,0]<stdout>:" under MPI, "[0]<stdout>:" under Gloo) anywhere but at a
# line's start means a line reached the launcher in two writes.
TAG_INSIDE = re.compile(r".\[\d+(,\d+)?\]<std(out|err)>:")


def assert_whole_lines(output: str) -> None:
    broken = [line for line in output.splitlines() if TAG_INSIDE.search(line)]
    assert not broken, "lines that reached the launcher in two writes:\n" + "\n".join(broken[:5])


def test_plain_and_elastic_runs_give_the_same_losses_step_for_step(corpus, tmp_path):
    plain_out, elastic_out = tmp_path / "plain", tmp_path / "elastic"
    plain = check(launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(plain_out),
                                             *FLAGS], timeout=300))
    script, _ = discovery_script(tmp_path, "localhost:2\n")
    # no --network_interface: every host the script names is this machine, so hvdlm picks lo
    elastic = check(launch("single", [HVDLM, "elastic", "--min_ranks", "1", "--max_ranks", "2",
                                      "--discovery_script", str(script), "--data_dir", str(corpus),
                                      "--out_dir", str(elastic_out), *FLAGS], timeout=300))
    got, want = losses(elastic_out), losses(plain_out)
    assert sorted(got) == sorted(want) == [5, 10, 15, 20]
    assert got == pytest.approx(want, rel=1e-5), (got, want)
    # the loop's records are the same in both modes: progress lines print (once per log step)
    for run in (plain, elastic):
        assert len(re.findall(r"step \d+: loss [\d.]+, lr .*tokens/s.*, allreduce wait", run.output)) == 4, run.output
        assert "hvdlm: done at step 20/20 on 2 rank(s)" in run.output, run.output
        assert_whole_lines(run.output)
    summaries = [read_jsonl(o / "metrics.jsonl", "summary")[-1] for o in (plain_out, elastic_out)]
    for key in ("step", "finished", "global_batch", "micro_batch", "grad_accum", "ranks"):
        assert summaries[0][key] == summaries[1][key], key
    assert summaries[1]["tokens_per_s"] > 0


def test_a_stop_after_ends_an_elastic_run_with_a_checkpoint_and_a_summary(corpus, tmp_path):
    script, _ = discovery_script(tmp_path, "localhost:2\n")
    out = tmp_path / "o"
    run = check(launch("single", [HVDLM, "elastic", "--min_ranks", "1", "--max_ranks", "2", "--discovery_script",
                                  str(script), "--data_dir", str(corpus), "--out_dir", str(out), *FLAGS,
                                  "--stop_after", "7"], timeout=300))
    assert "hvdlm: done at step 7/20" in run.output, run.output
    from hvdlm import checkpoint

    assert checkpoint.load(out / "checkpoint.pt")["step"] == 7
    summary = read_jsonl(out / "metrics.jsonl", "summary")[-1]
    assert summary["step"] == 7 and not summary["finished"] and summary["stopped_by"] is None


def test_the_readme_command_prints_whole_lines_under_mpi(corpus, tmp_path):
    run = check(launch("horovodrun-mpi", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(tmp_path),
                                          *FLAGS, "--sample_tokens", "30"], timeout=300))
    assert "[1,0]<stdout>:step 5: loss" in run.output, run.output
    assert_whole_lines(run.output)


# --- components, without a launcher ----------------------------------------------------------------

def test_train_state_replans_on_any_world_size_and_keeps_the_data_position():
    state = TrainState(BatchPlan(16, 1e-3, 1e-4), num_train_seqs=100, seed=3, max_micro=8)
    state.replan(rank=0, size=2)
    assert (state.micro, state.accum) == (8, 1)
    first = [state.sampler.next_indices().tolist() for _ in range(3)]
    state.step = 3
    saved = state.state_dict()
    # one rank alone reads the same global batches as two ranks, in two micro-steps of 8
    alone = TrainState(BatchPlan(1, 1.0, 1.0), num_train_seqs=100, seed=3, max_micro=8)
    alone.load_state_dict(saved)
    alone.replan(rank=0, size=1)
    assert (alone.micro, alone.accum, alone.step, alone.plan.global_batch) == (8, 2, 3, 16)
    two = TrainState(BatchPlan(16, 1e-3, 1e-4), num_train_seqs=100, seed=3, max_micro=8)
    two.load_state_dict(saved)
    two.replan(rank=0, size=2)
    ref = two.sampler.next_indices().tolist()
    assert alone.sampler.next_indices().tolist() == ref and ref not in first
    # replanning again goes on from where the sampler is, not from where it was loaded
    two.replan(rank=0, size=2)
    assert two.sampler.next_indices().tolist() != ref


def test_components_decide_when_they_act(tmp_path):
    evaluator = Evaluator(val=None, sequences=4, batch_size=2, interval=10, precision="fp32")
    assert [s for s in range(1, 26) if evaluator.due(s, last_step=25)] == [10, 20, 25]
    assert [s for s in range(1, 26) if Evaluator(None, 4, 2, 0, "fp32").due(s, 25)] == [25]
    ck = Checkpointer(str(tmp_path), 0, 1, {}, None, {})
    assert [s for s in range(1, 8) if ck.due(s, last_step=7)] == [7]
    assert ck.due(3, last_step=7, stopped="SIGUSR1")
    metrics = Metrics(tmp_path, False, 7, 0, progress=False, log_interval=3)
    assert [s for s in range(1, 8) if metrics.due(s, 7)] == [3, 6, 7]


def test_say_hands_the_whole_line_to_one_write():
    class Writes(io.StringIO):
        calls: list[str] = []

        def write(self, s):
            self.calls.append(s)
            return super().write(s)

    out = Writes()
    say("step 5: loss 3.1", file=out)
    assert out.calls == ["step 5: loss 3.1\n"]


def _probe_out_dir(path: str, n: int) -> None:
    for _ in range(n):
        prepare_out_dir(path)


def test_ranks_probing_one_out_dir_at_once_never_fail(tmp_path):
    """Elastic ranks each check the output folder at the same moment (the race behind a
    'cannot write to out_dir ...: No such file or directory' when a host came back)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_probe_out_dir, args=(str(tmp_path / "run"), 300)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert list((tmp_path / "run").iterdir()) == []


def test_hosts_of_this_machine_are_told_apart_from_others(corpus, tmp_path):
    assert is_this_machine("localhost") and is_this_machine("127.0.0.1")
    assert not is_this_machine("no-such-host.invalid")
    given = {"discovery_script": "echo localhost:1; echo 127.0.0.1:1", "data_dir": str(corpus),
             "out_dir": str(tmp_path / "o"), "min_ranks": 1, "max_ranks": 2}
    cmd = launch_command(load_config(None, given), given, np=2, network_interface="", host_cooldown=2,
                         config_file=None)
    assert cmd[cmd.index("--network-interface") + 1] == "lo"


def test_compile_true_trains_the_compiled_model_to_the_eager_losses_on_2_ranks(corpus, tmp_path):
    """`--compile true` (auto is on GPUs only): the compiled forward under Horovod's hooks gives
    the eager run's losses (to float rounding), the start line says so, and the checkpoint keeps
    the model's own parameter names (compiled in place)."""
    common = ["--data_dir", str(corpus), *TINY, "--max_steps", "4", "--log_interval", "1", "--eval_interval", "0",
              "--sample_tokens", "0"]
    eager = check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(tmp_path / "eager")]))
    compiled = check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(tmp_path / "compiled"),
                                                "--compile", "true"], timeout=900))
    assert ", compiled," in compiled.output and ", compiled," not in eager.output, compiled.output
    got, want = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert sorted(got) == [1, 2, 3, 4] and got == pytest.approx(want, rel=1e-4), (got, want)
    from hvdlm import checkpoint

    names = set(checkpoint.load(tmp_path / "compiled" / "checkpoint.pt")["model"])
    assert names == set(checkpoint.load(tmp_path / "eager" / "checkpoint.pt")["model"]), names
