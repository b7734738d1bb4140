import random

import numpy as np
import pytest

from hvdlm.data import prepare
from hvdlm.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from hvdlm.errors import HvdlmError

# text a tokenizer might meet in generation but never saw in training
ODD_TEXT = "naïve café 日本語 🙂 tab\tcr\r\nnul\x00 end  \n\n  "


def small_corpus(n_docs: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["def", "return", "self", "value", "import", "class", "for", "in", "range", "print", "x", "y"]
    docs = []
    for _ in range(n_docs):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(rng.randint(2, 8))]
        docs.append("\n".join(lines))
    return docs


def test_byte_round_trip():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.kind == "byte"
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode(tok.encode(ODD_TEXT)) == ODD_TEXT
    # numpy ids (as read from a shard) must decode by value, not by raw buffer
    assert tok.decode(np.array(tok.encode("hi é"), dtype=np.uint16)) == "hi é"
    # a sequence cut mid-character decodes with a replacement char instead of raising
    assert tok.decode([0x68, 0xC3]) == "h\ufffd"
    assert tok.to_meta() == {"kind": "byte", "vocab_size": 256}


def test_char_round_trip_and_unknown_char():
    tok = train_tokenizer("char", ["hello", "world"])
    assert tok.kind == "char" and tok.chars == "dehlorw" and tok.vocab_size == 7
    ids = tok.encode("helloworld")
    assert tok.decode(ids) == "helloworld"
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "helloworld"
    with pytest.raises(HvdlmError, match="'z'"):
        tok.encode("hez")
    assert tok.to_meta() == {"kind": "char", "vocab_size": 7, "chars": "dehlorw"}


def test_bpe_round_trip_and_compression():
    docs = small_corpus()
    tok = train_tokenizer("bpe", docs, vocab_size=300)
    assert isinstance(tok, BPETokenizer) and tok.kind == "bpe"
    assert 256 < tok.vocab_size <= 300
    text = "\n\n".join(docs)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges were learned and used
    assert max(ids) < tok.vocab_size
    # byte-level alphabet: text never seen in training still round-trips
    assert tok.decode(tok.encode(ODD_TEXT)) == ODD_TEXT
    assert tok.decode(np.array(tok.encode(ODD_TEXT), dtype=np.uint16)) == ODD_TEXT
    meta = tok.to_meta()
    assert {k: meta[k] for k in ("kind", "vocab_size", "file")} == {"kind": "bpe", "vocab_size": tok.vocab_size, "file": "tokenizer.json"}
    other = train_tokenizer("bpe", [text + " something else entirely"], vocab_size=300)
    assert other.to_meta()["sha256"] != meta["sha256"]  # same size, another BPE: told apart


def test_bpe_vocab_too_small():
    with pytest.raises(HvdlmError, match="at least 256"):
        train_tokenizer("bpe", ["abc"], vocab_size=100)


def test_unknown_kind():
    with pytest.raises(HvdlmError, match="byte, char, bpe"):
        train_tokenizer("wordpiece", ["abc"])


def test_save_tokenizer_writes_file_only_for_bpe(tmp_path):
    save_tokenizer(ByteTokenizer(), tmp_path)
    save_tokenizer(CharTokenizer("ab"), tmp_path)
    assert list(tmp_path.iterdir()) == []
    save_tokenizer(train_tokenizer("bpe", small_corpus(), 280), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_load_tokenizer_round_trip(tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(small_corpus(20)):
        (src / f"{i}.txt").write_text(doc + " é")
    out = tmp_path / "out"
    meta = prepare([src], out, tokenizer=kind, vocab_size=300, workers=1)
    tok = load_tokenizer(out)
    assert tok.kind == kind
    assert tok.to_meta() == meta["tokenizer"]
    assert tok.vocab_size == meta["vocab_size"]
    text = "def value self return é"
    assert tok.decode(tok.encode(text)) == text
    # the reloaded tokenizer encodes exactly like the one that wrote the shards (one chunk here)
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]).tolist()
    assert tok.encode(tok.decode(ids)) == ids


def test_load_tokenizer_missing_bpe_file(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(small_corpus(5)))
    prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer="bpe", vocab_size=280, workers=1)
    (tmp_path / "out" / "tokenizer.json").unlink()
    with pytest.raises(HvdlmError, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path / "out")
