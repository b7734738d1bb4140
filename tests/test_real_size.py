"""Checkpoint and resume above toy size: the `small` preset (25M parameters on byte data; a 290 MB
every-step checkpoint, 480 MB under DiLoCo with its rank files) stopped and resumed on 2 real ranks
with the watchdog on. Its state crosses from rank 0 as tensors, and the save is written behind
training: a resume that pickled the state starved the watchdog's heartbeat (issue 29). A short
block and a batch of 1 keep a step to a fraction of a second; the state is full size."""

from __future__ import annotations

import pytest

from support.launch import HVDLM, check, launch
from support.runs import losses, saved

SMALL = ["--preset", "small", "--block_size", "32", "--batch_size", "1", "--eval_sequences", "2",
         "--sample_tokens", "0", "--progress", "false", "--tensorboard", "false", "--log_interval", "1",
         "--eval_interval", "0", "--max_steps", "4", "--dropout", "0.1", "--watchdog", "true"]


@pytest.mark.parametrize("mode", [
    [],
    # a sync after the resume, rank files; an embedding padded past the vocabulary (256 -> 384 rows,
    # as GPT-2's 50,257 -> 50,304) in every piece of state: model, moments, anchor, rank files
    ["--sync", "diloco", "--sync_every", "3", "--compression", "int8", "--vocab_multiple", "384"],
], ids=["every_step", "diloco_int8_padded"])
def test_small_stopped_and_resumed_on_2_ranks_equals_an_unbroken_run(corpus, tmp_path, mode):
    common = ["--data_dir", str(corpus), *SMALL, *mode]
    whole, split = tmp_path / "whole", tmp_path / "split"
    check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(whole)]))
    check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(split), "--stop_after", "2"]))
    state = saved(split)
    assert state["step"] == 2
    assert sum(t.numel() for t in state["model"].values()) > 20e6  # real size, not a toy
    assert (state["rank_files"] is not None) == bool(mode)
    assert state["model"]["tok_emb.weight"].shape[0] == (384 if mode else 256)

    resumed = check(launch("horovodrun-gloo", [HVDLM, "train", *common, "--out_dir", str(split)]))
    assert "resuming at step 2" in resumed.output
    assert "heartbeat" not in resumed.output, resumed.output
    expected, got = losses(whole), losses(split)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):  # the same state on both ranks after the resume: the same losses as never stopping
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
