"""Inputs -> token shards, streaming: memory stays flat however large the corpus.

The main process reads the inputs a block (about 1 MB, whole lines) at a time and hands the
blocks to worker processes, at most two per worker in flight; each worker decodes its block into
documents, tokenizes them and returns the token ids of the block's train and validation
documents in pieces, which a writer thread of the main process appends, in input order, to the
shards (hashed as written) while the next blocks are read. Byte tokens need no worker processes
on two cores or fewer (see _in_process). Nothing holds more than a few blocks and a long
document's text, so the peak memory does not grow with the corpus.

Documents: a JSONL record, or a text file (a text file larger than a block is cut at line ends
into documents of about a block). Each document is tokenized on its own, followed by DOC_SEP.
Whether a document goes to validation depends only on (seed, its position in the input), never
on the number of workers. The char tokenizer needs one pass to learn its alphabet; BPE learns
from a seeded sample of about ``bpe_sample_bytes`` of documents (one pass, stopped when full), in
a child process that exits before the encoding starts.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sys
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from hvdlm.atomic import write_atomic
from hvdlm.data.corpus import Source, collect_text_files, default_corpus_files, read_blocks
from hvdlm.data.documents import Failed, Task, documents, encode_docs, uniform
from hvdlm.data.glibc import one_malloc_arena, trim_heap
from hvdlm.data.shards import DTYPES, FORMAT, SPLITS, ShardWriter, clear_old_shards, token_dtype
from hvdlm.data.tokenizers import (KINDS, AnyTokenizer, BPETokenizer, pretrained_tokenizer, save_tokenizer,
                                   train_tokenizer)
from hvdlm.errors import HvdlmError

BLOCK_BYTES = 1 << 20  # a task for a worker; also the size of a text file's documents
TASK_BYTES_IN_FLIGHT = 2 * BLOCK_BYTES  # per task in flight (2 per worker), on average at most; see _Workers.map
WRITER_PIECES = 8  # pieces waiting for the writer thread, at most
WRITER_SWITCH_INTERVAL = 2e-4  # seconds: how long the writer thread may wait for the GIL (see _WriteBehind)
BPE_SAMPLE_BYTES = 16 << 20  # the trainer holds several times this (every distinct word): the sample bounds it
SHARD_BYTES = 1 << 30
_COMPRESSED_TEXT_RATIO = 4  # a guess of text bytes per compressed byte, to spread the BPE sample
_SAMPLE_SALT = 0x5A17  # the BPE sample and the validation split are drawn independently



# --- the worker side: module-level, so spawned processes can import it ------------------------------

class _Job:
    """What every task of a pass needs; sent once to each worker."""

    def __init__(self, seed: int, val_fraction: float, tok: AnyTokenizer | None = None,
                 dtype: np.dtype | None = None, sample_p: float = 0.0):
        self.seed, self.val_fraction, self.tok, self.dtype, self.sample_p = seed, val_fraction, tok, dtype, sample_p


_job: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _job
    # each worker is one process on one core; the tokenizers library's own threads would compete
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _job = job


def _encode_task(task: Task):
    """-> (train ids, val ids: lists of pieces, documents), or an error message."""
    if len(task[3]) > 2 * BLOCK_BYTES:
        try:
            return _encode_block(task)
        finally:
            trim_heap()
    return _encode_block(task)


def _encode_block(task: Task):
    found = documents(task)
    if isinstance(found, Failed):
        return found
    docs, units, sep = found
    val = uniform(units, _job.seed) < _job.val_fraction
    try:
        return (encode_docs(_job.tok, [d for d, v in zip(docs, val) if not v], _job.dtype, sep),
                encode_docs(_job.tok, [d for d, v in zip(docs, val) if v], _job.dtype, sep),
                len(docs) if task[1] else int(task[6]))  # a text file is one document, however many blocks
    except HvdlmError as e:
        return Failed(e)


def _chars_task(task: Task):
    """-> the characters of the task's documents (a string), or an error message."""
    found = documents(task)
    return found if isinstance(found, Failed) else "".join(set().union(*found[0], found[2]))


