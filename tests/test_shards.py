"""Token shards: a split in several files reads as one stream; old single-file data dirs still read."""
import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from hvdlm.data import load_meta, open_tokens, prepare, verify_checksums
from hvdlm.data.sampler import get_batch, num_sequences
from hvdlm.data import shards
from hvdlm.data.shards import TokenStream
from hvdlm.errors import HvdlmError

from support.launch import HVDLM, TINY, check, launch


@pytest.fixture(scope="module")
def one_and_many(tmp_path_factory):
    """The same corpus prepared into one shard per split and into shards of 20,000 bytes."""
    root = tmp_path_factory.mktemp("shards")
    src = root / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.txt").write_text(f"document {i}: " + "some words of text, é\n" * (50 + 37 * i))
    kw = dict(workers=2, val_fraction=0.2, seed=3)
    one = prepare([src], root / "one", **kw)
    many = prepare([src], root / "many", shard_bytes=20_000, **kw)
    return root, one, many


def test_many_shards_hold_the_same_tokens(one_and_many):
    root, one, many = one_and_many
    assert len(many["shards"]["train"]) > 3 and len(many["shards"]["val"]) >= 1
    assert [e["file"] for e in many["shards"]["train"][:2]] == ["train-00000.bin", "train-00001.bin"]
    assert all(e["tokens"] == 10_000 for e in many["shards"]["train"][:-1])  # 20,000 bytes of uint16
    assert (one["train_tokens"], one["val_tokens"]) == (many["train_tokens"], many["val_tokens"])
    verify_checksums(root / "many")
    for split in ("train", "val"):
        flat = np.asarray(open_tokens(root / "one", split))
        stream = open_tokens(root / "many", split)
        assert len(stream) == len(flat)
        assert np.array_equal(stream[:], flat)
        assert np.array_equal(stream[9_990:20_010], flat[9_990:20_010])  # across two shard boundaries
        assert stream[10_000] == flat[10_000] and stream[-1] == flat[-1]


def test_shards_go_to_the_disk_in_ranges_while_written(tmp_path, monkeypatch):
    """Each WRITEBACK_BYTES of a shard is sent to the disk as it is written, and the range before
    it waited for: contiguous ranges per shard, the waits one range behind; the shards hold
    what was written, with its sha256."""
    monkeypatch.setattr(shards, "WRITEBACK_BYTES", 3000)
    ids = np.arange(25_000, dtype=np.uint16)
    w = shards.ShardWriter(tmp_path, "train", np.dtype("<u2"), shard_tokens=10_000)
    for part in np.array_split(ids, 37):  # the real sync_file_range, on a real file
        w.write(part)
    entries = w.finish()
    assert [e["tokens"] for e in entries] == [10_000, 10_000, 5_000]
    assert np.array_equal(np.concatenate([np.fromfile(tmp_path / e["file"], np.uint16) for e in entries]), ids)
    assert [e["sha256"] for e in entries] == [hashlib.sha256(ids[i:i + 10_000].tobytes()).hexdigest()
                                              for i in (0, 10_000, 20_000)]
    calls = []
    monkeypatch.setattr(shards, "sync_range", lambda fd, offset, n, wait: calls.append((offset, n, wait)))
    w = shards.ShardWriter(tmp_path, "val", np.dtype("<u2"), shard_tokens=10_000)
    for part in np.array_split(ids[:12_000], 37):  # 20,000 bytes in the first shard, 4,000 in the second
        w.write(part)
    w.finish()
    per_shard = []  # [(sent range, range waited for then)]
    for (offset, n, wait), (w_offset, w_n, w_wait) in zip(calls[::2], calls[1::2]):
        assert not wait and w_wait
        if offset == 0:
            per_shard.append([])
        per_shard[-1].append(((offset, n), (w_offset, w_n)))
    assert len(per_shard) == 2
    for ranges in per_shard:
        sent = [r for r, _ in ranges]
        assert all(n >= 3000 for _, n in sent)
        assert all(a + n == b for (a, n), (b, _) in zip(sent, sent[1:]))  # contiguous
        assert [w for _, w in ranges] == [(0, 0)] + sent[:-1]  # each send waits for the range before
    assert 20_000 - 3000 - 700 < sum(n for (_, n), _ in per_shard[0]) <= 20_000


