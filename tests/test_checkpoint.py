import pytest
import torch

from support.launch import HVDLM, TINY, check, launch
from support.runs import saved
from support.text import words
from hvdlm import checkpoint
from hvdlm.config import load_config, saved_vocab_multiple, save_toml
from hvdlm.data import prepare
from hvdlm.errors import HvdlmError
from hvdlm.inputs import keep_vocab_padding
from hvdlm.optim import lr_at

SHAPE = dict(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)


def test_save_then_load_with_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "step": 3, "model_shape": SHAPE, "config": {"a": "b"}}
    path = checkpoint.save(state, tmp_path)
    assert path == tmp_path / "checkpoint.pt"
    back = checkpoint.load(path)
    assert back["step"] == 3 and torch.equal(back["model"]["w"], torch.arange(4.0))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    checkpoint.save({"step": 1}, tmp_path)

    def dies_halfway(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(HvdlmError, match="disk full: .* the previous checkpoint .* is intact"):  # one line (test_disk_full.py)
        checkpoint.save({"step": 2}, tmp_path)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HvdlmError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "checkpoint.pt")


def test_a_skipped_checkpoint_gets_a_short_reason_not_torch_text(tmp_path):
    """Each unreadable file in a resume's note is a few words, not torch.load's paragraph."""
    checkpoint.save({"step": 1}, tmp_path, keep=5)
    whole = checkpoint.step_path(tmp_path, 1).read_bytes()
    damaged = {2: b"garbage" * 100, 3: whole[: len(whole) // 2], 4: b""}
    for step, data in damaged.items():
        checkpoint.step_path(tmp_path, step).write_bytes(data)
    torch.save({"payload": Payload()}, checkpoint.step_path(tmp_path, 5))
    found = checkpoint.newest_valid(tmp_path)
    assert found.state["step"] == 1
    reasons = dict((p.name, why) for p, why in found.skipped)
    assert reasons == {"checkpoint-step00000005.pt": f"holds a Python object ({__name__}.Payload) that a checkpoint "
                                                     "does not: not loaded",
                       "checkpoint-step00000004.pt": "empty or cut short",
                       "checkpoint-step00000003.pt": "cut short or not written by torch.save",
                       "checkpoint-step00000002.pt": "not a checkpoint (cannot be unpickled)"}, reasons
    assert len(found.note()) < 400, found.note()


class Payload:  # any class: weights_only refuses to run code from a checkpoint
    pass


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    torch.save({"payload": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(HvdlmError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "checkpoint.pt")


def test_other_model_shape_is_refused():
    with pytest.raises(HvdlmError, match=r"different model: n_layer=2 \(this run: 3\)"):
        checkpoint.check_shape({"model_shape": SHAPE}, dict(SHAPE, n_layer=3), "x.pt")
    checkpoint.check_shape({"model_shape": SHAPE}, dict(SHAPE, dropout=0.2), "x.pt")  # dropout may change
    # a checkpoint from before the padding (no vocab_multiple) is an unpadded model's
    checkpoint.check_shape({"model_shape": SHAPE}, dict(SHAPE, vocab_multiple=1), "x.pt")
    with pytest.raises(HvdlmError, match=r"vocab_multiple=1 \(this run: 64\).*--vocab_multiple 1 to resume it"):
        checkpoint.check_shape({"model_shape": SHAPE}, dict(SHAPE, vocab_multiple=64), "x.pt")


@pytest.mark.parametrize("toml, resume, has_checkpoint, want", [
    (None, True, False, 64),  # a new run: the option
    ("vocab_multiple = 8", True, True, 8),  # a resumed run keeps its own
    ("", True, True, 1),  # a run from before the option: unpadded
    ("", False, True, 64),  # --resume false starts over: the option
    ("", True, False, 64),  # nothing to resume (a run stopped before its first save)
])
def test_a_resumed_run_keeps_the_vocabulary_padding_its_config_toml_records(tmp_path, toml, resume,
                                                                             has_checkpoint, want):
    if toml is not None:
        (tmp_path / "config.toml").write_text(f"[model]\n{toml}\n[train]\nout_dir = 'x'\n")
    if has_checkpoint:
        (tmp_path / "checkpoint.pt").write_bytes(b"")  # listed is enough: rank 0 reads it later
    cfg = load_config(overrides={"out_dir": str(tmp_path), "resume": resume})
    keep_vocab_padding(cfg)
    assert cfg.model.vocab_multiple == want
    save_toml(cfg, tmp_path / "config.toml")  # the effective config records it for the next resume
    assert saved_vocab_multiple(tmp_path) == want


def test_a_run_from_before_the_padding_resumes_with_its_own_embedding(tmp_path):
    """A run whose config.toml predates --vocab_multiple (its checkpoint holds a (vocab, n_embd)
    embedding and moments) resumes unpadded under today's default 64, and its config.toml says so."""
    (tmp_path / "a.txt").write_text(words(20000, seed=3))
    meta = prepare([tmp_path / "a.txt"], tmp_path / "data", tokenizer="char", val_fraction=0.1, workers=1)
    assert meta["vocab_size"] % 64
    out = tmp_path / "run"
    command = [HVDLM, "train", "--data_dir", str(tmp_path / "data"), "--out_dir", str(out), *TINY, "--max_steps", "4"]
    check(launch("single", [*command, "--vocab_multiple", "1", "--stop_after", "2"]))
    toml = out / "config.toml"
    toml.write_text("".join(line for line in toml.read_text().splitlines(keepends=True)
                            if not line.startswith("vocab_multiple")))  # as hvdlm wrote it before the option
    run = check(launch("single", command))
    assert "resuming at step 2" in run.output and "padded" not in run.output, run.output
    state = saved(out)
    assert state["step"] == 4 and state["model"]["tok_emb.weight"].shape[0] == meta["vocab_size"]
    assert saved_vocab_multiple(out) == 1


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 1.0, 0.1, 10, 100) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:100]))
    assert lrs[99] == pytest.approx(0.1, abs=1e-3) and lrs[110] == 0.1