def _sample_task(task: Task):
    """-> the documents of the BPE sample in this task (a list), or an error message."""
    found = documents(task)
    if isinstance(found, Failed):
        return found
    docs, units, sep = found
    take = uniform(units, _job.seed, _SAMPLE_SALT) < _job.sample_p
    return [d + sep for d, t in zip(docs, take) if t]


# --- the main side ---------------------------------------------------------------------------------

class _Workers:
    """Runs a task function over a stream of tasks, results in order, a bounded number in flight:
    two per worker, and no more input bytes than TASK_BYTES_IN_FLIGHT per such place (a task of
    more than that, a JSON line of many MB, runs alone).

    One worker runs in this process; more are spawned (not forked: a fork would copy this
    process's memory and the tokenizers library's threads). A worker that dies (killed, out of
    memory) ends the run with an error instead of leaving it waiting.
    """

    def __init__(self, n: int, job: _Job):
        self.n = n
        if n == 1:
            _init_worker(job)
            self.pool = None
        else:
            self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(job,))

    def map(self, fn: Callable, tasks: Iterable[Task]) -> Iterator:
        if self.pool is None:
            yield from map(fn, tasks)
            return
        pending: deque = deque()  # (future, its task's input bytes), oldest first
        budget = 2 * self.n * TASK_BYTES_IN_FLIGHT
        try:
            for task in tasks:
                size = len(task[3])
                # a long document's task (a JSON line of many MB) waits for the room its bytes need:
                # one larger than the budget runs alone, so two workers never hold one each at once
                # and the peak memory does not grow with the number of such documents a corpus has
                while pending and (len(pending) >= 2 * self.n or sum(n for _, n in pending) + size > budget):
                    yield pending.popleft()[0].result()
                pending.append((self.pool.submit(fn, task), size))
            while pending:
                yield pending.popleft()[0].result()
        except BrokenProcessPool:
            raise HvdlmError("a tokenizer worker process died (killed, or out of memory?); "
                             "run again, with fewer --workers if memory is short") from None

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # after an early stop or an error


def _tasks(sources: list[Source], text_field: str, bar: tqdm) -> Iterator[Task]:
    unit = 0
    for src in sources:
        for block in read_blocks(src, BLOCK_BYTES):
            yield str(src.path), src.jsonl, text_field, block.data, block.first_line, unit, block.last
            unit += 1 if not src.jsonl else block.newlines + (not block.data.endswith(b"\n"))
            bar.update(block.raw_bytes)


def _checked(results: Iterable) -> Iterator:
    for res in results:
        if isinstance(res, Failed):
            raise HvdlmError(res)
        yield res


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def bar(self, desc: str) -> tqdm:
        return tqdm(total=self.total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, mininterval=1.0,
                    disable=not self.enabled, leave=False, dynamic_ncols=True)


def _bpe_sample(sources: list[Source], text_field: str, workers: int, seed: int, sample_bytes: int,
                progress: _Progress) -> list[str]:
    """A seeded sample of about ``sample_bytes`` of the documents (the same for any number of workers)."""
    estimate = sum(s.path.stat().st_size * (_COMPRESSED_TEXT_RATIO if s.compression else 1) for s in sources)
    job = _Job(seed, 0.0, sample_p=min(1.0, sample_bytes / max(estimate, 1)))
    sample, taken = [], 0
    with _Workers(workers, job) as w, progress.bar("BPE sample") as bar:
        for docs in _checked(w.map(_sample_task, _tasks(sources, text_field, bar))):
            sample += docs
            taken += sum(map(len, docs))
            if taken >= sample_bytes:
                break
    while sample and taken - len(sample[-1]) >= sample_bytes:
        taken -= len(sample.pop())
    return sample


