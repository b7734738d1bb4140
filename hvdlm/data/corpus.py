"""The inputs to prepare: which files, what they hold, and reading them a bounded block at a time.

Files are recognized by name: ``.jsonl`` (or ``.ndjson``) holds one JSON record per line, the
document in a string field; anything else is text, one document per file. Either may be
compressed: ``.gz``, ``.bz2``, ``.xz`` (standard library) or ``.zst`` (the zstandard package),
e.g. ``docs.jsonl.zst``. With no inputs, the default corpus every Python has is used.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from hvdlm.errors import HvdlmError

COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")

# not library code (third-party packages, test suites, the IDLE app, a deprecated converter), not
# source, or generated tables (encodings/: 1.4 MB of code-page maps that would skew a code model)
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "__pycache__",
              "encodings"}


@dataclass(frozen=True)
class Source:
    path: Path
    compression: str | None  # None, or a value of COMPRESSIONS
    jsonl: bool

    @classmethod
    def of(cls, path: str | Path) -> "Source":
        path = Path(path)
        compression = COMPRESSIONS.get(path.suffix.lower())
        inner = path.with_suffix("") if compression else path
        return cls(path, compression, inner.suffix.lower() in JSONL_SUFFIXES)


def default_corpus_files(max_bytes: int = 8_000_000) -> list[Path]:
    """The standard library's own .py sources, sorted, taken in order while they fit in max_bytes.

    Every machine with Python has them, so prepare works without a download; the list is the
    same on every run of a given Python installation.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        paths += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    if not paths:
        raise HvdlmError(f"no Python standard library sources found under {root}; pass text files or directories to prepare")
    files, total = [], 0
    for path in sorted(paths):
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    return files


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or truncated compressed stream raises, per library."""
    errors: tuple = (EOFError, OSError, zlib.error, lzma.LZMAError)
    try:
        import zstandard
        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _decompressing(raw: BinaryIO, source: Source) -> BinaryIO:
    if source.compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if source.compression == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if source.compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if source.compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise HvdlmError(f"{source.path} is zstd-compressed: install the zstandard package "
                             "(pip install zstandard) or decompress it first") from None
        return _ZstdStream(raw, zstandard)
    return raw


class _ZstdStream:
    """Decompresses zstd frames one after another; unlike zstandard's stream_reader, which ends
    quietly at a cut-off frame, it raises EOFError when the file ends inside a frame."""

    def __init__(self, raw: BinaryIO, zstandard):
        self.raw, self.zstandard = raw, zstandard
        self.frame = zstandard.ZstdDecompressor().decompressobj()
        self.in_frame = False  # bytes of the current frame were fed
        self.out = b""

    def read(self, n: int) -> bytes:
        while len(self.out) < n:
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if self.in_frame:
                    raise EOFError("the file ends inside a zstd frame")
                break
            while chunk:
                self.out += self.frame.decompress(chunk)
                self.in_frame = True
                chunk = b""
                if self.frame.eof:  # the next frame, if any, starts in what is left over
                    chunk = self.frame.unused_data
                    self.frame, self.in_frame = self.zstandard.ZstdDecompressor().decompressobj(), False
        data, self.out = self.out[:n], self.out[n:]
        return data


def _is_binary(source: Source) -> bool:
    try:
        with open(source.path, "rb") as raw:
            return b"\0" in _decompressing(raw, source).read(8192)
    except _decode_errors() as e:
        what = f"corrupt or truncated {source.compression} data" if source.compression else "cannot read it"
        raise HvdlmError(f"{source.path}: {what} ({getattr(e, 'strerror', None) or e})") from e


def collect_text_files(inputs: list[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, sorted, hidden entries skipped) into input files.

    Text files with a NUL byte in their first 8 KB (after decompression) are taken to be binary
    and skipped; JSONL files are kept (a bad record is reported when it is read).
    """
    if isinstance(inputs, (str, Path)):  # a lone path would otherwise be iterated character by character
        inputs = [inputs]
    files: list[Path] = []
    for inp in inputs:
        path = Path(inp)
        if path.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
            files += sorted(p for p in found if p.is_file())  # drops sockets, fifos, broken links
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise HvdlmError(f"input {path} is neither a regular file nor a directory")
        else:
            raise HvdlmError(f"input {path} does not exist; check the path")
    files = [p for p in files if Source.of(p).jsonl or not _is_binary(Source.of(p))]
    if not files:
        raise HvdlmError(f"no text files found in {', '.join(str(i) for i in inputs) or '(no inputs)'}")
    return files


@dataclass
class Block:
    """Whole lines (JSONL) or a piece of a text file ending at a line end where there is one."""
    data: bytearray
    first_line: int  # 1-based number of the block's first line in its file
    last: bool  # the file's last block (a text document ends here)
    raw_bytes: int  # bytes of the file on disk consumed since the previous block
    newlines: int = 0  # of data: counted once here, for the next block's first_line and the units


def _cut(buf: bytes, jsonl: bool) -> int:
    """Where a block may end: after the last newline; for text without one, at a UTF-8 character
    boundary. 0 means not yet (a JSONL line longer than the buffer)."""
    nl = buf.rfind(b"\n")
    if nl >= 0 or jsonl:
        return nl + 1
    end = len(buf)
    while end > len(buf) - 4 and end > 0 and buf[end - 1] & 0xC0 == 0x80:  # continuation bytes
        end -= 1
    if end > 0 and buf[end - 1] >= 0xC0:  # a lead byte whose continuation is still unread
        end -= 1
    return end or len(buf)


def read_blocks(source: Source, block_bytes: int) -> Iterator[Block]:
    """The file's content in blocks of about ``block_bytes``, read (and decompressed) as they go.

    The buffer grows in place and becomes the block, so a line of many blocks is neither copied
    at each read nor held twice (bytes would be: memory and time would grow with its square)."""
    line, buf, raw_seen = 1, bytearray(), 0
    pending: Block | None = None  # held back one read, to know whether it is the file's last
    try:
        with open(source.path, "rb") as raw:
            stream = _decompressing(raw, source)
            while True:
                chunk = stream.read(block_bytes)
                eof = len(chunk) < block_bytes  # these readers return less only at the end
                pos = raw.tell()
                buf += chunk
                end = len(buf) if eof else _cut(buf, source.jsonl)
                data, buf = buf, buf[end:]
                del data[end:]
                if data:
                    if pending:
                        yield pending
                    newlines = data.count(b"\n")
                    pending, raw_seen = Block(data, line, False, pos - raw_seen, newlines), pos
                    line += newlines
                if eof:
                    if pending:
                        pending.last, pending.raw_bytes = True, pending.raw_bytes + pos - raw_seen
                        yield pending
                    return
    except _decode_errors() as e:
        if not source.compression and isinstance(e, OSError):
            raise HvdlmError(f"cannot read {source.path}: {e.strerror or e}") from e
        raise HvdlmError(f"{source.path}: corrupt or truncated {source.compression} data after line {line - 1} "
                         f"({e}); re-download or re-compress it") from e
