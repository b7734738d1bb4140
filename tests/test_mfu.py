"""MFU: FLOPs per token from the model's shape, the peak it is measured against, the ratio."""

from __future__ import annotations

import json

import pytest
import torch

from hvdlm import mfu
from hvdlm.model import GPT, GPTConfig


@pytest.mark.parametrize("bias, vocab_multiple", [(False, 1), (True, 1), (False, 64)])  # 64: 320 rows, all multiplied
def test_flops_per_token_is_6n_plus_attention_with_n_counted_from_the_model(bias, vocab_multiple):
    shape = dict(vocab_size=300, block_size=64, n_layer=3, n_head=4, n_embd=48, bias=bias,
                 vocab_multiple=vocab_multiple)
    model = GPT(GPTConfig(**shape))
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()  # the tied head once
    assert mfu.flops_per_token(shape) == 6 * n + 12 * 3 * 48 * 64


def test_gpu_peak_by_name_and_precision():
    assert mfu.gpu_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert mfu.gpu_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert mfu.gpu_peak("NVIDIA A100-SXM4-40GB", "fp32") == 19.5e12
    assert mfu.gpu_peak("NVIDIA A100-SXM4-40GB", "fp32", allow_tf32=True) == 156e12
    assert mfu.gpu_peak("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 there
    assert mfu.gpu_peak("Some Future GPU", "bf16") is None
    # a device's model word and form, not a fragment: the L40 is not the L4, the NVL not the SXM
    assert mfu.gpu_peak("NVIDIA L40", "bf16") == 181.05e12 and mfu.gpu_peak("NVIDIA L4", "bf16") == 121e12
    assert mfu.gpu_peak("NVIDIA H100 NVL", "bf16") == 835.5e12
    assert mfu.gpu_peak("NVIDIA A10G", "bf16") is None  # AWS's A10G is not the A10


def test_every_gpu_is_found_by_its_name_and_aliases_and_as_a_device():
    """No entry hides another: each is what its own name, its aliases and a device named after it give."""
    for g in mfu.GPU_PEAKS:
        assert mfu.gpu_named(g.name.lower().replace(" ", "-")) is g
        assert all(mfu.gpu_named(alias) is g for alias in g.aliases)
        assert mfu.gpu_of_device(f"NVIDIA {g.name}") is g
    assert mfu.gpu_named("H100NVL") is None and mfu.gpu_named("L40X") is None


def test_cpu_peak_is_measured_once_per_host_and_threads_then_read_from_the_cache(tmp_path, monkeypatch):
    measured = []
    real = mfu.measure_cpu_peak
    monkeypatch.setattr(mfu, "measure_cpu_peak",
                        lambda dtype, seconds: measured.append(dtype) or real(dtype, seconds=0.05, n=256))
    first = mfu.cpu_peak("fp32", 1, cache=tmp_path)
    again = mfu.cpu_peak("fp32", 1, cache=tmp_path)
    other = mfu.cpu_peak("bf16", 1, cache=tmp_path)
    assert first == again > 1e8  # any CPU does 0.1 GFLOP/s
    assert measured == [torch.float32, torch.bfloat16]
    (cached,) = tmp_path.glob("cpu-peak-*.json")
    assert len(json.loads(cached.read_text())) == 2


def test_cpus_of_one_name_with_and_without_native_bf16_are_cached_apart():
    # two machines that both call themselves "AMD EPYC": an AVX2-only one and a Zen 4 with AVX-512 bf16
    avx2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
    zen4 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni\n"
    assert mfu.cpu_model(avx2) == "AMD EPYC (avx2)"
    assert mfu.cpu_model(zen4) == "AMD EPYC (avx2 avx512f avx512_bf16)"
    assert mfu.cpu_model("model name : Some CPU\n") == "Some CPU"


def test_mfu_is_flops_times_tokens_over_the_peak_of_all_ranks():
    m = mfu.MFU(flops_per_token=1_000_000, peak_per_rank=1e11, ranks=2, against="x", detail="y")
    assert m(50_000) == pytest.approx(0.25)  # 5e10 FLOP/s of 2e11


def test_for_run_on_cpu_says_what_the_peak_is(tmp_path, monkeypatch):
    monkeypatch.setenv("HVDLM_CACHE", str(tmp_path))
    monkeypatch.setattr(mfu, "measure_cpu_peak", lambda dtype, seconds: 2e10)
    shape = dict(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)
    m = mfu.for_run(shape, torch.device("cpu"), "fp32", 1, 1)
    assert m.peak_per_rank == 2e10
    assert "this CPU's measured matmul peak" in m.describe() and "fp32, 1 thread(s)" in m.describe()


def test_several_threads_are_measured_again_when_the_machine_denied_them_their_cores(monkeypatch):
    figures = iter([1e10, 3e9, 1.9e10])  # one thread; two threads starved; two threads running
    monkeypatch.setattr(mfu, "measure_cpu_peak", lambda dtype, seconds: next(figures))
    assert mfu._measure_with_threads(torch.float32, 2) == 1.9e10
    figures = iter([1e10, 3e9, 4e9, 5e9])  # starved every time: at least one thread's figure
    assert mfu._measure_with_threads(torch.float32, 2) == 1e10


def test_ranks_of_one_host_measure_one_at_a_time_and_read_one_figure(tmp_path):
    """Four processes ask for the same peak at once: one measures, the others wait on the lock and
    read its figure (measuring at once, they would compete for the cores and disagree)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        figures = pool.starmap(_peak_in_a_process, [(str(tmp_path),)] * 4)
    assert len(set(figures)) == 1, figures
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") and len(list(tmp_path.glob("*.tmp"))) == 0


def _peak_in_a_process(cache: str) -> float:
    from pathlib import Path

    return mfu.cpu_peak("fp32", 1, cache=Path(cache))


@pytest.mark.parametrize("ratio, width, device, want", [
    (3.0, 384, "cpu", "bf16"),   # native bf16 (AMX, AVX-512 BF16) and a model wide enough
    (3.0, 128, "cpu", "fp32"),   # tiny: the casts cost more than the matmuls save
    (0.4, 768, "cpu", "fp32"),   # AVX2 only: bf16 converted in software
])
def test_precision_auto_follows_this_cpus_measured_bf16_and_the_models_width(ratio, width, device, want, monkeypatch):
    from hvdlm import precision

    monkeypatch.setattr(precision, "cpu_peak", lambda p, threads: 1e11 * (ratio if p == "bf16" else 1.0))
    chosen, why = precision.resolve_precision("auto", torch.device(device), width, 2)
    assert chosen == want and why.startswith(f"auto: bf16 matmuls {ratio:.2f}x fp32's on this CPU"), why
    assert precision.resolve_precision("fp32", torch.device(device), width, 2) == ("fp32", "")