def _learn_bpe(vocab_size: int, sources: list[Source], text_field: str, workers: int, seed: int, sample_bytes: int,
               progress: _Progress) -> str:
    """Run in a child process: the sample pass (its workers gone before training starts) and the
    training; -> the tokenizer as JSON."""
    sample = _bpe_sample(sources, text_field, workers, seed, sample_bytes, progress)
    return train_tokenizer("bpe", sample, vocab_size).tk.to_str()


def _learn_tokenizer(kind: str, vocab_size: int, sources: list[Source], text_field: str, workers: int, seed: int,
                     sample_bytes: int, progress: _Progress) -> AnyTokenizer:
    if kind == "byte":
        return train_tokenizer("byte", [])
    if kind == "char":  # the whole alphabet, or some character would have no id
        with _Workers(workers, _Job(seed, 0.0)) as w, progress.bar("char alphabet") as bar:
            return train_tokenizer("char", _checked(w.map(_chars_task, _tasks(sources, text_field, bar))))
    # BPE learns in a child process that exits before the encoding starts: the trainer's memory
    # (every distinct word of the sample) is given back, not kept by this process's allocator
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        try:
            learned = child.submit(_learn_bpe, vocab_size, sources, text_field, workers, seed, sample_bytes,
                                   progress).result()
        except BrokenProcessPool:
            raise HvdlmError("the BPE training process died (killed, or out of memory?); run again, with a smaller "
                             "--bpe_sample_bytes or fewer --workers if memory is short") from None
    return BPETokenizer(Tokenizer.from_str(learned))


