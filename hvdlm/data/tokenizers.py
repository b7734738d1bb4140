"""Tokenizers: byte (UTF-8 bytes), char (characters seen in the corpus), bpe (byte-level BPE,
trained on the corpus or a pretrained model's: a folder's tokenizer.json or GPT-2's vocab.json +
merges.txt), and tiktoken's GPT-2 encoding.

All share one small interface: ``kind``, ``vocab_size``, ``encode``, ``decode``, ``separator``
(the end-of-text token's text that follows each document, or None) and ``to_meta`` (what
meta.json stores under "tokenizer" so ``load_tokenizer`` can rebuild it).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hvdlm.atomic import write_atomic
from hvdlm.data.shards import load_meta
from hvdlm.errors import HvdlmError

KINDS = ("byte", "char", "bpe")
END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator


def _ids(ids) -> list[int]:
    # numpy arrays must become Python ints: bytes() of a uint16 array would copy its raw buffer
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256
    separator = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        # a sampled sequence can end mid-character, so invalid UTF-8 must not raise
        return bytes(_ids(ids)).decode("utf-8", errors="replace")

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


class CharTokenizer:
    kind = "char"
    separator = None

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
        self.end_of_text = tk.token_to_id(END_OF_TEXT)
        self.separator = END_OF_TEXT if self.end_of_text is not None else None

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def decode(self, ids) -> str:
        return self.tk.decode(_ids(ids), skip_special_tokens=False)

    def to_meta(self) -> dict:
        # the hash tells two BPEs of the same size apart (a checkpoint and a data dir must agree)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "file": self.file, "sha256": digest(self.tk)}
        if self.end_of_text is not None:
            meta["end_of_text"] = self.end_of_text
        return meta


def digest(tk: Tokenizer) -> str:
    """What tells two tokenizers apart (a model's, a data dir's): the hash of their JSON."""
    return hashlib.sha256(tk.to_str().encode("utf-8")).hexdigest()


class TiktokenTokenizer:
    """tiktoken's GPT-2 encoding (``--tokenizer gpt2``): GPT-2's ids, without a tokenizer.json."""
    kind = "tiktoken"
    separator = END_OF_TEXT

    def __init__(self, name: str = "gpt2"):
        try:
            import tiktoken
        except ImportError:
            raise HvdlmError("--tokenizer gpt2 needs tiktoken (pip install tiktoken); offline, pass a GPT-2 folder "
                             "instead: --tokenizer DIR with its tokenizer.json or vocab.json + merges.txt") from None
        try:
            self.enc = tiktoken.get_encoding(name)
        except Exception as e:  # tiktoken fetches the file once; offline and uncached it raises requests' errors
            raise HvdlmError(f"tiktoken could not load the {name} encoding ({type(e).__name__}); it downloads it "
                             "once: run once online (or set TIKTOKEN_CACHE_DIR to a folder holding it), or pass "
                             "--tokenizer DIR, a GPT-2 folder with tokenizer.json or vocab.json + merges.txt") from None
        self.name, self.vocab_size, self.end_of_text = name, self.enc.n_vocab, self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # "<|endoftext|>" in a document is text, not the separator

    def decode(self, ids) -> str:
        return self.enc.decode(_ids(ids), errors="replace")

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "name": self.name, "end_of_text": self.end_of_text}


AnyTokenizer = Union[ByteTokenizer, CharTokenizer, BPETokenizer, TiktokenTokenizer]


def folder_tokenizer(folder: str | Path) -> Tokenizer | None:
    """A model folder's tokenizer: its tokenizer.json, or GPT-2's vocab.json + merges.txt as the same
    byte-level BPE; None where it has neither."""
    path = Path(folder)
    try:
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tk = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's words and byte map
            tk.decoder = decoders.ByteLevel()
            if END_OF_TEXT in json.loads((path / "vocab.json").read_text(encoding="utf-8")):
                tk.add_special_tokens([END_OF_TEXT])  # matched whole, never split into bytes
            return tk
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise HvdlmError(f"the tokenizer in {path} cannot be read ({e})") from None
    return None


def pretrained_tokenizer(name: str) -> AnyTokenizer:
    """``--tokenizer gpt2`` (tiktoken) or a model folder's tokenizer, or one error line."""
    if name == "gpt2" and not Path(name).is_dir():
        return TiktokenTokenizer("gpt2")
    if not Path(name).is_dir():
        raise HvdlmError(f"unknown tokenizer {name!r}; choose one of: {', '.join(KINDS)}, gpt2 (tiktoken), or a "
                         "model folder holding tokenizer.json or vocab.json + merges.txt")
    tk = folder_tokenizer(name)
    if tk is None:
        raise HvdlmError(f"{name} holds no tokenizer: neither tokenizer.json nor vocab.json + merges.txt")
    return BPETokenizer(tk)


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
    elif kind == "tiktoken":
        tok = TiktokenTokenizer(meta["name"])
    else:
        raise HvdlmError(f"meta.json in {data_dir} names unknown tokenizer {kind!r}; re-run `hvdlm prepare`")
    if tok.vocab_size != meta.get("vocab_size"):
        raise HvdlmError(
            f"tokenizer in {data_dir} has {tok.vocab_size} tokens but meta.json says {meta.get('vocab_size')}; "
            "re-run `hvdlm prepare`"
        )
    return tok
