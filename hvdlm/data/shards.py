"""Token shards on disk: writing them as a stream, and reading them back as one array.

A prepared data dir holds:
  train.bin, val.bin    token ids, raw little-endian uint16 (uint32 if vocab > 65536); when a
                        split outgrows one shard it is train-00000.bin, train-00001.bin, ...
  tokenizer.json        the trained BPE (bpe tokenizer only)
  meta.json             tokenizer, dtype, token counts, each shard's file, token count and sha256;
                        written last, so it only exists when the shards it describes are complete

Format 2 lists the shards under "shards"; format 1 (one train.bin and one val.bin, sha256 by file
name) is still read.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from hvdlm.atomic import fsync_dir
from hvdlm.data.glibc import sync_range
from hvdlm.errors import HvdlmError

FORMAT = 2
SPLITS = ("train", "val")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
SHARD_NAME = re.compile(r"^(train|val)(-\d{5})?\.bin$")
WRITEBACK_BYTES = 32 << 20  # a shard goes to the disk in ranges of this size while it is written


def token_dtype(vocab_size: int) -> str:
    """Smallest dtype that holds every token id (ids run 0 .. vocab_size-1)."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- writing ---------------------------------------------------------------------------------------

class ShardWriter:
    """Appends one split's tokens to shards of at most ``shard_tokens`` tokens, hashing as it writes.

    Shards are hidden temp files until ``finish`` renames them all (fsynced), so an interrupted
    run never leaves a shard that looks complete; ``abort`` removes them. Each WRITEBACK_BYTES
    written, the new range is sent to the disk and the one before it waited for: the disk writes
    while tokens are made, at most two ranges are waiting in memory, and a disk slower than the
    tokenizer slows the writer down (without this the page cache takes gigabytes, the disk idles,
    and the fsync at the shard's end writes them all while nothing else moves).
    """

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict] = []  # {"tmp": Path, "tokens": int, "hash": sha256 object}
        self._fh = None
        self._sent = self._done = 0  # bytes of the open shard sent to the disk, and known written

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def _open_next(self) -> None:
        self._close()
        tmp = self.out / f".{self.split}-{len(self.shards):05d}.bin.tmp"
        self._fh = open(tmp, "wb")
        self._sent = self._done = 0
        self.shards.append({"tmp": tmp, "tokens": 0, "hash": hashlib.sha256()})

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if not self.shards or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            cur = self.shards[-1]
            part, tokens = tokens[: self.shard_tokens - cur["tokens"]], tokens[self.shard_tokens - cur["tokens"]:]
            data = np.ascontiguousarray(part).data  # the array's own bytes, not a copy
            self._fh.write(data)
            cur["hash"].update(data)
            cur["tokens"] += len(part)
            self._write_behind(cur["tokens"] * self.dtype.itemsize)

    def _write_behind(self, written: int) -> None:
        if written - self._sent < WRITEBACK_BYTES:
            return
        self._fh.flush()
        sync_range(self._fh.fileno(), self._sent, written - self._sent, wait=False)
        sync_range(self._fh.fileno(), self._done, self._sent - self._done, wait=True)
        self._done, self._sent = self._sent, written

    def take_tail(self, n: int) -> np.ndarray | None:
        """Remove and return the last ``n`` tokens if the last shard holds them (else None)."""
        if not self.shards or self.shards[-1]["tokens"] < n:
            return None
        self._close()
        last = self.shards[-1]
        keep = last["tokens"] - n
        tail = np.fromfile(last["tmp"], dtype=self.dtype, offset=keep * self.dtype.itemsize)
        with open(last["tmp"], "r+b") as fh:
            fh.truncate(keep * self.dtype.itemsize)
        last["tokens"], last["hash"] = keep, hashlib.sha256()
        with open(last["tmp"], "rb") as fh:
            while chunk := fh.read(1 << 20):
                last["hash"].update(chunk)
        return tail

    def finish(self) -> list[dict]:
        """Rename the shards to their final names; returns their entries for meta.json."""
        self._close()
        for s in [s for s in self.shards if s["tokens"] == 0]:  # emptied by take_tail
            s["tmp"].unlink()
            self.shards.remove(s)
        entries = []
        for i, s in enumerate(self.shards):
            name = f"{self.split}.bin" if len(self.shards) == 1 else f"{self.split}-{i:05d}.bin"
            os.replace(s["tmp"], self.out / name)
            entries.append({"file": name, "tokens": s["tokens"], "sha256": s["hash"].hexdigest()})
        fsync_dir(self.out)
        return entries

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for s in self.shards:
            s["tmp"].unlink(missing_ok=True)