class _WriteBehind:
    """Widens, hashes and writes the pieces in a thread of its own, in order, while this thread
    reads and encodes the next blocks: sha256, file writes and waiting for the disk release the
    GIL. At most WRITER_PIECES pieces wait in between. An error in the thread (a full disk) is
    raised here, at the next put or at the end.

    Each of those calls gives the GIL up, and the writer then waits to get it back until this
    thread, parsing, reaches the interpreter's switch interval (5 ms by default): the writer spent
    much of the run waiting for the GIL. While it runs, the interval is WRITER_SWITCH_INTERVAL,
    which was faster in interleaved runs (benchmarks/RESULTS.md, data preparation, run 5)."""

    def __init__(self, writers: dict[str, ShardWriter]):
        self.writers, self.error = writers, None
        self.interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self.interval, WRITER_SWITCH_INTERVAL))
        self.queue: queue.Queue = queue.Queue(WRITER_PIECES)
        self.thread = threading.Thread(target=self._run, name="hvdlm-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error, only drain: a put must never wait forever
                try:
                    self.writers[item[0]].write(item[1])
                except BaseException as e:  # noqa: BLE001 - raised again in the main thread
                    self.error = e

    def put(self, split: str, pieces: list[np.ndarray]) -> None:
        for piece in pieces:
            if self.error is not None:
                raise self.error
            self.queue.put((split, piece))

    def __enter__(self) -> "_WriteBehind":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.queue.put(None)
        self.thread.join()
        sys.setswitchinterval(self.interval)
        if exc_type is None and self.error is not None:
            raise self.error


def _in_process(kind: str, workers: int) -> bool:
    """Byte tokens with two workers or fewer are made in this process: their only work is parsing
    (fast: a few hundred MB/s a core), and sending each block to a worker and its
    ids back costs this process about as much as the parse it would give away, on cores the
    workers would share with it and the writer thread (benchmarks/RESULTS.md, run 4)."""
    return (kind == "byte" and workers <= 2) or kind == "tiktoken"  # tiktoken's encoder stays in its process


def _give_val_a_tail(writers: dict[str, ShardWriter], val_fraction: float) -> None:
    """A corpus of few documents may put them all in one split: then validation takes the last
    ``val_fraction`` of the tokens (at least one) and training the rest."""
    if writers["train"].tokens == 0:
        writers["train"], writers["val"] = writers["val"], writers["train"]
        writers["train"].split, writers["val"].split = "train", "val"
    if writers["val"].tokens:
        return
    n = writers["train"].tokens
    tail = writers["train"].take_tail(min(max(int(n * val_fraction), 1), n - 1))
    if tail is None:
        raise HvdlmError(f"no document was drawn for validation (val_fraction {val_fraction}); "
                         "raise --val_fraction or give more documents")
    writers["val"].write(tail)


def prepare(
    inputs: list[str | Path] | None,
    out_dir: str | Path,
    tokenizer: str = "byte",
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    workers: int | None = None,
    seed: int = 1337,
    text_field: str = "text",
    bpe_sample_bytes: int = BPE_SAMPLE_BYTES,
    shard_bytes: int = SHARD_BYTES,
    progress: bool = False,
) -> dict:
    """Tokenize the inputs (default: the stdlib corpus) into out_dir; returns the meta.json dict."""
    # check everything cheap before the slow part
    given = None if tokenizer in KINDS else pretrained_tokenizer(tokenizer)  # a model's, or one error line
    if not 0 < val_fraction < 1:
        raise HvdlmError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers < 1:
        raise HvdlmError(f"workers must be at least 1, got {workers}")
    if bpe_sample_bytes < 1 or shard_bytes < 4:
        raise HvdlmError("bpe_sample_bytes and shard_bytes must be positive")
    one_malloc_arena()  # before the pools and the writer start their threads
    files = collect_text_files(inputs) if inputs else default_corpus_files()
    sources = [Source.of(p) for p in files]
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HvdlmError(f"cannot create output dir {out}: {e.strerror or e}; choose another directory") from e
    if not os.access(out, os.W_OK):
        raise HvdlmError(f"output dir {out} is not writable; choose another directory")
    n_bytes = sum(p.stat().st_size for p in files)
    bars = _Progress(progress, n_bytes)

    tok = given or _learn_tokenizer(tokenizer, vocab_size, sources, text_field, workers, seed, bpe_sample_bytes, bars)
    dtype_name = token_dtype(tok.vocab_size)
    dtype = DTYPES[dtype_name]

    # an old meta.json would vouch for the shards being replaced below; remove it first
    (out / "meta.json").unlink(missing_ok=True)
    clear_old_shards(out)
    writers = {s: ShardWriter(out, s, dtype, max(shard_bytes // dtype.itemsize, 1)) for s in SPLITS}
    n_docs = 0
    encoders = 1 if _in_process(tok.kind, workers) else workers  # 1: in this process
    try:
        with (_Workers(encoders, _Job(seed, val_fraction, tok, dtype)) as w,
              bars.bar("tokenizing") as bar, _WriteBehind(writers) as writer):
            results = _checked(w.map(_encode_task, _tasks(sources, text_field, bar)))
            for i, (train_ids, val_ids, docs) in enumerate(results):
                writer.put("train", train_ids)
                writer.put("val", val_ids)
                n_docs += docs
                if i % 64 == 63:
                    trim_heap()
        n = writers["train"].tokens + writers["val"].tokens
        if n == 0:
            raise HvdlmError(f"corpus is empty: {len(files)} file(s) with {n_bytes} bytes in total; "
                             "give files that contain text")
        if n < 2:
            raise HvdlmError(f"corpus is too small: {n} token; need at least 2 (one for train, one for val)")
        _give_val_a_tail(writers, val_fraction)
        shards = {s: w.finish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    save_tokenizer(tok, out)
    meta = {
        "format": FORMAT,
        "tokenizer": tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": dtype_name,
        "train_tokens": sum(e["tokens"] for e in shards["train"]),
        "val_tokens": sum(e["tokens"] for e in shards["val"]),
        "shards": shards,
        "sources": {"files": len(files), "bytes": n_bytes, "documents": n_docs},
        "seed": seed,
        "val_fraction": val_fraction,
    }
    write_atomic(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    return meta
