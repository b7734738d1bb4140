"""Model FLOPs utilization: how close training runs to the hardware's limit.

MFU = training FLOPs per token x tokens/s / peak FLOP/s of the devices the run uses. FLOPs per
token follow the PaLM paper's appendix B: 6N (forward and backward through the N weights) plus
12 x layers x width x context for attention's score and value matmuls. The peak:

* on GPUs, NVIDIA's dense figure for the device's name and the run's precision (``GPU_PEAKS``;
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

from hvdlm.model import padded_vocab


@dataclass(frozen=True)
class GPU:
    """One NVIDIA part's data-sheet figures: dense (no sparsity) peak TFLOP/s and memory bandwidth."""
    name: str  # as NVIDIA writes it; what `hvdlm plan --gpu` takes
    bf16: float | None  # tensor cores; None: it has no bf16
    fp32: float  # without tensor cores
    tf32: float | None
    memory: float  # bytes/s of its HBM (GDDR6 on L4, L40, L40S, A10)
    aliases: tuple[str, ...] = ()  # the short name people mean by it

    @property
    def key(self) -> tuple[str, str]:
        """(model, form) as a device name shows it: ('H100', 'NVL'); SXM is the unmarked form."""
        words = _words(self.name)
        return words[0], next((w for w in words if w in _FORMS), "")

    def peak(self, precision: str, allow_tf32: bool = False) -> float | None:
        """FLOP/s at ``precision``: bf16, or fp32 on TF32 tensor cores where torch allows them."""
        tflops = self.bf16 if precision == "bf16" else (self.tf32 if allow_tf32 else self.fp32)
        return None if tflops is None else tflops * 1e12


# NVIDIA's data sheets give tensor-core figures "with sparsity"; the dense peak a GPT's matmuls can
# reach is half of it. H100/H200 SXM keep 989 and 494 (half of 1,979 and 989, rounded down as
# they always were here, so the recorded plan tables reproduce). A100 and H100 PCIe: the 80 GB
# parts (the 40 GB A100s have 1.555 TB/s: give `--mem_bw`). Sources:
#   H100 SXM, H100 NVL   nvidia.com/en-us/data-center/h100 (data sheet table)
#   H100 PCIe            H100 PCIe product brief PB-11133-001 (2022): 756/1,513* TFLOPS, 2,000 GB/s
#   H200 SXM, H200 NVL   nvidia.com/en-us/data-center/h200
#   B200                 nvidia.com/en-us/data-center/hgx (HGX B200, per GPU, 1,000 W): TF32 2.2*,
#                        BF16 4.5* PFLOPS, FP32 75 TFLOPS, 180 GB HBM3e at 7.7 TB/s
#   A100 SXM, A100 PCIe  NVIDIA A100 data sheet (80 GB: 2,039 and 1,935 GB/s)
#   L40S, L40, L4, A10   their data sheets (L40: BF16 181.05 / 362.1*, TF32 90.5 / 181*)
#   V100 SXM2, V100 PCIe NVIDIA V100 data sheet (no bf16: fp32 only)
GPU_PEAKS: tuple[GPU, ...] = (
    GPU("H100 SXM", bf16=989.0, fp32=67.0, tf32=494.0, memory=3.35e12, aliases=("H100",)),
    GPU("H100 PCIe", bf16=756.0, fp32=51.0, tf32=378.0, memory=2.0e12),
    GPU("H100 NVL", bf16=835.5, fp32=60.0, tf32=417.5, memory=3.9e12),
    GPU("H200 SXM", bf16=989.0, fp32=67.0, tf32=494.0, memory=4.8e12, aliases=("H200",)),
    GPU("H200 NVL", bf16=835.5, fp32=60.0, tf32=417.5, memory=4.8e12),
    GPU("B200", bf16=2250.0, fp32=75.0, tf32=1100.0, memory=7.7e12),
    GPU("A100 SXM", bf16=312.0, fp32=19.5, tf32=156.0, memory=2.039e12, aliases=("A100",)),
    GPU("A100 PCIe", bf16=312.0, fp32=19.5, tf32=156.0, memory=1.935e12),
    GPU("L40S", bf16=362.05, fp32=91.6, tf32=183.0, memory=0.864e12),
    GPU("L40", bf16=181.05, fp32=90.5, tf32=90.5, memory=0.864e12),
    GPU("L4", bf16=121.0, fp32=30.3, tf32=60.0, memory=0.3e12),
    GPU("A10", bf16=125.0, fp32=31.2, tf32=62.5, memory=0.6e12),
    GPU("V100 SXM2", bf16=None, fp32=15.7, tf32=None, memory=0.9e12, aliases=("V100",)),
    GPU("V100 PCIe", bf16=None, fp32=14.0, tf32=None, memory=0.9e12),
)
_FORMS = ("PCIE", "NVL")  # the forms a device name spells out; no mark is the SXM module


