"""Past 2 ranks: data-parallel math at 3 and 4 real ranks, DiLoCo's outer step against torch's own
SGD, resumes onto another rank count in every mode, the resume rules, and that neither the main
checkpoint nor a rank's memory during a checkpoint grows with the rank count."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from support.launch import HVDLM, check, launch, rank_output
from hvdlm import checkpoint
from hvdlm.errors import HvdlmError
from hvdlm.metrics import read_jsonl
from hvdlm.sync.powersgd import PowerSGD
from support.runs import G12, SYNC_PROBE, assert_same_params, flags




def test_n_ranks_with_a_share_of_the_batch_equal_one_rank(corpus, tmp_path):
    """3 x 4 and 4 x 3 sequences give 1 x 12's parameters: SGD with momentum and weight decay,
    clipping active (clipped after the allreduce, or the equality breaks)."""
    sgd = ["--optimizer", "sgd", "--lr", "0.5", "--weight_decay", "0.1", "--grad_clip", "0.5", "--lr_scaling", "none",
           "--max_steps", "5"]
    check(launch("single", [HVDLM, "train", *flags(corpus, tmp_path / "one", *sgd, "--batch_size", "12")]))
    for launcher, np in (("horovodrun-gloo", 3), ("mpirun", 4)):
        check(launch(launcher, [HVDLM, "train", *flags(corpus, tmp_path / f"n{np}", *sgd, *G12)], np=np))
        assert_same_params(tmp_path / f"n{np}", tmp_path / "one", rtol=1e-5, atol=1e-6)


def test_diloco_outer_step_is_nesterov_sgd_on_the_averaged_pseudo_gradient_at_3_ranks(corpus, tmp_path):
    """The default outer step (lr 0.7, Nesterov momentum 0.9) against a reference computed here
    with torch.optim.SGD on the mean of the 3 ranks' pseudo-gradients, sync after sync."""
    out = tmp_path / "exchanges"
    check(launch("horovodrun-gloo", [sys.executable, SYNC_PROBE, "exchanges", str(out), "--",
                                     *flags(corpus, tmp_path / "run", "--sync", "diloco", "--sync_every", "3",
                                            *G12)], np=3))
    ranks = [torch.load(f"{out}.{r}", weights_only=True)["events"] for r in range(3)]
    sends = [[e for e in events if "send" in e] for events in ranks]
    applies = [[e for e in events if "applied" in e] for events in ranks]
    assert [e["send"] for e in sends[0]] == [3, 6, 8]
    reference = sends[0][0]["anchor"].clone().requires_grad_(False)
    outer = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True)
    for i in range(3):
        assert all(torch.equal(sends[r][i]["anchor"], sends[0][i]["anchor"]) for r in range(3)), i  # one anchor
        torch.testing.assert_close(sends[0][i]["anchor"], reference, rtol=1e-5, atol=1e-6)
        mean_sent = sum(sends[r][i]["sent"] for r in range(3)) / 3
        reference.grad = reference - mean_sent
        outer.step()
        for r in range(3):
            torch.testing.assert_close(applies[r][i]["after"], reference, rtol=1e-5, atol=1e-6)


