"""`hvdlm prepare` beside nanoGPT's OpenWebText preparation, on corpora of growing size.

Run through benchmarks/prepare.sh. For each size it writes a corpus of JSON Lines files (24 files,
the text of this machine's Python sources and docs, each copy of a document marked so that no two
are the same), then measures, on the same files and cores:
  I/O alone    the reads and writes of a byte preparation without tokenizing (every file read,
               each block written twice into 1 GiB fsynced files), just before and just after:
               what the disk and the page cache allow for that volume at that moment
  hvdlm byte   `hvdlm prepare --tokenizer byte`
  hvdlm bpe    `hvdlm prepare --tokenizer bpe` (sample, train, encode: everything)
  datasets bpe nanoGPT's data/openwebtext/prepare.py: `datasets` load_dataset + map(num_proc) with
               the tokenizer hvdlm trained (the same `tokenizers` BPE), concatenated into a
               np.memmap in 1024 batches
Each command runs under a sampler that sums the resident memory (RSS, and PSS, which counts
pages shared between processes once) of its whole process tree every 0.2 s (peak, and the median
RSS: the steady state, without the brief rise while a multi-MB document passes), and reads each
process's own high-water mark (VmHWM, kept by the kernel: no rise is missed between samples; their
sum bounds the tree's peak from above); its CPU seconds (the whole tree, user + system) say whether
it was bound by the cores or by something else (the disk). Each corpus is flushed to the disk
(sync) once written, so its writeback does not share the disk with what is measured; the disk's
own speed (a 1 GiB fsynced write) is measured then, before each corpus size.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psutil

FILES = 24
VOCAB = 8192


# --- the corpus ---------------------------------------------------------------------------------

def source_texts(limit: int = 400 << 20) -> list[str]:
    """Text found on this machine: Python sources and docs of the interpreter and installed packages."""
    roots = {Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"]), Path("/usr/share/doc")}
    texts, total = [], 0
    for root in sorted(roots):
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                if not name.endswith((".py", ".txt", ".md", ".rst", ".html")):
                    continue
                try:
                    text = Path(dirpath, name).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if len(text) > 200:
                    texts.append(text)
                    total += len(text)
                if total >= limit:
                    return texts
    return texts


def make_corpus(out: Path, size: int, texts: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    per_file, written, i = size // FILES, 0, 0
    for f in range(FILES):
        with open(out / f"part-{f:02d}.jsonl", "w", encoding="utf-8") as fh:
            n = 0
            while n < per_file:
                text = f"# copy {i // len(texts)} of document {i % len(texts)}\n" + texts[i % len(texts)]
                line = json.dumps({"id": i, "text": text}) + "\n"
                fh.write(line)
                n += len(line)
                i += 1
            written += n


# --- measuring -----------------------------------------------------------------------------------

def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd; wall seconds and the peak over time of the summed RSS and PSS of its process tree."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = {"rss": 0, "pss": 0}
    samples: list[int] = []  # the tree's RSS at each sample
    hwm: dict[int, int] = {}  # pid -> its VmHWM, bytes
    roles: dict[int, str] = {}  # pid -> what it is: main, spawned (a worker or the BPE trainer), ...
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            rss = pss = 0
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        m = p.memory_full_info()
                        rss, pss = rss + m.rss, pss + m.pss
                        hwm[p.pid] = max(hwm.get(p.pid, 0), vm_hwm(p.pid))
                        if p.pid not in roles:  # its command line, read once
                            roles[p.pid] = role(p, root)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                        pass
            except psutil.NoSuchProcess:
                break
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            samples.append(rss)
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    output = proc.communicate()[0]
    done.set()
    t.join()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every descendant that was waited for
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    median = sorted(samples)[len(samples) // 2] if samples else 0  # steady state, without brief spikes
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak["rss"], "peak_pss": peak["pss"],
            "median_rss": median, "peak_hwm": sum(hwm.values()), "output": output.strip()[-2000:],
            "processes": [(roles.get(pid, "?"), h) for pid, h in sorted(hwm.items())]}


def role(p: psutil.Process, root: psutil.Process) -> str:
    if p.pid == root.pid:
        return "main"
    cmd = " ".join(p.cmdline())
    return "tracker" if "resource_tracker" in cmd else "spawned" if "multiprocessing" in cmd else p.name()


def vm_hwm(pid: int) -> int:
    """The process's peak resident memory so far, bytes (Linux's VmHWM)."""
    with open(f"/proc/{pid}/status") as fh:  # a process that has exited, not yet reaped, has none: 0
        return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")), 0)


def disk_write_speed(folder: Path, nbytes: int = 1 << 30) -> float:
    """MB/s of a plain sequential write of nbytes, fsynced (what the disk allows)."""
    path = folder / "ddtest"
    block = os.urandom(16 << 20)
    start = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(nbytes // len(block)):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return nbytes / seconds / 1e6


def io_only(corpus: str, out: str, shard_bytes: int = 1 << 30, block: int = 8 << 20) -> None:
    """The same reads and writes as a byte preparation, without tokenizing: every file of the
    corpus read in order and each block written twice (uint16 byte tokens are 2 bytes a byte) into
    1 GiB files, each fsynced as it is closed. What the disk (and page cache) allow for this
    volume, measured in the same state as the run beside it; not a 1 GiB test on an idle disk."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fh, n, written = None, 0, 0
    for path in sorted(Path(corpus).iterdir()):
        with open(path, "rb", buffering=0) as src:
            while data := src.read(block):
                for _ in range(2):
                    if fh is None or written >= shard_bytes:
                        _close_synced(fh)
                        fh, written, n = open(out_dir / f"io-{n:05d}.bin", "wb", buffering=0), 0, n + 1
                    fh.write(data)
                    written += len(data)
    _close_synced(fh)


