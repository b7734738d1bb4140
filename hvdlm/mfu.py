"""Model FLOPs utilization: how close training runs to the hardware's limit.

MFU = training FLOPs per token x tokens/s / peak FLOP/s of the devices the run uses. FLOPs per
token follow the PaLM paper's appendix B: 6N (forward and backward through the N weights) plus
12 x layers x width x context for attention's score and value matmuls. The peak:

* on GPUs, the vendor's dense figure for the device's name and the run's precision (``GPU_PEAKS``;
  fp32 counts TF32 tensor cores only where torch allows TF32 matmuls);
* on CPUs there is no reliable table, so each rank measures a square matmul with its own threads
  at start-up (fp32, or bf16 when the run trains in bf16) and caches the figure per host in
  ``~/.cache/hvdlm/cpu-peak-<host>.json`` (``$HVDLM_CACHE``; delete it to measure again). The MFU is then "x% of this CPU's measured matmul peak":
  a ceiling torch can reach here, not the vendor's theoretical one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Dense (no sparsity) peak TFLOP/s by device-name fragment, first match wins: bf16, fp32 without
# tensor cores, tf32. From NVIDIA's data sheets (SXM parts unless the name says otherwise).
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp32": 67.0, "tf32": 494.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0, "tf32": 378.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0, "tf32": 494.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5, "tf32": 156.0}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6, "tf32": 183.0}),
    ("L4", {"bf16": 121.0, "fp32": 30.3, "tf32": 60.0}),
    ("A10", {"bf16": 125.0, "fp32": 31.2, "tf32": 62.5}),
    ("V100", {"fp32": 15.7}),
]


def flops_per_token(shape: dict) -> int:
    """Training FLOPs per token of hvdlm's GPT with this ``model_shape`` (PaLM appendix B):
    6N + 12 * n_layer * n_embd * block_size, N = the weights every token multiplies through
    (the tied embedding counts once, as the output head; position embeddings are a lookup)."""
    c, layers, vocab = shape["n_embd"], shape["n_layer"], shape["vocab_size"]
    bias = bool(shape.get("bias"))
    per_layer = 12 * c * c + 2 * c  # qkv 3C^2, proj C^2, MLP 8C^2; two LayerNorm weights
    if bias:
        per_layer += 3 * c + c + 4 * c + c + 2 * c  # qkv, proj, fc, proj biases; LayerNorm biases
    n = layers * per_layer + c * (2 if bias else 1) + vocab * c  # final LayerNorm, tied head
    return 6 * n + 12 * layers * c * shape["block_size"]


def gpu_peak(name: str, precision: str, allow_tf32: bool = False) -> float | None:
    """Peak FLOP/s of a GPU by name, or None when the table does not know it."""
    key = "bf16" if precision == "bf16" else ("tf32" if allow_tf32 else "fp32")
    for fragment, peaks in GPU_PEAKS:
        if fragment.lower() in name.lower():
            return peaks[key] * 1e12 if key in peaks else None
    return None


MATMUL_N = 384  # fits the caches, so it times the vector units; 1024 was bound by memory at 1 thread


def measure_cpu_peak(dtype: torch.dtype, seconds: float = 0.5, n: int = MATMUL_N) -> float:
    """Best FLOP/s of an n x n matmul with the current torch threads, over about ``seconds``.
    Each matmul takes well under a millisecond, so on a machine shared with other jobs some of
    the thousand or so tries run while this process has its cores: the best of them is the peak."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm up: thread pool, kernel selection
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return 2 * n ** 3 / best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("HVDLM_CACHE", Path.home() / ".cache" / "hvdlm"))


def cpu_peak(precision: str, threads: int, cache: Path | None = None) -> float:
    """This host's measured matmul peak for one rank's ``threads``, cached per host. Ranks on one
    host take turns (a lock beside the cache): the first measures on cores no other rank is
    measuring on, the others read its figure, so every rank of a host has the same one (and
    ``--precision auto`` makes the same choice on each)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    path = (cache or cache_dir()) / f"cpu-peak-{socket.gethostname()}.json"
    key = f"{cpu_model()}|torch {torch.__version__}|{str(dtype).split('.')[-1]}|{threads} threads|mm{MATMUL_N}"
    with _host_lock(path):
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if key in known:
            return float(known[key])
        flops = _measure_with_threads(dtype, threads)
        try:  # a whole file, renamed: a reader never sees half of one
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**known, key: flops}, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # no cache: measured again next time
        return flops


@contextlib.contextmanager
def _host_lock(path: Path):
    """An exclusive lock on ``path``'s lock file while it is held (none where it cannot be made:
    then ranks may measure at once, as they did before the lock)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_suffix(".lock"), "a")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _measure_with_threads(dtype: torch.dtype, threads: int) -> float:
    """The matmul peak with ``threads`` threads. Several threads only run at full speed while all
    of them have a core, which a busy machine may deny them for a whole measurement: measure again
    (at most three times) until they reach 80% of ``threads`` x one thread's figure, and never
    report less than one thread's."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = measure_cpu_peak(dtype, seconds=0.2)
        if threads <= 1:
            return single
        torch.set_num_threads(threads)
        best = 0.0
        for _ in range(3):
            best = max(best, measure_cpu_peak(dtype, seconds=0.3))
            if best >= 0.8 * threads * single:
                break
        return max(best, single)
    finally:
        torch.set_num_threads(before)


@dataclass
class MFU:
    """Call with a run's tokens/s (all ranks) to get its MFU as a fraction (0.31 = 31%)."""
    flops_per_token: int
    peak_per_rank: float  # FLOP/s
    ranks: int
    against: str  # what the peak is, for people: "this CPU's measured matmul peak"
    detail: str  # how it was had: "fp32, 2 thread(s) per rank"

    def __call__(self, tokens_per_s: float) -> float:
        return self.flops_per_token * tokens_per_s / (self.peak_per_rank * self.ranks)

    def describe(self) -> str:
        return (f"MFU is against {self.against}: {self.peak_per_rank / 1e9:,.0f} GFLOP/s per rank ({self.detail}); "
                f"the model needs {self.flops_per_token / 1e6:.2f} MFLOPs per token trained")


def for_run(shape: dict, device: torch.device, precision: str, threads: int, ranks: int) -> MFU | None:
    """The MFU of this run's model on this run's devices; None on a GPU the table lacks."""
    fpt = flops_per_token(shape)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        peak = gpu_peak(name, precision, tf32)
        if peak is None:
            return None
        kind = "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")
        return MFU(fpt, peak, ranks, f"the {name}'s dense {kind} peak", "vendor data sheet")
    dtype = "bf16" if precision == "bf16" else "fp32"
    return MFU(fpt, cpu_peak(precision, threads), ranks, "this CPU's measured matmul peak",
               f"{dtype}, {threads} thread(s) per rank, cached in {cache_dir()}")
