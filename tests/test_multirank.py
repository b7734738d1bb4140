"""Data parallelism with 2 real ranks, under horovodrun (Gloo and MPI) and mpirun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from support.launch import HVDLM, PROBE, TINY, check, launch
from support.runs import final_params, losses, saved
from hvdlm.metrics import read_jsonl

TWO_RANKS = ["horovodrun-gloo", "mpirun"]


def test_ranks_read_disjoint_samples_that_cover_the_epoch(tmp_path):
    # one launcher: a rank's share follows from its rank and the size alone, whoever launched it
    out = tmp_path / "samples.json"
    num_seqs, batch = 103, 5  # 10 global batches of 10, and a tail of 3 that no rank reads
    check(launch("horovodrun-gloo", [sys.executable, PROBE, "samples", str(out), str(num_seqs), str(batch), "7"]))
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    seen = [[i for step in r["epoch"] for i in step] for r in ranks]
    assert all(len(s) == 10 * batch for s in seen)  # equal work on both ranks
    assert not set(seen[0]) & set(seen[1])  # disjoint
    assert len(set(seen[0]) | set(seen[1])) == 100  # together the whole epoch, bar the tail
    assert len(set(seen[0])) == len(seen[0])  # no sequence twice on one rank


@pytest.mark.parametrize("launcher", TWO_RANKS)
def test_gather_objects_brings_every_ranks_object_in_rank_order(launcher, tmp_path):
    """hvdlm's own object gather (hvd.allgather_object builds its tensor element by element while
    holding the GIL: a 128 MB checkpoint state starved the watchdog's heartbeat)."""
    out = tmp_path / "gather.json"
    check(launch(launcher, [sys.executable, PROBE, "gather", str(out)]))
    assert json.loads(out.read_text()) == [{"rank": r, "got": 2, "same": [True, True]} for r in (0, 1)]


@pytest.mark.parametrize("launcher, np", [("horovodrun-gloo", 2), ("mpirun", 3)])
def test_broadcast_object_sends_tensors_as_tensors_to_every_rank(launcher, np, tmp_path):
    """A checkpoint's state from rank 0: every dtype arrives equal, a tied weight stays one tensor,
    and no rank's GIL is held for long (a pickled state starved the watchdog's heartbeat)."""
    out = tmp_path / "broadcast.json"
    check(launch(launcher, [sys.executable, PROBE, "broadcast", str(out)], np=np))
    report = json.loads(out.read_text())
    assert [(r["rank"], r["same"]) for r in report] == [(r, True) for r in range(np)], report
    assert max(r["gil_gap_s"] for r in report) < 2.0, report  # the heartbeat beats every second


def test_on_root_checks_a_value_while_it_travels_and_sends_the_fallback_when_the_check_fails(tmp_path):
    """A resume's checksum runs beside the broadcast of the state (rank 0's read, hash and send
    overlap); when it fails or raises, every rank ends with the fallback's value instead."""
    out = tmp_path / "on_root.json"
    check(launch("mpirun", [sys.executable, PROBE, "on_root", str(out)], np=3))
    want = {"passes": "value", "fails": "fallback", "raises": "fallback", "error": "no such checkpoint"}
    report = json.loads(out.read_text())
    assert [{k: r[k] for k in want} for r in report] == [want] * 3, report
    assert report[0]["in_threads"] == [True, True, True] and report[1]["in_threads"] == [], report


@pytest.mark.parametrize("mode", [[], ["--compression", "bf16"], ["--compression", "powersgd"]])
def test_the_step_reads_nothing_back_to_the_host_but_on_logged_steps(mode, corpus, tmp_path):
    """The clip norm, the finiteness of an exchange and the loss stay on the device between
    logged steps, and the stop check does not wait: on a GPU each such read would stall the
    step until the device caught up. Counted on 2 ranks, every read hvdlm's code makes."""
    out = tmp_path / "reads"
    flags = ["--data_dir", str(corpus), "--out_dir", str(tmp_path / "run"), *TINY, "--max_steps", "9",
             "--log_interval", "4", "--eval_interval", "0", "--checkpoint_interval", "0", *mode]
    check(launch("horovodrun-gloo", [sys.executable, PROBE, "host_reads", str(out), "--", *flags]))
    for rank in (0, 1):
        report = json.loads(Path(f"{out}.{rank}").read_text())
        reads = {int(k): n for k, n in report["reads"].items()}
        quiet = [s for s in range(1, 10) if s not in (4, 8, 9) and reads.get(s)]
        assert not quiet, (quiet, report["where"])
        assert all(reads.get(s) for s in (4, 8, 9)), report  # the logged loss, at least: the counter counts


@pytest.mark.parametrize("launcher, extra", [
    ("horovodrun-gloo", []),
    ("horovodrun-mpi", ["--compression", "fp16", "--grad_accum", "2"]),
    ("mpirun", ["--reduce_op", "adasum", "--grad_clip", "0"]),
])
def test_parameters_stay_bitwise_identical_across_ranks(launcher, extra, corpus, tmp_path):
    out = tmp_path / "params.json"
    flags = ["--data_dir", str(corpus), "--out_dir", str(tmp_path / "run"), *TINY, "--max_steps", "8",
             "--dropout", "0.1", "--eval_interval", "0", *extra]  # dropout differs per rank; weights must not
    check(launch(launcher, [sys.executable, PROBE, "params", str(out), "--", *flags]))
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"], ranks