def _close_synced(fh) -> None:
    if fh is not None:  # unbuffered: nothing to flush
        os.fsync(fh.fileno())
        fh.close()


# --- the baseline: nanoGPT's data/openwebtext/prepare.py, with our tokenizer --------------------

def baseline(files: list[str], tokenizer_json: str, out: str, num_proc: int, cache: str) -> None:
    import numpy as np
    from datasets import load_dataset
    from tokenizers import Tokenizer
    from tqdm import tqdm

    tok = Tokenizer.from_file(tokenizer_json)
    dataset = load_dataset("json", data_files=files, split="train", cache_dir=cache, num_proc=num_proc)

    def process(example):
        ids = tok.encode(example["text"] + "\n\n").ids  # hvdlm's document separator
        return {"ids": ids, "len": len(ids)}

    tokenized = dataset.map(process, remove_columns=["id", "text"], desc="tokenizing", num_proc=num_proc)
    arr_len = int(np.sum(tokenized["len"], dtype=np.uint64))
    arr = np.memmap(out, dtype=np.uint16, mode="w+", shape=(arr_len,))
    total_batches, idx = min(1024, len(tokenized)), 0  # nanoGPT: 1024 (it has 8M documents)
    for batch_idx in tqdm(range(total_batches), desc=f"writing {out}", disable=True):
        batch = tokenized.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
        arr_batch = np.concatenate(batch["ids"])
        arr[idx: idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    print(json.dumps({"tokens": arr_len}))


# --- the driver ----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.6,2.4,6", help="corpus sizes for hvdlm byte, GB (1e9 bytes), comma-separated")
    ap.add_argument("--bpe_sizes", default="0.6,2.4,6", help="corpus sizes for hvdlm bpe beside datasets")
    ap.add_argument("--work", default="/tmp/hvdlm-prepare-bench")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--skip_baseline", action="store_true", help="hvdlm bpe alone, without the datasets run")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--io_only", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--baseline", nargs=4, metavar=("FILES_DIR", "TOKENIZER", "OUT", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.io_only:
        io_only(*args.io_only)
        return
    if args.baseline:
        files_dir, tokenizer_json, out, cache = args.baseline
        baseline(sorted(str(p) for p in Path(files_dir).glob("*.jsonl")), tokenizer_json, out, args.workers, cache)
        return

    hvdlm = str(Path(sys.executable).parent / "hvdlm")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(work / "hf"),
               TOKENIZERS_PARALLELISM="false")
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), "?")
    print(f"CPU: {cpu}; {os.cpu_count()} cores; {args.workers} workers/processes each", flush=True)
    texts = source_texts()
    print(f"source text: {len(texts)} documents, {sum(map(len, texts)) / 1e6:.0f} MB", flush=True)
    rows = []
    byte_sizes = [float(x) for x in args.sizes.split(",") if x]
    bpe_sizes = [float(x) for x in args.bpe_sizes.split(",") if x]
    for size_gb in sorted(set(byte_sizes) | set(bpe_sizes)):
        corpus = work / f"corpus-{size_gb}"
        make_corpus(corpus, int(size_gb * 1e9), texts)
        os.sync()  # the corpus on the disk now, not written back while hvdlm writes
        nbytes = sum(p.stat().st_size for p in corpus.iterdir())
        row = {"size_gb": size_gb, "bytes": nbytes, "load": os.getloadavg(), "disk_write_mb_s": disk_write_speed(work)}
        print(f"{size_gb} GB: disk write {row['disk_write_mb_s']:.0f} MB/s (1 GiB, fsynced)", flush=True)
        for kind in ["byte"] * (size_gb in byte_sizes) + ["bpe"] * (size_gb in bpe_sizes):
            if kind == "byte":  # the same reads and writes without tokenizing, just before
                row["io_only"] = io_row(work, corpus, nbytes, size_gb, "before")
            out = work / f"out-{kind}"
            r = measure([hvdlm, "prepare", str(corpus), "--out_dir", str(out), "--tokenizer", kind,
                         "--vocab_size", str(VOCAB), "--workers", str(args.workers)], env)
            meta = json.loads((out / "meta.json").read_text())
            r["tokens"] = meta["train_tokens"] + meta["val_tokens"]
            r["written"] = r["tokens"] * (2 if meta["dtype"] == "uint16" else 4)
            row[f"hvdlm_{kind}"] = r
            report(f"{size_gb} GB hvdlm {kind}", r, nbytes)
            if kind == "byte":
                subprocess.run(["rm", "-rf", str(out)], check=True)
                row["io_only_after"] = io_row(work, corpus, nbytes, size_gb, "after")
                io_s = (row["io_only"]["seconds"] + row["io_only_after"]["seconds"]) / 2
                print(f"{size_gb} GB hvdlm byte took {r['seconds'] / io_s:.2f}x the time of the same I/O alone "
                      f"(mean of before and after: {io_s:.1f} s)", flush=True)
        if size_gb in bpe_sizes and not args.skip_baseline:
            site = os.environ.get("HVDLM_BENCH_SITE")  # where prepare.sh installed datasets
            base_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")])))
            r = measure([sys.executable, __file__, "--workers", str(args.workers), "--baseline", str(corpus),
                         str(work / "out-bpe" / "tokenizer.json"), str(work / "baseline.bin"), str(work / "hf-cache")],
                        base_env)
            r["tokens"] = json.loads(r["output"].splitlines()[-1])["tokens"]
            r["written"] = r["tokens"] * 2
            row["datasets_bpe"] = r
            report(f"{size_gb} GB datasets bpe", r, nbytes)
            h = row["hvdlm_bpe"]
            print(f"{size_gb} GB ratio hvdlm/datasets (bpe): tokens/s x"
                  f"{(h['tokens'] / h['seconds']) / (r['tokens'] / r['seconds']):.2f}, peak RSS "
                  f"x{h['peak_rss'] / r['peak_rss']:.2f}; tokens {h['tokens']:,} vs {r['tokens']:,}", flush=True)
        subprocess.run(["rm", "-rf", str(corpus), str(work / "out-bpe"), str(work / "baseline.bin"),
                        str(work / "hf-cache")], check=True)
        row["load_after"] = os.getloadavg()
        rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")


