"""The sync strategies (--compression bf16|powersgd, --sync local_sgd|diloco) with 2 real ranks,
over Gloo and MPI: what each computes, that ranks agree after each sync, exact resume, refusals."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from support.launch import HVDLM, assert_one_clear_error, check, launch
from support.runs import G12, SYNC_PROBE, assert_same_params, flags, losses, saved
from hvdlm.config import load_config
from hvdlm.errors import HvdlmError
from hvdlm.metrics import read_jsonl

@pytest.mark.parametrize("launcher, np", [("horovodrun-gloo", 2), ("horovodrun-mpi", 3)])
def test_powersgd_bf16_and_int8_compute_what_they_promise(launcher, np, tmp_path):
    """At 2 ranks and at 3 (uneven chunks; 300 int8 values on 3 ranks: chunks of 256, 44 and none)."""
    out = tmp_path / "math.json"
    check(launch(launcher, [sys.executable, SYNC_PROBE, "math", str(out)], np=np))
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == list(range(np))
    for r in ranks:
        # a rank at least the smaller side of every matrix: the plain average, to fp tolerance
        assert r["powersgd_exact"]["compressed"] == 3 and r["powersgd_exact"]["max_rel_error"] < 1e-5, r
        # error feedback: applied updates + the mean residual = the true averaged gradients;
        # without the residual they are far apart (rank 1 of a rank-2 signal loses a lot)
        fb = r["error_feedback"]
        assert fb["compressed"] == 3 and fb["tracked_error"] < 1e-5 and fb["untracked_error"] > 1e-2, fb
        # bf16: the fp32 mean to bf16 rounding (unit roundoff 2^-8 in, 2^-8 out), values beyond fp16's range too
        assert r["bf16"]["numel"] == 1001 and r["bf16"]["max_rel_error"] <= 2 ** -7, r["bf16"]
        # int8: within its bound (two roundings to 1/254 of a block's largest value), and not exact
        assert r["int8"]["numel"] == 1001 and 0 < r["int8"]["worst_of_bound"] <= 1, r["int8"]
        assert r["int8_small"]["numel"] == 300 and 0 < r["int8_small"]["worst_of_bound"] <= 1, r["int8_small"]
    for what in ("bf16", "int8", "int8_small"):  # bitwise the same on every rank
        assert len({r[what]["sha256"] for r in ranks}) == 1, what


def test_local_sgd_every_step_with_sgd_equals_synchronous_training(corpus, tmp_path):
    """SGD with momentum and weight decay is linear in the gradient: averaging the parameters after
    every step is averaging the gradients (clipping, which is not linear, off) at the same lr:
    local SGD's inner lr is never scaled, so every-step sync runs here unscaled too."""
    sgd = ["--optimizer", "sgd", "--lr", "0.3", "--grad_clip", "0", "--max_steps", "6", "--lr_scaling", "none"]
    check(launch("horovodrun-gloo", [HVDLM, "train", *flags(corpus, tmp_path / "sync", *sgd)]))
    check(launch("horovodrun-gloo", [HVDLM, "train", *flags(corpus, tmp_path / "local", *sgd, "--sync", "local_sgd",
                                                                   "--sync_every", "1")]))
    assert_same_params(tmp_path / "local", tmp_path / "sync", rtol=1e-5, atol=1e-6)