def test_two_ranks_with_half_the_batch_equal_one_rank(corpus, tmp_path):
    """Gradient averaging is exact: N ranks x B/N gives one rank x B's parameters.

    SGD with momentum and weight decay, and clipping that is active: clipping each rank's local
    gradient before the allreduce, or a zero-gradient step at start-up (what Horovod's
    ``broadcast_optimizer_state`` does to a fresh optimizer), would both break the equality.
    """
    common = ["--data_dir", str(corpus), *TINY, "--max_steps", "5", "--optimizer", "sgd", "--lr", "0.5",
              "--weight_decay", "0.1", "--grad_clip", "0.5", "--lr_scaling", "none", "--eval_interval", "0"]
    one = tmp_path / "one"
    check(launch("single", [HVDLM, "train", *common, "--out_dir", str(one), "--batch_size", "8"]))
    reference = final_params(one)
    start = saved(one)
    assert start["step"] == 5
    # the same global batch three ways: 2 x 4; and 2 ranks x 2 sequences x 2 accumulated micro-steps
    for launcher, split in (("horovodrun-gloo", ["--batch_size", "4"]), ("mpirun", ["--batch_size", "4"]),
                            ("horovodrun-mpi", ["--batch_size", "2", "--grad_accum", "2"])):
        two = tmp_path / launcher
        check(launch(launcher, [HVDLM, "train", *common, "--out_dir", str(two), *split]))
        got = final_params(two)
        for name, ref in reference.items():
            torch.testing.assert_close(got[name], ref, rtol=1e-5, atol=1e-6, msg=f"{launcher}: {name}")
        clip_rows = [r["grad_norm"] for r in read_jsonl(two / "metrics.jsonl", "train")]
        assert max(clip_rows) > 0.5  # clipping really acted


def test_resume_continues_exactly_where_it_stopped(corpus, tmp_path):
    """Stop at step 6, resume to 12: the same losses as a run that never stopped (AdamW, dropout)."""
    common = ["--data_dir", str(corpus), *TINY, "--max_steps", "12", "--log_interval", "1",
              "--dropout", "0.1", "--eval_interval", "0"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(whole)]))
    first = check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(split), "--stop_after", "6"]))
    assert saved(split)["step"] == 6, first.output
    second = check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(split)]))
    assert "resuming at step 6" in second.output

    expected, got = losses(whole), losses(split)
    assert sorted(got) == list(range(1, 13))
    for step in range(7, 13):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    for name, ref in final_params(whole).items():
        torch.testing.assert_close(final_params(split)[name], ref, rtol=1e-6, atol=1e-7)


def test_short_run_on_default_corpus_lowers_validation_loss(corpus, tmp_path):
    out = tmp_path / "run"
    run = check(launch("mpirun", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(out),
                                  "--preset", "tiny", "--block_size", "64", "--max_steps", "60",
                                  "--eval_interval", "30", "--progress", "false", "--sample_tokens", "40"]))
    evals = read_jsonl(out / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals  # byte model starts near ln 256 = 5.5
    summary = read_jsonl(out / "metrics.jsonl", "summary")[-1]
    assert summary["ranks"] == 2 and summary["finished"]
    assert "--- sample ---" in run.stdout
    assert run.stdout.count("hvdlm: done") == 1  # rank 0 alone reports
    sample = check(launch("single", [HVDLM, "sample", "--out_dir", str(out), "--prompt", "def ",
                                     "--sample_tokens", "60", "--num_samples", "2"]))
    texts = sample.stdout.split("-" * 40)
    assert len(texts) == 3 and all(t.strip().startswith("def ") for t in texts[:2]), sample.stdout
    assert len(texts[0].strip()) > 30


def test_a_signal_on_one_rank_stops_all_with_a_checkpoint_and_resumes_on_another_rank_count(corpus, tmp_path):
    """SLURM's warning signal (SIGUSR1) reaches rank 1 during step 2: every rank stops after
    step 3, rank 0 checkpoints, all exit 75. The run then resumes on 1 rank with the same global
    batch (2 micro-steps) and reproduces the losses of an unbroken 2-rank run."""
    common = ["--data_dir", str(corpus), *TINY, "--max_steps", "8", "--log_interval", "1", "--eval_interval", "0"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    check(launch("mpirun", [HVDLM, "train", *common, "--out_dir", str(whole)]))
    stopped = launch("mpirun", [sys.executable, PROBE, "signal", "unused", "--", *common, "--out_dir", str(split)])
    assert stopped.returncode == 75, stopped.output
    assert "hvdlm: stopped at step 3/8 on SIGUSR1: checkpoint written" in stopped.output
    state = saved(split)
    assert state["step"] == 3 and state["train"]["global_batch"] == 16

    resumed = check(launch("single", [HVDLM, "train", *common, "--out_dir", str(split)]))
    assert "resuming at step 3" in resumed.output and "(1 x 8 x 2 micro-steps)" in resumed.output

    expected, got = losses(whole), losses(split)
    assert sorted(got) == list(range(1, 9))
    for step in range(4, 9):  # another reduction order: equal to rounding, not bitwise
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