def io_row(work: Path, corpus: Path, nbytes: int, size_gb: float, when: str) -> dict:
    out = work / "out-io"
    r = measure([sys.executable, __file__, "--io_only", str(corpus), str(out)])
    subprocess.run(["rm", "-rf", str(out)], check=True)
    r["tokens"], r["written"] = nbytes, 2 * nbytes
    report(f"{size_gb} GB I/O alone ({when})", r, nbytes)
    return r


def report(what: str, r: dict, nbytes: int) -> None:
    print(f"{what}: {r['tokens'] / r['seconds']:,.0f} tokens/s, {nbytes / r['seconds'] / 1e6:.1f} MB/s read, "
          f"{r['written'] / r['seconds'] / 1e6:.0f} MB/s written, peak RSS {r['peak_rss'] / 2**20:.0f} MiB "
          f"(PSS {r['peak_pss'] / 2**20:.0f}; median RSS {r['median_rss'] / 2**20:.0f}; summed VmHWM "
          f"{r['peak_hwm'] / 2**20:.0f}), {r['seconds']:.1f} s, "
          f"CPU {r['cpu_seconds']:.1f} s "
          f"({r['cpu_seconds'] / r['seconds'] / os.cpu_count():.0%} of the cores), load {os.getloadavg()[0]:.1f}",
          flush=True)
    if len(r.get("processes", ())) > 1:  # in start order: spawned BPE trainer, its workers, the encoders
        print("  each process's VmHWM, MiB: " + ", ".join(f"{name} {h / 2**20:.0f}" for name, h in r["processes"]),
              flush=True)

if __name__ == "__main__":
    main()
