import pytest
import torch

from hvdlm import checkpoint
from hvdlm.errors import HvdlmError
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


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 1.0, 0.1, 10, 100) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:100]))
    assert lrs[99] == pytest.approx(0.1, abs=1e-3) and lrs[110] == 0.1