# --- a save behind training: the snapshot and the writer thread -----------------------------------

def test_a_snapshot_is_a_copy_that_later_saves_refill_in_place():
    from hvdlm.checkpoint.snapshot import snapshot

    model = torch.nn.Linear(4, 4)
    state = {"model": model.state_dict(), "tied": [model.weight], "step": 3, "nested": ({"x": torch.ones(2)},)}
    first = snapshot(state)
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on after the snapshot
    assert not torch.equal(first["model"]["weight"], model.weight)
    assert first["tied"][0] is first["model"]["weight"]  # a tied weight (another tensor object, the same memory) is copied once
    assert first["model"]._metadata == state["model"]._metadata
    buffer = first["model"]["weight"]
    second = snapshot(state, first)
    assert second["model"]["weight"] is buffer and torch.equal(buffer, model.weight)  # the same host buffer, refilled
    assert second["tied"][0] is buffer and second["nested"][0]["x"] is first["nested"][0]["x"]


class _Train:
    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}


class _Sync:
    kind = "every_step"

    def state_dict(self):
        return {}

    def rank_state(self):
        return None


def _checkpointer(tmp_path, model, background=True):
    from types import SimpleNamespace

    train = _Train()
    ck = checkpoint.Checkpointer(str(tmp_path), 1, 3, {"model": model, "train": train}, _Sync(), {"model_shape": SHAPE},
                                 background=background)
    return ck, train, SimpleNamespace(rank=0, size=1, is_root=True)


def test_a_background_save_returns_before_the_write_and_writes_the_state_of_its_step(tmp_path, monkeypatch):
    import threading

    from hvdlm.checkpoint import checkpointer as module

    monkeypatch.setattr("hvdlm.distributed.collectives.alone", lambda: True)
    release, real_save = threading.Event(), module.save
    monkeypatch.setattr(module, "save", lambda *a, **k: release.wait(60) and real_save(*a, **k))
    model = torch.nn.Linear(4, 4)
    ck, train, world = _checkpointer(tmp_path, model)
    train.step = 1
    want = model.weight.detach().clone()
    ck.save(world)  # returns while the write waits
    assert not checkpoint.path_in(tmp_path).exists()
    with torch.no_grad():
        model.weight.mul_(0)  # the next steps change the model while the write is in flight
    release.set()
    ck.wait(world)
    saved = checkpoint.load(checkpoint.path_in(tmp_path))
    assert saved["step"] == 1 and torch.equal(saved["model"]["weight"], want)


@pytest.mark.parametrize("background", [True, False])
def test_a_failed_write_is_one_error_at_the_wait_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, background):
    from hvdlm.checkpoint import checkpointer as module

    monkeypatch.setattr("hvdlm.distributed.collectives.alone", lambda: True)
    model = torch.nn.Linear(4, 4)
    ck, train, world = _checkpointer(tmp_path, model, background)
    train.step = 1
    ck.save(world)
    ck.wait(world)

    def full(*a, **k):
        raise HvdlmError("disk full: cannot write the checkpoint of step 2")
    monkeypatch.setattr(module, "save", full)
    train.step = 2
    if background:
        ck.save(world)  # the write fails on its thread: training goes on until the next save or the end
        with pytest.raises(HvdlmError, match="disk full"):
            ck.wait(world)
    else:
        with pytest.raises(HvdlmError, match="disk full"):
            ck.save(world)
    assert checkpoint.newest_valid(tmp_path).state["step"] == 1
