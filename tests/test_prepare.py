import hashlib
import importlib
import json
import os
import random
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hvdlm.data import (
    collect_text_files,
    default_corpus_files,
    load_meta,
    load_tokenizer,
    open_tokens,
    prepare,
    verify_checksums,
)
from hvdlm.atomic import write_atomic
from hvdlm.errors import HvdlmError
from support.split import in_val

# the module, not the function: hvdlm.data re-exports prepare(), which shadows the submodule attribute
prep = importlib.import_module("hvdlm.data.prepare")
documents = importlib.import_module("hvdlm.data.documents")


def make_corpus(root: Path, n_files: int = 8, seed: int = 0) -> list[Path]:
    """Files with distinct, varied text (some non-ASCII) in a nested layout."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "délta", "ε", "zeta", "eta", "θeta", "iota", "kappa", "\n", "  "]
    paths = []
    for i in range(n_files):
        p = root / f"d{i % 3}" / f"f{i:02d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"file {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(50, 400))))
        paths.append(p)
    return paths


def read_tokens(out: Path) -> np.ndarray:
    return np.concatenate([open_tokens(out, "train"), open_tokens(out, "val")])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def split_docs(docs: list[str], seed: int, val_fraction: float) -> dict[str, list[str]]:
    """Which documents (one per small file, in input order) go to train and val."""
    val = in_val(len(docs), seed, val_fraction)
    return {"train": [d for d, v in zip(docs, val) if not v], "val": [d for d, v in zip(docs, val) if v]}


def test_byte_shards_are_the_documents_split_by_seed(tmp_path):
    files = make_corpus(tmp_path / "src", n_files=40)
    meta = prepare([tmp_path / "src"], tmp_path / "out", workers=1, seed=7, val_fraction=0.2)
    out = tmp_path / "out"
    docs = [p.read_text() + "\n\n" for p in sorted(files)]
    want = split_docs(docs, 7, 0.2)
    assert 0 < len(want["val"]) < len(docs)

    assert meta == load_meta(out) == json.loads((out / "meta.json").read_text())
    assert meta["format"] == 2 and meta["dtype"] == "uint16" and meta["vocab_size"] == 256 and meta["seed"] == 7
    assert meta["tokenizer"] == {"kind": "byte", "vocab_size": 256}
    assert meta["sources"] == {"files": 40, "bytes": sum(p.stat().st_size for p in files), "documents": 40}
    for split in ("train", "val"):
        text = "".join(want[split])
        assert meta[f"{split}_tokens"] == len(text.encode())
        assert meta["shards"][split] == [{"file": f"{split}.bin", "tokens": meta[f"{split}_tokens"],
                                          "sha256": hashlib.sha256((out / f"{split}.bin").read_bytes()).hexdigest()}]
        assert load_tokenizer(out).decode(open_tokens(out, split)) == text
    assert (out / "train.bin").stat().st_size == 2 * meta["train_tokens"]
    train = open_tokens(out, "train")
    assert train.dtype == np.uint16 and len(train) == meta["train_tokens"]
    with pytest.raises(ValueError):
        train[0] = 1  # read-only
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temp files left


def test_token_dtype_boundary():
    assert prep.token_dtype(256) == "uint16"
    assert prep.token_dtype(65536) == "uint16"  # ids 0..65535 fit
    assert prep.token_dtype(65537) == "uint32"


def test_char_vocab_over_65536_uses_uint32(tmp_path):
    # 65,600 distinct characters (no surrogates): a real char vocabulary too big for uint16
    chars = [chr(c) for c in range(0x100, 0x100 + 65600 + 2048) if not 0xD800 <= c <= 0xDFFF][:65600]
    text = "".join(chars) + "".join(reversed(chars))
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    meta = prepare([tmp_path / "wide.txt"], tmp_path / "out", tokenizer="char", workers=1)
    assert meta["vocab_size"] == 65601 and meta["dtype"] == "uint32"  # and the "\n" ending each document
    ids = read_tokens(tmp_path / "out")
    assert ids.dtype == np.uint32 and ids.max() == 65600
    assert (tmp_path / "out" / "val.bin").stat().st_size == 4 * meta["val_tokens"]
    assert load_tokenizer(tmp_path / "out").decode(ids) == text + "\n\n"


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_deterministic(tmp_path, kind):
    make_corpus(tmp_path / "src", n_files=30)
    kw = dict(tokenizer=kind, vocab_size=300, workers=1, val_fraction=0.3)
    a = prepare([tmp_path / "src"], tmp_path / "a", **kw)
    b = prepare([tmp_path / "src"], tmp_path / "b", **kw)
    assert a == b
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")  # tokenizer.json too
    # the seed drives the split
    c = prepare([tmp_path / "src"], tmp_path / "c", seed=a["seed"] + 1, **kw)
    assert c["shards"] != a["shards"]


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_workers_1_and_4_identical(tmp_path, monkeypatch, kind):
    make_corpus(tmp_path / "src", n_files=24)
    (tmp_path / "src" / "big.txt").write_text("a line of the big file, é\n" * 3000)  # several blocks
    monkeypatch.setattr(prep, "BLOCK_BYTES", 2000)  # many tasks, so the pool really splits the work
    started = []
    real = prep._Workers.__init__
    monkeypatch.setattr(prep._Workers, "__init__", lambda self, n, job: started.append(n) or real(self, n, job))
    kw = dict(tokenizer=kind, vocab_size=300, val_fraction=0.25)
    one = prepare([tmp_path / "src"], tmp_path / "one", workers=1, **kw)
    assert set(started) == {1}
    four = prepare([tmp_path / "src"], tmp_path / "four", workers=4, **kw)
    assert set(started) == {1, 4}
    assert one == four and one["val_tokens"] > 0
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "four")
    files = collect_text_files([tmp_path / "src"])
    text = "".join(load_tokenizer(tmp_path / "four").decode(open_tokens(tmp_path / "four", s)) for s in ("train", "val"))
    assert sorted(text) == sorted("".join(p.read_text() + "\n\n" for p in files))  # every character, once


def test_checksums(tmp_path):
    make_corpus(tmp_path / "src")
    out = tmp_path / "out"
    meta = prepare([tmp_path / "src"], out, workers=1)
    for split in ("train", "val"):
        assert meta["shards"][split][0]["sha256"] == hashlib.sha256((out / f"{split}.bin").read_bytes()).hexdigest()
    verify_checksums(out)
    data = bytearray((out / "val.bin").read_bytes())
    data[3] ^= 0x01
    (out / "val.bin").write_bytes(bytes(data))
    load_meta(out)  # same size, so only the checksum can tell
    with pytest.raises(HvdlmError, match="val.bin does not match"):
        verify_checksums(out)


def test_load_meta_errors(tmp_path):
    with pytest.raises(HvdlmError, match="does not exist"):
        load_meta(tmp_path / "nope")
    with pytest.raises(HvdlmError, match="no meta.json.*hvdlm prepare"):
        load_meta(tmp_path)
    make_corpus(tmp_path / "src")
    out = tmp_path / "out"
    prepare([tmp_path / "src"], out, workers=1)
    good = (out / "train.bin").read_bytes()

    (out / "train.bin").write_bytes(good[:-2])
    with pytest.raises(HvdlmError, match="train.bin is truncated or corrupt"):
        load_meta(out)
    (out / "train.bin").write_bytes(good + b"\0\0")
    with pytest.raises(HvdlmError, match="train.bin is truncated or corrupt"):
        load_meta(out)
    (out / "train.bin").write_bytes(good)
    load_meta(out)

    (out / "val.bin").unlink()
    with pytest.raises(HvdlmError, match="val.bin is missing"):
        load_meta(out)
    with pytest.raises(HvdlmError, match="val.bin is missing"):
        open_tokens(out, "train")

    (out / "meta.json").write_text('{"format": 1, ')
    with pytest.raises(HvdlmError, match="not valid JSON"):
        load_meta(out)


def test_open_tokens_bad_split(tmp_path):
    make_corpus(tmp_path / "src", n_files=2)
    prepare([tmp_path / "src"], tmp_path / "out", workers=1)
    with pytest.raises(HvdlmError, match="unknown split 'test'"):
        open_tokens(tmp_path / "out", "test")


def test_crash_while_writing_leaves_no_meta(tmp_path, monkeypatch):
    make_corpus(tmp_path / "src", n_files=30)
    out = tmp_path / "out"
    prepare([tmp_path / "src"], out, workers=1, val_fraction=0.3)
    real_write = prep.ShardWriter.write

    def failing_write(self, tokens):
        if self.split == "val" and len(tokens):
            raise KeyboardInterrupt  # killed mid-run
        real_write(self, tokens)

    monkeypatch.setattr(prep.ShardWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare([tmp_path / "src"], out, workers=1, seed=99, val_fraction=0.3)
    # no meta.json vouches for anything, and no half-written shard is left
    with pytest.raises(HvdlmError, match="no meta.json"):
        load_meta(out)
    assert list(out.iterdir()) == []


def test_a_failed_write_in_the_writer_thread_ends_the_run(tmp_path, monkeypatch):
    """A write that fails in the writer thread (a full disk) is raised by prepare, also while the
    main thread waits for room in a full queue, and no shard is left."""
    make_corpus(tmp_path / "src", n_files=30)
    monkeypatch.setattr(prep, "WRITER_PIECES", 1)
    monkeypatch.setattr(documents, "PIECE_CHARS", 50)  # many pieces per block

    real_write, calls = prep.ShardWriter.write, []

    def full_disk(self, tokens):
        calls.append(len(tokens))
        if len(calls) > 3:  # after some shard data is written
            raise OSError(28, "No space left on device")
        real_write(self, tokens)

    monkeypatch.setattr(prep.ShardWriter, "write", full_disk)
    interval = sys.getswitchinterval()
    with pytest.raises(OSError, match="No space left"):
        prepare([tmp_path / "src"], tmp_path / "out", workers=1)
    assert len(calls) == 4 and list((tmp_path / "out").iterdir()) == []
    assert sys.getswitchinterval() == interval  # the writer's shorter interval ends with it, even on an error


def test_the_writer_runs_with_a_short_switch_interval_and_restores_it(tmp_path, monkeypatch):
    make_corpus(tmp_path / "src", n_files=3)
    seen, real_write = [], prep.ShardWriter.write
    monkeypatch.setattr(prep.ShardWriter, "write", lambda self, t: seen.append(
        (threading.current_thread().name, sys.getswitchinterval())) or real_write(self, t))
    interval = sys.getswitchinterval()
    prepare([tmp_path / "src"], tmp_path / "out", workers=1)
    in_writer = [i for name, i in seen if name == "hvdlm-shard-writer"]
    assert in_writer and all(i == pytest.approx(prep.WRITER_SWITCH_INTERVAL) for i in in_writer)
    assert sys.getswitchinterval() == interval


def test_byte_tokens_with_two_workers_start_no_pool(tmp_path, monkeypatch):
    make_corpus(tmp_path / "src", n_files=5)
    started = []
    real = prep._Workers.__init__
    monkeypatch.setattr(prep._Workers, "__init__", lambda self, n, job: started.append(n) or real(self, n, job))
    prepare([tmp_path / "src"], tmp_path / "out", workers=2)
    assert started == [1]


def _timed(task):
    """A worker task that takes a while: (its input bytes, its worker, when it started and ended)."""
    start = time.monotonic()
    time.sleep(0.5 if len(task[3]) > 4096 else 0.2)
    return len(task[3]), os.getpid(), start, time.monotonic()


def test_a_task_larger_than_the_bytes_in_flight_runs_alone(monkeypatch):
    """A long document's task (a JSON line of many MB) is never in a worker beside another task:
    the peak memory does not grow with how many such documents a corpus has (two workers each
    holding one). Small tasks still keep both workers busy."""
    monkeypatch.setattr(prep, "TASK_BYTES_IN_FLIGHT", 1024)  # 4 KiB in flight for 2 workers
    sizes = [100] * 6 + [5000] + [100] * 6 + [5000, 5000] + [100] * 4
    tasks = [("f.jsonl", True, "text", b"x" * n, 1, i, False) for i, n in enumerate(sizes)]
    with prep._Workers(2, prep._Job(0, 0.0)) as w:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2:  # both workers started (a spawned worker takes a while to import)
            assert time.monotonic() < deadline, f"only worker(s) {pids} ran a task in 120 s: the other never started"
            pids |= {pid for _, pid, _, _ in w.map(_timed, tasks[:4])}
        done = list(w.map(_timed, tasks))
    assert [n for n, *_ in done] == sizes  # in order
    for n, _, start, end in done:
        if n == 5000:
            beside = [o for o in done if o[2] < end and start < o[3] and o[2:] != (start, end)]
            assert not beside, (start, end, done)
    assert {pid for _, pid, _, _ in done} == pids
    smalls = [(s, e) for n, _, s, e in done if n == 100]
    assert any(s2 < e1 for (_, e1), (s2, _) in zip(smalls, smalls[1:])), f"small tasks never overlapped: {done}"


def test_write_atomic_cleans_up_temp_file(tmp_path):
    class Boom(Exception):
        pass

    class BadArray(np.ndarray):
        def tofile(self, f):
            f.write(b"partial")
            raise Boom

    with pytest.raises(Boom):
        write_atomic(tmp_path / "x.bin", np.zeros(4, np.uint16).view(BadArray))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HvdlmError, match="cannot write"):
        write_atomic(tmp_path / "missing-dir" / "x.bin", b"data")
    write_atomic(tmp_path / "x.bin", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"] and (tmp_path / "x.bin").read_bytes() == b"data"


def test_bad_arguments(tmp_path):
    make_corpus(tmp_path / "src", n_files=2)
    for frac in (0, 1, -0.1, 1.5):
        with pytest.raises(HvdlmError, match="val_fraction"):
            prepare([tmp_path / "src"], tmp_path / "out", val_fraction=frac)
    with pytest.raises(HvdlmError, match="byte, char, bpe"):
        prepare([tmp_path / "src"], tmp_path / "out", tokenizer="sentencepiece")
    with pytest.raises(HvdlmError, match="workers"):
        prepare([tmp_path / "src"], tmp_path / "out", workers=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HvdlmError, match="cannot create output dir"):
        prepare([tmp_path / "src"], tmp_path / "file" / "out")


def test_missing_input(tmp_path):
    make_corpus(tmp_path / "src", n_files=2)
    with pytest.raises(HvdlmError, match="nope.txt does not exist"):
        prepare([tmp_path / "src", tmp_path / "nope.txt"], tmp_path / "out")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(HvdlmError, match="corpus is empty"):
        prepare([tmp_path / "empty.txt"], tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_tiny_corpus_split(tmp_path):
    # one document: validation takes the tail of the tokens (at least one), training the rest
    (tmp_path / "two.txt").write_text("ab")
    meta = prepare([tmp_path / "two.txt"], tmp_path / "out", workers=1)
    assert (meta["train_tokens"], meta["val_tokens"]) == (3, 1)  # "ab\n\n"
    assert load_tokenizer(tmp_path / "out").decode(open_tokens(tmp_path / "out", "val")) == "\n"


def test_binary_and_hidden_files_skipped(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "b.txt").write_text("text b")
    (src / "sub" / "a.txt").write_text("text a")
    (src / "blob.bin").write_bytes(b"\x89PNG\r\n" + b"\0" * 100)
    (src / ".hidden.txt").write_text("secret")
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("[core]")
    assert collect_text_files([src]) == [src / "b.txt", src / "sub" / "a.txt"]
    meta = prepare([src], tmp_path / "out", workers=1)
    assert meta["sources"] == {"files": 2, "bytes": 12, "documents": 2}
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.bin").write_bytes(b"a\0b")
    with pytest.raises(HvdlmError, match="no text files found in"):
        collect_text_files([tmp_path / "only"])


def test_default_corpus_files():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = default_corpus_files(max_bytes=300_000)
    sizes = [p.stat().st_size for p in files]
    assert files and files == sorted(files)
    assert sum(sizes) <= 300_000
    assert all(p.suffix == ".py" and p.is_relative_to(stdlib) for p in files)
    assert default_corpus_files(max_bytes=300_000) == files
    full = default_corpus_files()
    assert full[: len(files)] == files and len(full) > len(files)
    assert 1_000_000 < sum(p.stat().st_size for p in full) <= 8_000_000
    skip = {"test", "tests", "idle_test", "idlelib", "lib2to3", "__pycache__", "site-packages", "dist-packages"}
    assert not any(skip & set(p.relative_to(stdlib).parts) for p in full)


def test_prepare_without_inputs_uses_default_corpus(tmp_path, monkeypatch):
    small = default_corpus_files(max_bytes=100_000)
    monkeypatch.setattr(prep, "default_corpus_files", lambda: small)
    meta = prepare(None, tmp_path / "a", workers=1)
    assert meta["sources"] == {"files": len(small), "bytes": sum(p.stat().st_size for p in small),
                               "documents": len(small)}
    assert prepare([], tmp_path / "b", workers=1) == meta
    assert "def " in load_tokenizer(tmp_path / "a").decode(open_tokens(tmp_path / "a", "train")[:20000])