def test_diloco_with_outer_lr_1_and_no_momentum_equals_local_sgd(corpus, tmp_path):
    every = ["--sync_every", "3"]  # syncs at steps 3, 6 and the last, 8
    check(launch("horovodrun-mpi", [HVDLM, "train", *flags(corpus, tmp_path / "local", "--sync", "local_sgd", *every)]))
    run = check(launch("horovodrun-mpi", [HVDLM, "train", *flags(corpus, tmp_path / "diloco", "--sync", "diloco",
                                                                  *every, "--outer_lr", "1", "--outer_momentum", "0")]))
    assert "DiLoCo, outer Nesterov SGD (lr 1, momentum 0) every 3 steps" in run.output
    assert_same_params(tmp_path / "diloco", tmp_path / "local", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("launcher, extra, tol", [
    ("horovodrun-gloo", ["--sync", "local_sgd"], 1e-6),
    ("horovodrun-mpi", ["--sync", "diloco", "--outer_lr", "0.5", "--outer_momentum", "0"], 1e-6),
    ("horovodrun-gloo", ["--sync", "diloco", "--outer_lr", "0.5", "--outer_momentum", "0", "--compression", "bf16"],
     2e-2),
])
def test_an_overlapped_exchange_is_applied_later_with_the_steps_taken_meanwhile(launcher, extra, tol, corpus,
                                                                                tmp_path):
    """--overlap_steps 2 with syncs every 3 steps: sent at 3, applied at 5 as the synced parameters
    plus each rank's own steps 4 and 5; sent at 6, due at 8, the last step, where the ranks meet."""
    out = tmp_path / "exchanges"
    check(launch(launcher, [sys.executable, SYNC_PROBE, "exchanges", str(out), "--",
                            *flags(corpus, tmp_path / "run", *extra, "--sync_every", "3", "--overlap_steps", "2")]))
    probed = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    # one exchange in H steps: Horovod's background thread cycles every 20 ms, not 1 ms (idle traffic)
    assert [s["cycle_ms"] for s in probed] == ["20", "20"]
    ranks = [s["events"] for s in probed]
    sends = [[e for e in events if "send" in e] for events in ranks]
    applies = [[e for e in events if "applied" in e] for events in ranks]
    # overlapped, an exchange goes in one slice per step until it is due: 2 here; the last sync in one
    assert [(e["send"], e["due"], e["slices"]) for e in sends[0]] == [(3, 5, 2), (6, 8, 2), (8, 8, 1)]
    assert [(e["applied"], e["due"]) for e in applies[0]] == [(5, 5), (8, 8), (8, 8)]
    for i, due in enumerate([5, 8, 8]):
        mean_sent = (sends[0][i]["sent"] + sends[1][i]["sent"]) / 2
        if "diloco" in extra:  # outer SGD, lr 0.5, no momentum, from the parameters of the last sync
            anchor = sends[0][i]["anchor"]
            assert torch.equal(anchor, sends[1][i]["anchor"])
            synced = anchor - 0.5 * (anchor - mean_sent)
        else:
            synced = mean_sent
        for r in range(2):
            meanwhile = applies[r][i]["before"] - sends[r][i]["sent"]
            assert (meanwhile.abs().max() > 0) == (i < 2)  # steps 4-5 behind the first, 7-8 behind the second
            torch.testing.assert_close(applies[r][i]["after"], synced + meanwhile, rtol=tol, atol=tol)
        # each rank keeps its own steps after an overlapped exchange; the last sync is one model
        assert torch.equal(applies[0][i]["after"], applies[1][i]["after"]) == (i == 2)


@pytest.mark.parametrize("launcher, np, extra, sync_steps", [
    ("horovodrun-gloo", 2, ["--sync", "local_sgd", "--sync_every", "3"], [3, 6, 8]),
    ("horovodrun-mpi", 2, ["--sync", "diloco", "--sync_every", "3", "--compression", "bf16"], [3, 6, 8]),
    ("horovodrun-gloo", 2, ["--sync", "diloco", "--sync_every", "3", "--compression", "int8"], [3, 6, 8]),
    ("horovodrun-gloo", 2, ["--compression", "powersgd", "--powersgd_rank", "2", "--grad_accum", "2"], range(1, 9)),
    ("horovodrun-mpi", 2, ["--compression", "bf16"], range(1, 9)),
    ("horovodrun-gloo", 2, ["--sync", "local_sgd", "--sync_every", "3", "--overlap_steps", "1"], [8]),
    ("horovodrun-mpi", 3, ["--sync", "diloco", "--sync_every", "3", "--compression", "int8", *G12], [3, 6, 8]),
    ("horovodrun-gloo", 3, ["--compression", "powersgd", "--powersgd_rank", "2", *G12], range(1, 9)),
    ("horovodrun-gloo", 4, ["--compression", "bf16", *G12], range(1, 9)),
    ("horovodrun-mpi", 4, ["--sync", "local_sgd", "--sync_every", "3", "--overlap_steps", "1", *G12], [8]),
])
def test_parameters_are_identical_on_all_ranks_right_after_each_sync(launcher, np, extra, sync_steps, corpus,
                                                                    tmp_path):
    out = tmp_path / "digests.json"
    check(launch(launcher, [sys.executable, SYNC_PROBE, "digests", str(out), "--",
                            *flags(corpus, tmp_path / "run", "--dropout", "0.1", *extra)], np=np))
    ranks = json.loads(out.read_text())
    steps = [[s["step"] for s in r["steps"]] for r in ranks]
    assert steps == [list(range(1, 9))] * np
    for i in range(8):
        same = len({r["steps"][i]["sha256"] for r in ranks}) == 1
        assert same == (i + 1 in sync_steps), (i + 1, extra)  # between syncs each rank has its own


@pytest.mark.parametrize("launcher, np, extra", [
    ("horovodrun-gloo", 2, ["--compression", "powersgd", "--powersgd_rank", "2"]),
    ("horovodrun-mpi", 2, ["--compression", "bf16"]),
    ("horovodrun-mpi", 2, ["--sync", "local_sgd", "--sync_every", "3"]),
    ("horovodrun-gloo", 2, ["--sync", "diloco", "--sync_every", "3", "--compression", "fp16"]),
    ("horovodrun-mpi", 2, ["--sync", "diloco", "--sync_every", "3", "--overlap_steps", "3", "--compression", "bf16"]),
    ("horovodrun-gloo", 2, ["--sync", "diloco", "--sync_every", "3", "--overlap_steps", "3", "--compression", "int8"]),
    ("horovodrun-mpi", 3, ["--sync", "diloco", "--sync_every", "3", "--overlap_steps", "3", "--compression", "int8",
                           *G12]),
])
def test_resume_reproduces_an_unbroken_run(launcher, np, extra, corpus, tmp_path):
    """Stopped at step 5 (inside a window of 3 steps; after PowerSGD's warmup of 2), resumed to 8:
    the losses and parameters of a run that never stopped. Each rank must get its own residuals
    (or parameters and moments between syncs) back: rank 0's for both would change the losses."""
    common = flags(corpus, None, "--dropout", "0.1", *extra)
    whole, split = tmp_path / "whole", tmp_path / "split"
    check(launch(launcher, [HVDLM, "train", *common, "--out_dir", str(whole)], np=np))
    check(launch(launcher, [HVDLM, "train", *common, "--out_dir", str(split), "--stop_after", "5"], np=np))
    state = saved(split)
    assert state["step"] == 5
    if extra[1] != "bf16":  # per-rank state: one file per rank, named in the main file's manifest; they differ
        files = state["rank_files"]["files"]
        assert [f["name"] for f in files] == [f"ranks/step00000005-rank0000{r}-of0000{np}.pt" for r in range(np)]
        ranks = [torch.load(split / f["name"], weights_only=True)["state"] for f in files]
        assert "sync_ranks" not in state and "params" not in state["sync"]["state"]
        first = next(iter(ranks[0]["errors"].values())) if "errors" in ranks[0] else ranks[0]["params"]
        other = next(iter(ranks[1]["errors"].values())) if "errors" in ranks[1] else ranks[1]["params"]
        assert not torch.equal(first, other)
        # overlapped: the exchange sent at step 3 is due at 6, in flight at the stop; each rank saved it
        assert ("pending" in ranks[0]) == ("--overlap_steps" in extra)
    stopped = tmp_path / "stopped"
    shutil.copytree(split, stopped)
    resumed = check(launch(launcher, [HVDLM, "train", *common, "--out_dir", str(split)], np=np))
    assert "resuming at step 5" in resumed.output
    expected, got = losses(whole), losses(split)
    assert sorted(got) == list(range(1, 9))
    for step in range(6, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert_same_params(split, whole, rtol=1e-6, atol=1e-7)

    if extra[1] != "bf16":  # on one rank: the per-rank state cannot be placed; one line says so
        alone = check(launch("single", [HVDLM, "train", *common, "--out_dir", str(stopped)]))
        notes = [line for line in alone.output.splitlines() if "the checkpoint holds" in line]
        assert len(notes) == 1 and f"{np} rank(s)" in notes[0], alone.output
        assert read_jsonl(stopped / "metrics.jsonl", "summary")[-1]["finished"]


@pytest.mark.parametrize("settings, message", [
    ({"compression": "powersgd", "reduce_op": "adasum", "grad_clip": 0.0}, "reduce_op adasum"),
    ({"compression": "bf16", "reduce_op": "adasum", "grad_clip": 0.0}, "reduce_op adasum"),
    ({"sync": "local_sgd", "sync_every": 0}, "sync_every must be >= 1"),
    ({"compression": "powersgd", "powersgd_rank": 0}, "powersgd_rank must be >= 1"),
    ({"compression": "powersgd", "sync": "local_sgd"}, "compression powersgd compresses gradients every step"),
    ({"compression": "powersgd", "sync": "diloco"}, "compression powersgd compresses gradients every step"),
    ({"compression": "bf16", "sync": "local_sgd"}, "sync local_sgd averages the parameters themselves"),
    ({"compression": "int8"}, "compression int8 rounds diloco's outer exchange"),
    ({"compression": "int8", "sync": "local_sgd"}, "compression int8 rounds diloco's outer exchange"),
    ({"compression": "powersgd", "powersgd_start": 3, "warmup_steps": 10}, "must be at least warmup_steps"),
    ({"sync": "diloco", "outer_lr": 0.0}, "outer_lr must be positive"),
    ({"sync": "diloco", "outer_momentum": 1.0}, "outer_momentum must be in"),
    ({"sync": "diloco", "sync_every": 3, "overlap_steps": 4}, "overlap_steps must be in"),
    ({"sync": "diloco", "overlap_steps": -1}, "overlap_steps must be in"),
    ({"overlap_steps": 2}, "overlap_steps delays the exchange"),
    ({"sync": "diloco", "elastic": True}, "Horovod elastic cannot restore"),
    ({"compression": "bf16", "elastic": True}, "Horovod elastic cannot restore"),
])
def test_combinations_that_make_no_sense_are_refused(settings, message):
    with pytest.raises(HvdlmError, match=message):
        load_config(None, settings)


def test_a_refusal_is_one_line_on_every_rank_before_training(corpus, tmp_path):
    # one launcher: how each launcher passes on a refusal on every rank is test_bad_input's
    run = launch("horovodrun-gloo", [HVDLM, "train", *flags(corpus, tmp_path / "o", "--compression", "powersgd",
                                                   "--sync", "local_sgd")])
    assert_one_clear_error(run, "compression powersgd")
    assert not (tmp_path / "o" / "metrics.jsonl").exists()
