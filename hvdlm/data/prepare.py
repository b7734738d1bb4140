"""Text files -> token shards.

A prepared data dir (format 1) holds:
  train.bin, val.bin  token ids, raw little-endian uint16 (uint32 if vocab > 65536); val is the
                      tail of the token stream
  tokenizer.json      the trained BPE (bpe tokenizer only)
  meta.json           tokenizer, dtype, token counts, sha256 of each shard; written last, so it
                      only exists when the shards it describes are complete
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from hvdlm.data.corpus import collect_text_files, default_corpus_files
from hvdlm.data.tokenizers import KINDS, AnyTokenizer, save_tokenizer, train_tokenizer
from hvdlm.errors import HvdlmError

FORMAT = 1
SPLITS = ("train", "val")
DOC_SEP = "\n\n"
CHUNK_CHARS = 1 << 20  # documents are grouped into pool tasks of about this many characters
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    """Smallest dtype that holds every token id (ids run 0 .. vocab_size-1)."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def write_atomic(path: Path, data: bytes | np.ndarray) -> None:
    """Write to a temp name beside `path`, fsync, then rename: readers see the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, np.ndarray):
                data.tofile(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # the rename itself must reach the disk before meta.json vouches for the file
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise HvdlmError(f"cannot write {path}: {e.strerror or e}; check the directory is writable and has space") from e
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _chunks(docs: list[str]) -> list[str]:
    """Group documents into texts of about CHUNK_CHARS; concatenated, they are exactly DOC_SEP.join(docs).

    The grouping depends only on the documents, never on the worker count, so any number of
    workers produces the same tokens.
    """
    groups, cur, size = [], [], 0
    for doc in docs:
        cur.append(doc)
        size += len(doc)
        if size >= CHUNK_CHARS:
            groups.append(DOC_SEP.join(cur))
            cur, size = [], 0
    if cur:
        groups.append(DOC_SEP.join(cur))
    return [g + DOC_SEP for g in groups[:-1]] + groups[-1:]


# set in each pool worker by the initializer, so the tokenizer is not re-sent with every task
_tok: AnyTokenizer | None = None
_dtype: np.dtype | None = None


def _init_worker(tok: AnyTokenizer, dtype: np.dtype) -> None:
    global _tok, _dtype
    _tok, _dtype = tok, dtype


def _encode(text: str) -> np.ndarray:
    return np.array(_tok.encode(text), dtype=_dtype)


def _tokenize(tok: AnyTokenizer, chunks: list[str], dtype: np.dtype, workers: int) -> np.ndarray:
    if workers == 1:
        _init_worker(tok, dtype)
        parts = [_encode(c) for c in chunks]
    else:
        # the HF tokenizers library's threads do not survive fork; saying so explicitly makes each
        # worker run single-threaded and silences its "process just got forked" warning
        old = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with Pool(workers, initializer=_init_worker, initargs=(tok, dtype)) as pool:
                parts = list(pool.imap(_encode, chunks))  # imap keeps chunk order
        finally:
            if old is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = old
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def prepare(
    inputs: list[str | Path] | None,
    out_dir: str | Path,
    tokenizer: str = "byte",
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    workers: int | None = None,
    seed: int = 1337,
) -> dict:
    """Tokenize text files (default: the stdlib corpus) into out_dir; returns the meta.json dict."""
    # check everything cheap before the slow part
    if tokenizer not in KINDS:
        raise HvdlmError(f"unknown tokenizer {tokenizer!r}; choose one of: {', '.join(KINDS)}")
    if not 0 < val_fraction < 1:
        raise HvdlmError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers < 1:
        raise HvdlmError(f"workers must be at least 1, got {workers}")
    files = collect_text_files(inputs) if inputs else default_corpus_files()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HvdlmError(f"cannot create output dir {out}: {e.strerror or e}; choose another directory") from e
    if not os.access(out, os.W_OK):
        raise HvdlmError(f"output dir {out} is not writable; choose another directory")

    docs, n_bytes = [], 0
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise HvdlmError(f"cannot read {path}: {e.strerror or e}") from e
        n_bytes += len(raw)
        if raw:
            docs.append(raw.decode("utf-8", errors="replace"))
    # shuffle whole documents so val (the tail) is a mix of sources, not just the last file
    random.Random(seed).shuffle(docs)

    tok = train_tokenizer(tokenizer, docs, vocab_size)
    dtype_name = token_dtype(tok.vocab_size)
    chunks = _chunks(docs)
    tokens = _tokenize(tok, chunks, _DTYPES[dtype_name], min(workers, max(len(chunks), 1)))
    n = len(tokens)
    if n == 0:
        raise HvdlmError(f"corpus is empty: {len(files)} file(s) with {n_bytes} bytes of text in total; give files that contain text")
    if n < 2:
        raise HvdlmError(f"corpus is too small: {n} token; need at least 2 (one for train, one for val)")
    n_val = min(max(int(n * val_fraction), 1), n - 1)
    splits = {"train": tokens[: n - n_val], "val": tokens[n - n_val :]}

    # an old meta.json would vouch for the shards being replaced below; remove it first
    (out / "meta.json").unlink(missing_ok=True)
    for split, arr in splits.items():
        write_atomic(out / f"{split}.bin", arr)
    save_tokenizer(tok, out)
    meta = {
        "format": FORMAT,
        "tokenizer": tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype_name,
        "train_tokens": len(splits["train"]),
        "val_tokens": len(splits["val"]),
        "sha256": {f"{s}.bin": _sha256(out / f"{s}.bin") for s in SPLITS},
        "sources": {"files": len(files), "bytes": n_bytes},
        "seed": seed,
    }
    write_atomic(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    return meta


def load_meta(data_dir: str | Path) -> dict:
    """Read meta.json and check that both shards exist with the size it promises."""
    d = Path(data_dir)
    if not d.is_dir():
        raise HvdlmError(f"data dir {d} does not exist; run `hvdlm prepare` first")
    path = d / "meta.json"
    if not path.is_file():
        raise HvdlmError(f"no meta.json in {d}; run `hvdlm prepare` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise HvdlmError(f"{path} is not valid JSON ({e}); re-run `hvdlm prepare`") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HvdlmError(f"{path} is not a format-{FORMAT} hvdlm meta file; re-run `hvdlm prepare`")
    missing = [k for k in ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens", "sha256") if k not in meta]
    if missing or meta["dtype"] not in _DTYPES:
        raise HvdlmError(f"{path} is incomplete or has an unknown dtype; re-run `hvdlm prepare`")
    itemsize = _DTYPES[meta["dtype"]].itemsize
    counts = {s: int(meta[f"{s}_tokens"]) for s in SPLITS}
    for split in SPLITS:
        shard = d / f"{split}.bin"
        if not shard.is_file():
            raise HvdlmError(f"{shard} is missing; re-run `hvdlm prepare`")
        size, expected = shard.stat().st_size, counts[split] * itemsize
        if size != expected:
            raise HvdlmError(
                f"{shard} is truncated or corrupt: {size} bytes, expected {expected} "
                f"({counts[split]} tokens x {itemsize}); re-run `hvdlm prepare`"
            )
    return meta


def verify_checksums(data_dir: str | Path, meta: dict | None = None) -> None:
    """Recompute each shard's sha256 and compare with meta.json."""
    meta = load_meta(data_dir) if meta is None else meta
    for name, want in meta["sha256"].items():
        if _sha256(Path(data_dir) / name) != want:
            raise HvdlmError(f"{Path(data_dir) / name} does not match its sha256 in meta.json (corrupt); re-run `hvdlm prepare`")


def open_tokens(data_dir: str | Path, split: str, meta: dict | None = None) -> np.memmap:
    """Read-only memmap of one split's token ids."""
    if split not in SPLITS:
        raise HvdlmError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    meta = load_meta(data_dir) if meta is None else meta
    return np.memmap(
        Path(data_dir) / f"{split}.bin", dtype=_DTYPES[meta["dtype"]], mode="r", shape=(meta[f"{split}_tokens"],)
    )
