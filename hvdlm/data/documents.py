"""Documents and their token ids, as each worker of ``hvdlm prepare`` makes them from one block of
input: a JSONL record or a piece of a text file is a document; whether it goes to validation is
drawn from (seed, its position in the input); each is encoded on its own, followed by the separator
(the tokenizer's end-of-text token where it has one), in pieces the writer thread takes."""

from __future__ import annotations

import itertools
import json
import re
from typing import Iterable, Iterator

import numpy as np

from hvdlm.data.tokenizers import AnyTokenizer

try:  # faster than json on long strings (RESULTS: data preparation); json.loads is the reference (_record)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency, but prepare works without it
    def _fast_loads(line: memoryview):
        return json.loads(bytes(line))

DOC_SEP = "\n\n"
PIECE_CHARS = 1 << 18  # byte tokens go to the writer in pieces of about this many characters

# A task: (path, jsonl, text_field, data, first_line, first_unit, last). Units number the documents
# of the whole input (text: one per block; JSONL: one per line) and decide the split.
Task = tuple


class Failed(str):
    """A worker's error message (a plain str is a result of _chars_task)."""


def uniform(units: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """A number in [0, 1) per unit, fixed by (seed, salt, unit): the splitmix64 hash, vectorized."""
    with np.errstate(over="ignore"):
        z = units.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % 2 ** 64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def _record(line: memoryview, field: str):
    """The line's JSON value. orjson is faster but stricter (NaN, lone surrogates, a BOM) and reads
    huge integers as floats: unless it finds a record with a string in ``field``, the line is
    parsed again by json.loads, whose results and messages are the reference."""
    try:
        record = _fast_loads(line)
        if isinstance(record, dict) and isinstance(record.get(field), str):
            return record
    except ValueError:
        pass
    record = json.loads(bytes(line))
    if isinstance(record, dict) and isinstance(record.get(field), str):
        # json.loads accepts a lone UTF-16 surrogate ("\ud800"), which no encoder can write:
        # UnicodeEncodeError, a ValueError, becomes the caller's one line naming the file and line
        record[field].encode("utf-8")
    return record


_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*")  # what bytes.strip() removes


def documents(task: Task) -> tuple[list[str], np.ndarray, str] | Failed:
    """The task's documents, their unit numbers and what follows each of them (DOC_SEP; nothing
    after a block of a text file that is not its last), or an error message."""
    path, jsonl, field, data, first_line, first_unit, last = task
    if not jsonl:
        return [data.decode("utf-8", errors="replace")], np.array([first_unit]), DOC_SEP if last else ""
    docs, units = [], []
    view = memoryview(data)  # lines are parsed from views: a block's lines are not copied
    start, i = 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if not _BLANK.fullmatch(data, start, end):  # blank lines (a trailing newline, padding) are not records
            try:
                record = _record(view[start:end], field)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                return Failed(f"{path}, line {first_line + i}: not a valid JSON line ({e}); fix or remove that line")
            if not isinstance(record, dict) or field not in record:
                return Failed(f"{path}, line {first_line + i}: the record has no {field!r} field; "
                               "name the text field with --text_field")
            text = record[field]
            if not isinstance(text, str):
                return Failed(f"{path}, line {first_line + i}: the {field!r} field is {type(text).__name__}, "
                               "not a string")
            docs.append(text)
            units.append(first_unit + i)
        start, i = end + 1, i + 1
    return docs, np.array(units, dtype=np.int64), DOC_SEP


# Where a long document may be cut for BPE without changing its tokens: between a non-space
# character and a space, tab, CR or newline. The byte-level pre-tokenizer's pattern never puts
# a non-space and the whitespace after it in one word (a word is an optional space and then
# letters, digits or other symbols, or a run of whitespace), and BPE merges never cross words, so
# the pieces encode to exactly the document's tokens. (Python's \S is narrower than the pattern's:
# it also calls U+001C-U+001F space; the right side is four characters that are spaces to both.)
_SAFE_CUT = re.compile(r"\S(?=[ \t\r\n])")
BPE_PIECE_CHARS = 1 << 16  # an encoding holds tens of bytes per character while it is made


def _bpe_pieces(docs: Iterable[str], sep: str) -> Iterator[str]:
    """Each document followed by ``sep``, a long one in pieces of BPE_PIECE_CHARS or more cut where
    its tokens do not change. Only a document's last piece is copied to add ``sep``: a document of
    8 M characters is not held twice (as UCS-4, 32 MiB each)."""
    for doc in docs:
        start = 0
        while len(doc) - start > 2 * BPE_PIECE_CHARS:
            cut = _SAFE_CUT.search(doc, start + BPE_PIECE_CHARS)
            if cut is None:
                break  # no safe place left: the rest in one piece
            yield doc[start:cut.end()]
            start = cut.end()
        yield doc[start:] + sep


def _byte_pieces(docs: list[str], sep: str) -> Iterator[str]:
    """The documents, each followed by ``sep``, as strings of PIECE_CHARS to 2 * PIECE_CHARS
    characters (the last one shorter): short documents joined, long ones sliced. A slice of a
    str falls between two characters and UTF-8 encodes each character on its own, so the
    pieces' bytes are the documents' bytes, and the memory for a document of many MB is bounded."""
    batch, size = [], 0
    for doc in docs:
        slices = (doc[i:i + PIECE_CHARS] for i in range(0, len(doc), PIECE_CHARS))  # a short document: itself
        for part in itertools.chain(slices, [sep]):
            batch.append(part)
            size += len(part)
            if size >= PIECE_CHARS:
                yield "".join(batch)
                batch, size = [], 0
    if size:
        yield "".join(batch)


def encode_docs(tok: AnyTokenizer, docs: list[str], dtype: np.dtype, sep: str = DOC_SEP) -> list[np.ndarray]:
    """The token ids of ``docs``, each followed by ``sep`` and encoded on its own, in pieces
    that concatenate to them (byte ids: always uint8, half the bytes to send back; the shard
    writer widens them to ``dtype``). A model's tokenizer puts its end-of-text token there instead."""
    if sep and tok.separator:  # as GPT-2 was trained: documents apart by <|endoftext|>
        sep = tok.separator
    if tok.kind == "tiktoken":  # the separator is a token, not text tiktoken would encode
        ids = (tok.encode(d) + [tok.end_of_text] * bool(sep) for d in docs)
        return [np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype)] if docs else []
    if tok.kind == "byte":  # bytes are the ids: no Python loop
        return [np.frombuffer(piece.encode("utf-8"), dtype=np.uint8) for piece in _byte_pieces(docs, sep)]
    if not docs:
        return []
    if tok.kind == "char":
        ids = (tok.encode(part) for d in docs for part in (d, sep))  # per character: no copy of d + sep
        return [np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype)]
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets: faster, less memory
    encode = getattr(tok.tk, "encode_batch_fast", tok.tk.encode_batch)
    parts, batch, size = [], [], 0
    for piece in itertools.chain(_bpe_pieces(docs, sep), [None]):
        if piece is None or size >= BPE_PIECE_CHARS:  # encode a batch of about one piece
            parts.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encode(batch)), dtype=dtype))
            batch, size = [], 0
        if piece is not None:
            batch.append(piece)
            size += len(piece)
    return parts