def _words(name: str) -> list[str]:
    """'NVIDIA A100-SXM4-80GB' -> ['NVIDIA', 'A100', 'SXM4', '80GB']: case, hyphens and
    underscores do not matter, in names people type or devices report."""
    return name.upper().replace("-", " ").replace("_", " ").split()


def gpu_named(text: str) -> GPU | None:
    """The GPU a person names (``--gpu``): its name or alias exactly, up to case and separators
    ('h100-nvl' is the H100 NVL); never a part of a name, so 'L40' is not the L4, nor 'H100 NVL'
    the H100 SXM."""
    wanted = _words(text)
    return next((g for g in GPU_PEAKS if wanted in [_words(n) for n in (g.name, *g.aliases)]), None)


def gpu_names() -> str:
    """'H100 SXM (or H100), H100 PCIe, ...': what ``gpu_named`` knows, for messages and --help."""
    return ", ".join(g.name + (f" (or {', '.join(g.aliases)})" if g.aliases else "") for g in GPU_PEAKS)


def gpu_of_device(device_name: str) -> GPU | None:
    """The GPU torch reports by this name ('NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-40GB',
    'NVIDIA A100 80GB PCIe'): its model word and its form (PCIe, NVL; none is SXM), whatever
    the memory size and other words around them. A model the table lacks ('A10G', 'GH200') is
    None: no MFU rather than another part's peak."""
    words = _words(device_name)
    form = next((w for w in words if w in _FORMS), "")
    return next((g for g in GPU_PEAKS if g.key[0] in words and g.key[1] == form), None)


def flops_per_token(shape: dict) -> int:
    """Training FLOPs per token of hvdlm's GPT with this ``model_shape`` (PaLM appendix B):
    6N + 12 * n_layer * n_embd * block_size, N = the weights every token multiplies through
    (the tied embedding counts once, as the output head, with the padding rows its matmul
    multiplies through too; position embeddings are a lookup)."""
    c, layers, vocab = shape["n_embd"], shape["n_layer"], padded_vocab(shape)
    bias = bool(shape.get("bias"))
    per_layer = 12 * c * c + 2 * c  # qkv 3C^2, proj C^2, MLP 8C^2; two LayerNorm weights
    if bias:
        per_layer += 3 * c + c + 4 * c + c + 2 * c  # qkv, proj, fc, proj biases; LayerNorm biases
    n = layers * per_layer + c * (2 if bias else 1) + vocab * c  # final LayerNorm, tied head
    return 6 * n + 12 * layers * c * shape["block_size"]


def gpu_peak(device_name: str, precision: str, allow_tf32: bool = False) -> float | None:
    """Peak FLOP/s of the GPU torch reports by this name, or None when the table does not know it."""
    gpu = gpu_of_device(device_name)
    return None if gpu is None else gpu.peak(precision, allow_tf32)


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


# The instruction sets a matmul's speed turns on. Part of the cache's key beside the model name:
# virtual machines may report only "AMD EPYC" for CPUs with and without native bf16 (a 1.5x
# apart in fp32 and 100x in bf16), and a stale figure would make --precision auto choose wrong.
MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's name and its matmul instruction sets: 'AMD EPYC (avx2 avx512f avx512_bf16)'
    (``cpuinfo``: /proc/cpuinfo's text, read when not given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    name, flags = "", set()
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and not name:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    name = name or platform.processor() or platform.machine()
    have = [f for f in MATMUL_FLAGS if f in flags]
    return f"{name} ({' '.join(have)})" if have else name


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
