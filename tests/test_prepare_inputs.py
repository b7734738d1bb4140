"""prepare's inputs: JSONL, compressed files, the BPE sample, and bad input ending in one line."""
import bz2
import gzip
import importlib
import json
import lzma
import os
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zstandard

from hvdlm.data import load_meta, load_tokenizer, open_tokens, prepare
from hvdlm.errors import HvdlmError

from support.launch import HVDLM, launch_env
from support.split import in_val, uniform

prep = importlib.import_module("hvdlm.data.prepare")
documents = importlib.import_module("hvdlm.data.documents")

COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}


def records(n: int = 300, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = ["the", "model", "reads", "tokens", "naïve", "日本", "🙂", "quote\"s", "back\\slash", "tab\there", "\n"]
    return [{"id": i, "text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 60))), "meta": {"n": i}}
            for i in range(n)]


def write_jsonl(path: Path, recs: list[dict], field: str = "text") -> Path:
    lines = [json.dumps({**{k: v for k, v in r.items() if k != "text"}, field: r["text"]}) for r in recs]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(COMPRESS[path.suffix](data) if path.suffix in COMPRESS else data)
    return path


def tokens(out: Path, split: str) -> list[int]:
    return np.asarray(open_tokens(out, split)).tolist()


def direct(tok, docs: list[str]) -> list[int]:
    return [i for d in docs for i in tok.encode(d + "\n\n")]


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_stream_equals_direct_encoding(tmp_path, monkeypatch, kind):
    """Text files and JSONL records, many blocks: each split is exactly its documents encoded one by one."""
    recs = records(400)
    rng = random.Random(1)  # a long document, which BPE encodes in pieces cut where no token can change
    recs[100]["text"] = "".join(rng.choice(["word", " ", "\n", " \n", "\n ", "é", "'s", "(x)"]) for _ in range(150_000))
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "a.jsonl", recs[:250])
    (tmp_path / "src" / "b.txt").write_text("a text file, é 🙂\nsecond line\n")
    write_jsonl(tmp_path / "src" / "c.jsonl", recs[250:])
    monkeypatch.setattr(prep, "BLOCK_BYTES", 3000)
    meta = prepare([tmp_path / "src"], tmp_path / "out", tokenizer=kind, vocab_size=400, workers=2, val_fraction=0.2)
    docs = [r["text"] for r in recs[:250]] + ["a text file, é 🙂\nsecond line\n"] + [r["text"] for r in recs[250:]]
    # unit numbers: a.jsonl's lines, then b.txt (one block), then c.jsonl's lines
    val = np.array(in_val(len(docs), meta["seed"], 0.2))
    tok = load_tokenizer(tmp_path / "out")
    assert tokens(tmp_path / "out", "train") == direct(tok, [d for d, v in zip(docs, val) if not v])
    assert tokens(tmp_path / "out", "val") == direct(tok, [d for d, v in zip(docs, val) if v])
    assert meta["sources"]["documents"] == 401 and 40 < val.sum() < 120
    if kind == "bpe":
        assert meta["vocab_size"] > 300  # merges learned from the sample


def test_bpe_pieces_encode_to_the_documents_tokens(monkeypatch):
    """Long documents are encoded in pieces cut between a non-space and a space, tab, CR or newline:
    with every kind of character on either side of the cuts, the tokens are the whole document's."""
    rng = random.Random(2)
    alphabet = ["word", "Word", "12", "3.5", " ", "  ", "\t", "\n", "\r\n", " \n ", "\u00a0", "\u2028", "\x1c", "\x1f",
                "\x0b", "\x0c", "\u3000", "'s", "'ll", "(x)", "==", "é", "日本", "🙂", "-", "_", "\\"]
    docs = ["".join(rng.choice(alphabet) for _ in range(n)) for n in (3000, 5000, 40)]
    tok = prep.train_tokenizer("bpe", docs, 400)
    monkeypatch.setattr(documents, "BPE_PIECE_CHARS", 50)
    for sep in ("", documents.DOC_SEP):  # the separator joins each document's last piece, not a copy of it all
        pieces = list(documents._bpe_pieces(docs, sep))
        assert len(pieces) > 100 and max(map(len, pieces)) < 1000 and "".join(pieces) == sep.join(docs) + sep
        ids = np.concatenate(documents.encode_docs(tok, docs, np.dtype("<u2"), sep=sep))
        assert ids.tolist() == [i for d in docs for i in tok.encode(d + sep)]


def test_a_long_document_goes_to_the_writer_in_bounded_pieces(tmp_path, monkeypatch):
    """Byte tokens: a document of many pieces (multi-byte characters on every side of the cuts)
    gives exactly the bytes of a direct encoding, and never more than a piece is widened and
    written at once."""
    rng = random.Random(3)
    long = "".join(rng.choice(["a", "é", "日本", "🙂", "\n", " "]) for _ in range(20_000))
    recs = records(30)
    recs[10]["text"] = long
    write_jsonl(tmp_path / "d.jsonl", recs)
    monkeypatch.setattr(documents, "PIECE_CHARS", 1000)
    pieces = list(documents._byte_pieces([r["text"] for r in recs], "\n\n"))
    assert "".join(pieces) == "".join(r["text"] + "\n\n" for r in recs)
    assert len(pieces) > 20 and max(map(len, pieces)) < 2000
    written = []
    real = prep.ShardWriter.write
    monkeypatch.setattr(prep.ShardWriter, "write", lambda self, ids: written.append(len(ids)) or real(self, ids))
    meta = prepare([tmp_path / "d.jsonl"], tmp_path / "out", workers=2, val_fraction=0.2)
    val = in_val(30, meta["seed"], 0.2)
    assert not val[10]  # the long document is in train
    tok = load_tokenizer(tmp_path / "out")
    assert tokens(tmp_path / "out", "train") == direct(tok, [r["text"] for r, v in zip(recs, val) if not v])
    assert tokens(tmp_path / "out", "val") == direct(tok, [r["text"] for r, v in zip(recs, val) if v])
    assert max(written) < 4 * 2000 and sum(written) == meta["train_tokens"] + meta["val_tokens"]


def _die(task):
    os._exit(3)


def test_a_worker_that_dies_ends_the_run_with_an_error():
    with prep._Workers(2, prep._Job(0, 0.1)) as w:
        with pytest.raises(HvdlmError, match="worker process died"):
            list(w.map(_die, [("f.jsonl", True, "text", b"{}", 1, i, False) for i in range(3)]))


def test_jsonl_text_field_and_blank_lines(tmp_path):
    recs = records(50)
    path = write_jsonl(tmp_path / "d.jsonl", recs, field="content")
    path.write_bytes(b"\n" + path.read_bytes() + b"\n  \n")  # blank lines are not records
    meta = prepare([path], tmp_path / "out", text_field="content", workers=1, val_fraction=0.3)
    assert meta["sources"]["documents"] == 50
    text = "".join(load_tokenizer(tmp_path / "out").decode(open_tokens(tmp_path / "out", s)) for s in ("train", "val"))
    assert sorted(text) == sorted("".join(r["text"] + "\n\n" for r in recs))
    assert '"id"' not in text and '"content"' not in text  # the JSON syntax is not tokenized
    with pytest.raises(HvdlmError, match=r"d.jsonl, line 2: the record has no 'text' field; name the text field"):
        prepare([path], tmp_path / "out2", workers=1)


def test_jsonl_read_as_the_standard_json_reads_it(tmp_path):
    """orjson, the fast path, refuses what json accepts (NaN, a BOM, huge integers): such lines
    are read by json.loads, so the documents are the same with or without orjson."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "nan beside", "x": NaN, "big": 123456789012345678901234567890}\n'
                     b'\xef\xbb\xbf{"text": "after a BOM"}\n{"text": "plain \\u00e9\\ud83d\\ude42"}\n')
    prepare([path], tmp_path / "out", workers=1, val_fraction=0.3)
    text = "".join(load_tokenizer(tmp_path / "out").decode(open_tokens(tmp_path / "out", s)) for s in ("train", "val"))
    assert sorted(text) == sorted("nan beside\n\nafter a BOM\n\nplain é🙂\n\n")


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_compressed_inputs_give_the_same_tokens(tmp_path, suffix):
    recs = records(200)
    text = "plain text, ünïcode\n" * 500
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    write_jsonl(tmp_path / "plain" / "a.jsonl", recs)
    write_jsonl(tmp_path / "packed" / f"a.jsonl{suffix}", recs)
    (tmp_path / "plain" / "b.txt").write_text(text)
    (tmp_path / "packed" / f"b.txt{suffix}").write_bytes(COMPRESS[suffix](text.encode()))
    a = prepare([tmp_path / "plain"], tmp_path / "a", workers=1, val_fraction=0.2)
    b = prepare([tmp_path / "packed"], tmp_path / "b", workers=1, val_fraction=0.2)
    assert a["shards"] == b["shards"] and a["sources"]["documents"] == b["sources"]["documents"] == 201


def test_zstd_multiple_frames(tmp_path):
    data = "".join(json.dumps(r) + "\n" for r in records(100)).encode()
    c = zstandard.ZstdCompressor()
    (tmp_path / "m.jsonl.zst").write_bytes(c.compress(data[:3001]) + c.compress(data[3001:]))  # a line across frames
    (tmp_path / "m.jsonl").write_bytes(data)
    a = prepare([tmp_path / "m.jsonl"], tmp_path / "a", workers=1)
    b = prepare([tmp_path / "m.jsonl.zst"], tmp_path / "b", workers=1)
    assert a["shards"] == b["shards"]


def bpe_sample(docs: list[str], seed: int, p: float, budget: int) -> list[str]:
    """The README's BPE sample: each document drawn with probability ``p`` (its own seeded draw,
    independent of the validation split's), in input order, up to the first that fills ``budget``."""
    drawn, taken = [], 0
    for i, d in enumerate(docs):
        if taken < budget and uniform(i, seed, prep._SAMPLE_SALT) < p:
            drawn.append(d)
            taken += len(d)
    return drawn


def test_bpe_learns_from_a_bounded_seeded_sample(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", records(2000))
    write_jsonl(tmp_path / "d.jsonl.gz", records(2000))
    budget = (tmp_path / "d.jsonl").stat().st_size // 10
    all_docs = [r["text"] + "\n\n" for r in records(2000)]
    learned = {}
    for name, workers in (("d.jsonl", 1), ("d.jsonl", 2), ("d.jsonl.gz", 1)):
        prepare([tmp_path / name], tmp_path / f"{name}-{workers}", tokenizer="bpe", vocab_size=300,
                bpe_sample_bytes=budget, workers=workers)
        learned[name, workers] = (tmp_path / f"{name}-{workers}" / "tokenizer.json").read_text()
    assert learned["d.jsonl", 1] == learned["d.jsonl", 2]  # the same sample, whatever the number of workers
    # each document drawn with probability budget / file size: about a tenth of them, from across the file
    plain = bpe_sample(all_docs, 1337, budget / (tmp_path / "d.jsonl").stat().st_size, budget)
    assert 100 < len(plain) < 300 and sum(map(len, plain)) <= budget and plain != all_docs[:len(plain)]
    assert learned["d.jsonl", 1] == prep.train_tokenizer("bpe", plain, 300).tk.to_str()
    # compressed, the text is more than the file size suggests (4x is assumed): the sample stops once full
    packed = bpe_sample(all_docs, 1337, budget / (4 * (tmp_path / "d.jsonl.gz").stat().st_size), budget)
    assert budget <= sum(map(len, packed)) < budget + max(map(len, all_docs))
    assert learned["d.jsonl.gz", 1] == prep.train_tokenizer("bpe", packed, 300).tk.to_str()


def truncated(suffix: str, data: bytes) -> bytes:
    packed = COMPRESS[suffix](data)
    return packed[: len(packed) * 2 // 3]


BAD = {
    "malformed": ("d.jsonl", lambda: b'{"text": "ok"}\n{"text": "ok"}\n{"text": "cut\n{"text": "ok"}\n',
                  r"d.jsonl, line 3: not a valid JSON line"),
    "no field": ("d.jsonl", lambda: b'{"text": "ok"}\n{"body": "no text"}\n', r"d.jsonl, line 2: the record has no 'text'"),
    "not a string": ("d.jsonl", lambda: b'{"text": ["a"]}\n', r"d.jsonl, line 1: the 'text' field is list, not a string"),
    "not an object": ("d.jsonl", lambda: b'"just a string"\n', r"d.jsonl, line 1: the record has no 'text' field"),
    "lone surrogate": ("d.jsonl", lambda: b'{"text": "ok"}\n{"text": "a \\ud800 b"}\n',
                       r"d.jsonl, line 2: not a valid JSON line .*surrogates not allowed"),
    "huge integer": ("d.jsonl", lambda: b'{"text": 123456789012345678901234567890}\n',
                     r"d.jsonl, line 1: the 'text' field is int, not a string"),  # orjson would say float
    **{f"truncated {s}": (f"d.jsonl{s}", lambda s=s: truncated(s, "".join(json.dumps(r) + "\n" for r in records(3000)).encode()),
                          rf"d.jsonl{s}: corrupt or truncated (gzip|bzip2|xz|zstd) data after line \d+")
       for s in COMPRESS},
    "truncated text .gz": ("t.txt.gz", lambda: truncated(".gz", b"some text\n" * 50000), r"t.txt.gz: corrupt or truncated gzip"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_ends_with_one_line_and_no_complete_output(tmp_path, case):
    name, content, message = BAD[case]
    (tmp_path / "src").mkdir()
    write_jsonl(tmp_path / "src" / "0-good.jsonl", records(500))  # read and written before the bad file
    (tmp_path / "src" / name).write_bytes(content())
    out = tmp_path / "out"
    prepare([tmp_path / "src" / "0-good.jsonl"], out, workers=1)  # an earlier complete output
    p = subprocess.run([HVDLM, "prepare", str(tmp_path / "src"), "--out_dir", str(out), "--workers", "2"],
                       capture_output=True, text=True, env=launch_env(), timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvdlm: error: "), p.stderr
    assert re.search(message, lines[0]), lines[0]
    with pytest.raises(HvdlmError, match="no meta.json"):
        load_meta(out)
    assert not [p.name for p in out.iterdir() if p.suffix in (".bin", ".tmp")]  # no shard left to mistake


def test_cli_last_line(tmp_path):
    write_jsonl(tmp_path / "d.jsonl.gz", records(100))
    p = subprocess.run([HVDLM, "prepare", str(tmp_path / "d.jsonl.gz"), "--out_dir", str(tmp_path / "out"),
                        "--workers", "1"], capture_output=True, text=True, env=launch_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # no progress bar when stderr is not a terminal
    assert re.fullmatch(
        r"hvdlm: wrote [\d,]+ train and [\d,]+ val tokens \(byte, vocab 256\) from 100 documents in 1 files to "
        r"\S+ in [\d.]+ s \([\d,]+ tokens/s, [\d.]+ MB/s\)\n", p.stdout), p.stdout
