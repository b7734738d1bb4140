"""Tokenizers: byte (UTF-8 bytes), char (characters seen in the corpus), bpe (byte-level BPE).

All three share one small interface: ``kind``, ``vocab_size``, ``encode``, ``decode`` and
``to_meta`` (what meta.json stores under "tokenizer" so ``load_tokenizer`` can rebuild it).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hvdlm.atomic import write_atomic
from hvdlm.data.shards import load_meta
from hvdlm.errors import HvdlmError

KINDS = ("byte", "char", "bpe")


def _ids(ids) -> list[int]:
    # numpy arrays must become Python ints: bytes() of a uint16 array would copy its raw buffer
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        # a sampled sequence can end mid-character, so invalid UTF-8 must not raise
        return bytes(_ids(ids)).decode("utf-8", errors="replace")

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise HvdlmError(
                f"character {c!r} (U+{ord(c):04X}) is not in the char tokenizer's vocabulary; "
                "remove it from the text or re-run `hvdlm prepare` on a corpus that contains it"
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in _ids(ids))

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}


class BPETokenizer:
    kind = "bpe"
    file = "tokenizer.json"

    def __init__(self, tk: Tokenizer):
        self.tk = tk
        self.vocab_size = tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def decode(self, ids) -> str:
        return self.tk.decode(_ids(ids), skip_special_tokens=False)

    def to_meta(self) -> dict:
        # the hash tells two BPEs of the same size apart (a checkpoint and a data dir must agree)
        digest = hashlib.sha256(self.tk.to_str().encode("utf-8")).hexdigest()
        return {"kind": self.kind, "vocab_size": self.vocab_size, "file": self.file, "sha256": digest}


AnyTokenizer = Union[ByteTokenizer, CharTokenizer, BPETokenizer]


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 4096) -> AnyTokenizer:
    """Build a tokenizer of `kind`; char and bpe learn from `texts`, byte ignores them."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return CharTokenizer("".join(sorted(seen)))
    if kind == "bpe":
        if vocab_size < 256:
            raise HvdlmError(f"bpe vocab_size {vocab_size} is too small; it must be at least 256 (the byte alphabet)")
        tk = Tokenizer(models.BPE())
        # byte-level pre-tokenizer + full byte alphabet: every string encodes, no unknown token needed
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(texts, trainer=trainer)
        return BPETokenizer(tk)
    raise HvdlmError(f"unknown tokenizer {kind!r}; choose one of: {', '.join(KINDS)}")


def save_tokenizer(tok: AnyTokenizer, data_dir: str | Path) -> None:
    """Write the files the tokenizer needs besides meta.json (only BPE has one: tokenizer.json)."""
    if isinstance(tok, BPETokenizer):
        write_atomic(Path(data_dir) / tok.file, tok.tk.to_str().encode("utf-8"))


def load_tokenizer(data_dir: str | Path) -> AnyTokenizer:
    """Rebuild the tokenizer a data dir was prepared with, from its meta.json (and tokenizer.json)."""
    meta = load_meta(data_dir)["tokenizer"]
    kind = meta.get("kind")
    if kind == "byte":
        tok: AnyTokenizer = ByteTokenizer()
    elif kind == "char":
        tok = CharTokenizer(meta["chars"])
    elif kind == "bpe":
        path = Path(data_dir) / meta["file"]
        if not path.is_file():
            raise HvdlmError(f"{path} is missing; re-run `hvdlm prepare`")
        try:
            tok = BPETokenizer(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise HvdlmError(f"{path} is not a valid tokenizer file ({e}); re-run `hvdlm prepare`") from e
    else:
        raise HvdlmError(f"meta.json in {data_dir} names unknown tokenizer {kind!r}; re-run `hvdlm prepare`")
    if tok.vocab_size != meta.get("vocab_size"):
        raise HvdlmError(
            f"tokenizer in {data_dir} has {tok.vocab_size} tokens but meta.json says {meta.get('vocab_size')}; "
            "re-run `hvdlm prepare`"
        )
    return tok
