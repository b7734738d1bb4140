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