def clear_old_shards(out: Path) -> None:
    """Remove the shards (and stray temp shards) of an earlier run; meta.json must already be gone."""
    for p in out.iterdir():
        if SHARD_NAME.match(p.name) or (p.name.startswith((".train-", ".val-")) and p.name.endswith(".bin.tmp")):
            p.unlink(missing_ok=True)


# --- reading ---------------------------------------------------------------------------------------

def _shard_lists(meta: dict, path: Path) -> dict[str, list[dict]]:
    """{split: [{"file", "tokens", "sha256"}, ...]} from a format-1 or format-2 meta.json."""
    if meta.get("format") == 1:
        return {s: [{"file": f"{s}.bin", "tokens": int(meta[f"{s}_tokens"]), "sha256": meta["sha256"][f"{s}.bin"]}]
                for s in SPLITS}
    shards = meta.get("shards")
    if not isinstance(shards, dict) or not all(isinstance(shards.get(s), list) and shards[s] for s in SPLITS):
        raise HvdlmError(f"{path} lists no shards for train and val; re-run `hvdlm prepare`")
    return shards


def load_meta(data_dir: str | Path) -> dict:
    """Read meta.json and check that every shard exists with the size it promises."""
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
    if not isinstance(meta, dict) or meta.get("format") not in (1, FORMAT):
        raise HvdlmError(f"{path} is not a format-1 or format-{FORMAT} hvdlm meta file; re-run `hvdlm prepare`")
    missing = [k for k in ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens") if k not in meta]
    if missing or meta["dtype"] not in DTYPES or (meta["format"] == 1 and "sha256" not in meta):
        raise HvdlmError(f"{path} is incomplete or has an unknown dtype; re-run `hvdlm prepare`")
    itemsize = DTYPES[meta["dtype"]].itemsize
    for split, shards in _shard_lists(meta, path).items():
        for entry in shards:
            shard = d / entry["file"]
            if not shard.is_file():
                raise HvdlmError(f"{shard} is missing; re-run `hvdlm prepare`")
            size, expected = shard.stat().st_size, int(entry["tokens"]) * itemsize
            if size != expected:
                raise HvdlmError(
                    f"{shard} is truncated or corrupt: {size} bytes, expected {expected} "
                    f"({entry['tokens']} tokens x {itemsize}); re-run `hvdlm prepare`"
                )
    return meta


def verify_checksums(data_dir: str | Path, meta: dict | None = None) -> None:
    """Recompute each shard's sha256 and compare with meta.json."""
    meta = load_meta(data_dir) if meta is None else meta
    for shards in _shard_lists(meta, Path(data_dir) / "meta.json").values():
        for entry in shards:
            path = Path(data_dir) / entry["file"]
            if sha256_file(path) != entry["sha256"]:
                raise HvdlmError(f"{path} does not match its sha256 in meta.json (corrupt); re-run `hvdlm prepare`")


class TokenStream:
    """Several shards read as one read-only token array: ``len()``, integers, slices and integer
    arrays (what the sampler's ``tokens[rows]`` needs) index the concatenation."""

    def __init__(self, parts: list[np.memmap]):
        self.parts = parts
        self.dtype = parts[0].dtype
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # starts[i]: first index of part i
        self.shape = (int(self.starts[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} is out of range for {n} tokens")
            part = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.parts[part][i - self.starts[part]]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = [p[max(start - s, 0):max(min(stop - s, len(p)), 0)] for p, s in zip(self.parts, self.starts)]
            return np.concatenate([np.asarray(x) for x in pieces if len(x)] or [np.zeros(0, self.dtype)])
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"TokenStream takes integers, slices or integer arrays, not {idx.dtype}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} tokens")
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.parts[p][idx[sel] - self.starts[p]]
        return out


def open_tokens(data_dir: str | Path, split: str, meta: dict | None = None) -> np.memmap | TokenStream:
    """One split's token ids, read-only: a memmap for one shard, a TokenStream over several."""
    if split not in SPLITS:
        raise HvdlmError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    meta = load_meta(data_dir) if meta is None else meta
    dtype = DTYPES[meta["dtype"]]
    parts = [np.memmap(Path(data_dir) / e["file"], dtype=dtype, mode="r", shape=(int(e["tokens"]),))
             for e in _shard_lists(meta, Path(data_dir) / "meta.json")[split]]
    return parts[0] if len(parts) == 1 else TokenStream(parts)