MODES = {
    "every_step": [],
    "powersgd": ["--compression", "powersgd", "--powersgd_rank", "2"],
    "local_sgd": ["--sync", "local_sgd", "--sync_every", "3"],
    "diloco": ["--sync", "diloco", "--sync_every", "3", "--compression", "int8"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_resume_from_4_ranks_on_2_and_back_on_4(mode, corpus, tmp_path):
    """Steps 1-4 on 4 ranks, 5-7 on 2, 8-9 on 4 again (stops between syncs, where each rank's own
    state differs): the shared state goes on, each rank's own is dropped with one line, and the run
    trains to the end with the main checkpoint the same size at either count."""
    out = tmp_path / "run"
    common = flags(corpus, out, *MODES[mode], "--global_batch_size", "8", "--batch_size", "2", "--max_steps", "9",
                   "--dropout", "0.1")
    runs, sizes = [], []
    for np, stop in ((4, 4), (2, 3), (4, 0)):
        runs.append(check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--stop_after", str(stop)], np=np)))
        sizes.append(checkpoint.path_in(out).stat().st_size)
    # --lr 0.001 (the default) for one rank's batch of 2: x 4 for every-step sync on 8 sequences;
    # local_sgd and diloco step each rank's optimizer on its own batch, at the lr given
    periodic = mode in ("local_sgd", "diloco")
    assert ("lr 0.001 (inner, each rank's batch" if periodic else "lr 0.004") in runs[0].output, runs[0].output
    for run, was in zip(runs[1:], (4, 2)):
        dropped = [line for line in run.output.splitlines() if "the checkpoint holds the own state" in line]
        assert len(dropped) == (mode != "every_step"), run.output
        assert not dropped or f"of {was} rank(s)" in dropped[0]
        assert "sync state is" not in run.output  # the same strategy: its shared state is kept
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl", "train")]
    assert steps == list(range(1, 10))
    saved = checkpoint.load(checkpoint.path_in(out))
    assert saved["step"] == 9 and saved["world_size"] == 4
    if mode == "powersgd":  # Q and the step count went on through both changes
        assert saved["sync"]["state"]["steps"] == 9
    if mode == "diloco":
        assert "anchor" in saved["sync"]["state"] and saved["sync"]["state"]["outer"]["state"]
    assert max(sizes) <= 1.1 * min(sizes), sizes  # nothing per rank in the main file
    if mode != "every_step":
        assert sorted(f["name"] for f in saved["rank_files"]["files"]) == [
            f"ranks/step00000009-rank{r:05d}-of00004.pt" for r in range(4)]


def test_a_resume_under_another_strategy_starts_every_rank_from_one_model(corpus, tmp_path):
    """local_sgd stopped between syncs, resumed under diloco: one line says so, and the ranks hold
    one model after diloco's first sync (each rank's own parameters as its anchor would never
    meet again). Then --outer_lr given on a resume wins over the checkpoint's, said in one line."""
    out = tmp_path / "run"
    common = flags(corpus, out, *G12, "--sync_every", "3", "--max_steps", "9", "--dropout", "0.1")
    check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--sync", "local_sgd", "--stop_after", "4"], np=3))
    digests = tmp_path / "digests.json"
    run = check(launch("horovodrun-gloo", [sys.executable, SYNC_PROBE, "digests", str(digests), "--", *common,
                                           "--sync", "diloco", "--stop_after", "3"], np=3))
    assert sum("the checkpoint's sync state is local_sgd's, this run syncs by diloco" in line
               for line in run.output.splitlines()) == 1, run.output
    ranks = json.loads(digests.read_text())
    at_sync = [[s["sha256"] for s in r["steps"] if s["step"] == 6] for r in ranks]
    assert len(at_sync[0]) == 1 and at_sync[0] == at_sync[1] == at_sync[2]

    again = check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--sync", "diloco", "--outer_lr", "1.2"], np=3))
    assert "outer lr 1.2 and momentum 0.9 (this run's) replace the checkpoint's lr 0.7" in again.output
    assert "DiLoCo, outer Nesterov SGD (lr 1.2, momentum 0.9)" in again.output
    saved = checkpoint.load(checkpoint.path_in(out))
    assert saved["sync"]["state"]["outer"]["param_groups"][0]["lr"] == 1.2


def test_a_nan_on_one_rank_ends_the_job_naming_it_before_it_reaches_the_anchor(corpus, tmp_path):
    out = tmp_path / "run"
    common = flags(corpus, out, "--sync", "diloco", "--sync_every", "3", "--checkpoint_interval", "2", *G12)
    run = launch("horovodrun-gloo", [sys.executable, SYNC_PROBE, "nan", "3", "--", *common], np=3)
    assert run.returncode != 0
    ours = rank_output(run)  # horovodrun adds a traceback of its own when a rank exits non-zero
    errors = [line for line in ours.splitlines() if "hvdlm: error:" in line]
    assert len(errors) == 1 and "rank 1's pseudo-gradient holds nan or inf" in errors[0], run.output
    assert "Traceback" not in ours, run.output
    saved = checkpoint.load(checkpoint.path_in(out))  # the last checkpoint is the one before, and finite
    assert saved["step"] == 2
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_checkpoint_size_and_a_ranks_peak_memory_while_saving_do_not_grow_with_the_rank_count(corpus, tmp_path):
    """diloco on the `tiny` preset (0.8M parameters, 10 MB of parameters and moments a rank), each save
    written while training waits (a background save holds its copy from the first step on):
    gathered to rank 0, 4 ranks would add twice 2 ranks' bytes to the main file and to rank 0's peak."""
    result = {}
    for np in (2, 4):
        out, peaks = tmp_path / f"n{np}", tmp_path / f"peaks{np}"
        common = ["--data_dir", str(corpus), "--out_dir", str(out), "--preset", "tiny", "--block_size", "32",
                  "--global_batch_size", "4", "--batch_size", "2", "--max_steps", "2", "--eval_interval", "0",
                  "--eval_sequences", "4", "--progress", "false", "--sample_tokens", "0", "--sync", "diloco",
                  "--sync_every", "2", "--checkpoint_interval", "1", "--background_save", "false"]
        check(launch("horovodrun-gloo", [sys.executable, SYNC_PROBE, "checkpoint_memory", str(peaks), "--", *common],
                     np=np))
        mb = [max(json.loads((tmp_path / f"peaks{np}.{r}").read_text())) for r in range(np)]
        result[np] = {"main": checkpoint.path_in(out).stat().st_size, "peak_mb": max(mb)}
    assert result[4]["main"] <= 1.1 * result[2]["main"], result
    assert result[4]["peak_mb"] <= 1.25 * result[2]["peak_mb"] + 4, result
    assert result[2]["peak_mb"] > 5, result  # the probe sees a save's memory at all (rank 0 writes ~14 MB)


def test_powersgd_state_is_matched_by_parameter_name_and_shape():
    """Another --powersgd_rank drops Q (another shape) and keeps the residuals; another
    --powersgd_min_compression compresses fewer tensors: each keeps its own residual, never another
    layer's; a checkpoint of an older hvdlm (lists by position) loads where the shapes agree."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8), torch.nn.Linear(8, 4))

    def build(rank, min_compression):
        ps = PowerSGD(rank=rank, start=0, min_compression=min_compression, seed=1)
        ps.wrap(torch.optim.SGD(net.parameters(), lr=0.1), net)
        return ps

    first = build(2, 0)
    assert first.names == ["0.weight", "1.weight", "2.weight"]
    first.errors = [torch.randn_like(first.params[i]) for i in first.compressed]
    shared, own = first.state_dict(), first.rank_state()

    other_rank = build(3, 0)
    notes = other_rank.load_state_dict(shared)
    assert notes == ["hvdlm: PowerSGD's Q kept for 0 of 3 compressed tensor(s) (matched by name and shape; the "
                     "checkpoint had 3); the others drawn afresh from --seed"]
    assert other_rank.load_rank_state(own) == []
    assert all(torch.equal(a, b) for a, b in zip(other_rank.errors, first.errors))

    fewer = build(2, 1.5)  # 8 x 4 is no longer worth compressing at rank 2: (8 + 4) x 2 x 1.5 > 32
    assert fewer.names == ["0.weight", "1.weight"]
    assert fewer.load_state_dict(shared)[0].startswith("hvdlm: PowerSGD's Q kept for 2 of 2")
    assert fewer.load_rank_state(own)[0].startswith("hvdlm: PowerSGD's residual kept for 2 of 2")
    assert torch.equal(fewer.errors[0], first.errors[0]) and torch.equal(fewer.errors[1], first.errors[1])

    old = build(2, 0)
    assert old.load_rank_state({"errors": list(own["errors"].values())}) == []
    assert torch.equal(old.errors[2], first.errors[2])


def test_an_older_checkpoint_loads_and_a_torn_set_is_skipped(tmp_path):
    """A checkpoint of an older hvdlm (train state at the top, per-rank states gathered in
    ``sync_ranks``) reads in today's layout; a checkpoint whose rank file is missing is skipped
    for the newest complete one, with its reason."""
    old = {"step": 4, "sampler": None, "global_batch": 8, "lr": {"peak": 1e-3, "min": 1e-4}, "evaluated": True,
           "last_step": 4, "model": {"w": torch.ones(2)}, "optimizer": {}, "sync": {"steps": 4},
           "sync_ranks": [{"errors": None}, {"errors": None}],
           "config": {"distributed": {"sync": "every_step", "compression": "powersgd"}}}
    new = checkpoint.upgrade(old)
    assert new["train"]["global_batch"] == 8 and new["step"] == 4
    assert new["sync"] == {"strategy": "powersgd", "state": {"steps": 4}}
    assert new["rank_states"] == [{"errors": None}, {"errors": None}]

    entries = [checkpoint.write_rank_file(tmp_path, step, 0, 1, {"state": step}) for step in (2, 4)]
    for step, entry in zip((2, 4), entries):
        checkpoint.save({"step": step, "rank_files": {"files": [entry]}}, tmp_path, keep=3)
    assert checkpoint.read_rank_file(tmp_path, entries[1]) == {"state": 4}
    (tmp_path / entries[1]["name"]).unlink()
    found = checkpoint.newest_valid(tmp_path)
    assert found.state["step"] == 2
    assert "step00000004-rank00000-of00001.pt is missing (a torn set)" in found.note()
    # rank files that rank 0 never sees (each rank's on its own node's disk): one line that says where they must be
    (tmp_path / entries[0]["name"]).unlink()
    with pytest.raises(HvdlmError, match="a torn set.*out_dir must be on a filesystem every rank sees; move them away"):
        checkpoint.newest_valid(tmp_path)