def test_token_stream_indexing_matches_an_array():
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 256, 1000).astype(np.uint16)
    stream = TokenStream([flat[:300], flat[300:301], flat[301:]])
    assert len(stream) == 1000 and stream.dtype == np.uint16
    for key in (slice(None), slice(250, 350), slice(299, 302), slice(-5, None), slice(10, 900, 7), slice(500, 400)):
        assert np.array_equal(stream[key], flat[key]), key
    rows = rng.integers(0, 1000, (4, 33))
    assert np.array_equal(stream[rows], flat[rows])
    assert stream[300] == flat[300] and stream[-1] == flat[-1]
    with pytest.raises(IndexError):
        stream[1000]
    with pytest.raises(IndexError):
        stream[np.array([0, 1000])]
    # the sampler's batches are the same from a stream as from the array
    idx = np.array([0, 5, num_sequences(1000, 32) - 1])
    for a, b in zip(get_batch(stream, idx, 32, torch.device("cpu")), get_batch(flat, idx, 32, torch.device("cpu"))):
        assert torch.equal(a, b)


def test_damaged_or_missing_shard(one_and_many, tmp_path):
    root, _, many = one_and_many
    data = tmp_path / "many"
    shutil.copytree(root / "many", data)
    second = data / many["shards"]["train"][1]["file"]
    raw = bytearray(second.read_bytes())
    raw[100] ^= 1
    second.write_bytes(bytes(raw))
    load_meta(data)  # same size: only the checksum tells
    with pytest.raises(HvdlmError, match="train-00001.bin does not match its sha256"):
        verify_checksums(data)
    second.write_bytes(bytes(raw[:-2]))
    with pytest.raises(HvdlmError, match="train-00001.bin is truncated or corrupt"):
        load_meta(data)
    second.unlink()
    with pytest.raises(HvdlmError, match="train-00001.bin is missing"):
        open_tokens(data, "train")


def test_format_1_data_dir_still_reads(one_and_many, tmp_path):
    """A data dir written before shards were listed: train.bin, val.bin, sha256 by file name."""
    root, one, _ = one_and_many
    old = tmp_path / "old"
    old.mkdir()
    for split in ("train", "val"):
        shutil.copy(root / "one" / f"{split}.bin", old / f"{split}.bin")
    meta = {"format": 1, "tokenizer": one["tokenizer"], "vocab_size": 256, "dtype": "uint16",
            "train_tokens": one["train_tokens"], "val_tokens": one["val_tokens"],
            "sha256": {f"{s}.bin": one["shards"][s][0]["sha256"] for s in ("train", "val")},
            "sources": {"files": 30, "bytes": 1}, "seed": 3}
    (old / "meta.json").write_text(json.dumps(meta))
    assert load_meta(old) == meta
    verify_checksums(old)
    assert np.array_equal(open_tokens(old, "val"), open_tokens(root / "one", "val"))
    (old / "val.bin").write_bytes(b"\0\0" + (old / "val.bin").read_bytes()[2:])
    with pytest.raises(HvdlmError, match="val.bin does not match"):
        verify_checksums(old)


def test_a_run_trains_on_multi_shard_data(one_and_many, tmp_path):
    root, _, many = one_and_many
    out = tmp_path / "run"
    run = check(launch("single", [HVDLM, "train", "--data_dir", str(root / "many"), "--out_dir", str(out), *TINY,
                                  "--max_steps", "6", "--eval_interval", "3", "--log_interval", "1"]))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in m for m in metrics), run.output
    assert (out / "checkpoint.pt").is_file()


def test_the_bare_baseline_reads_a_sharded_corpus_through_trainings_reader(one_and_many, tmp_path):
    """``hvdlm bench train``'s bare loop on data in many shards (there is no train.bin): the same
    loss at its first step as on the one-file copy of the corpus (the same draws of sequences)."""
    root, _, _ = one_and_many
    first = {}
    for name in ("one", "many"):
        out = tmp_path / name
        check(launch("single", [sys.executable, "-m", "hvdlm.bench.bare", "--data_dir",
                                str(root / name), "--out_dir", str(out), *TINY, "--max_steps", "2",
                                "--log_interval", "1"]))
        first[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert not (root / "many" / "train.bin").exists()
    assert first["many"] == first["one"]
