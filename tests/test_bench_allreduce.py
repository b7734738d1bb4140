"""``hvdlm bench allreduce``: the formulas, the correctness check, the writers, and 2-rank sweeps
under horovodrun (Gloo and MPI) and mpirun. Nothing here asserts on speed."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

from support.launch import BIN, HVDLM, launch
from hvdlm.bench import allreduce as ar
from hvdlm import launcher
from hvdlm.units import bus_factor, parse_bytes
from hvdlm.bench import output
from hvdlm.errors import HvdlmError

# A sweep that takes seconds: 4 sizes, every dtype, in and out of place.
TINY = ["--min_bytes", "4", "--max_bytes", "2K", "--factor", "8", "--warmup", "1", "--iters", "2",
        "--dtypes", "all", "--placement", "both"]


# ---------------------------------------------------------------------------------------------
# Formulas and helpers, in one process

@pytest.mark.parametrize("n, factor", [(2, 1.0), (3, 4 / 3), (4, 1.5), (8, 1.75), (1, 0.0)])
def test_busbw_is_algbw_times_2_n_minus_1_over_n(n, factor):
    nbytes, seconds = 64 * 2 ** 20, 0.0125
    alg = ar.algbw(nbytes, seconds)
    assert alg == pytest.approx(nbytes / seconds)
    assert bus_factor(n) == pytest.approx(factor)
    assert ar.busbw(alg, n) == pytest.approx(nbytes / seconds * 2 * (n - 1) / n)


def test_sizes_are_a_geometric_sweep_with_inclusive_bounds():
    assert ar.sweep_sizes(4, 64 * 2 ** 20, 2) == [4 * 2 ** k for k in range(25)]
    assert ar.sweep_sizes(1024, 256 * 2 ** 20, 2)[-1] == 256 * 2 ** 20
    assert ar.sweep_sizes(8, 100, 4) == [8, 32]
    assert ar.sweep_sizes(16, 16, 2) == [16]


@pytest.mark.parametrize("args, message", [
    ((0, 64, 2), "at least 1 byte"),
    ((4, 4 * 2 ** 30, 2), "at most 2G"),
    ((1024, 512, 2), "larger than"),
    ((4, 64, 1), "at least 2"),
])
def test_sizes_out_of_range_are_refused(args, message):
    with pytest.raises(HvdlmError, match=message) as e:
        ar.sweep_sizes(*args)
    assert e.value.everywhere


def test_parse_bytes():
    assert parse_bytes("8") == 8
    assert parse_bytes("4K") == parse_bytes("4KB") == parse_bytes("4KiB") == 4096
    assert parse_bytes("64M") == 64 * 2 ** 20
    assert parse_bytes("1g") == 2 ** 30
    assert parse_bytes("1.5K") == 1536
    for bad in ("", "abc", "-4", "1.5", "4X"):
        with pytest.raises(HvdlmError):
            parse_bytes(bad)


def test_a_size_that_is_not_whole_elements_is_refused():
    assert ar.element_count(4096, "fp32") == 1024
    assert ar.element_count(6, "fp16") == 3
    with pytest.raises(HvdlmError, match="6 bytes is not a whole number of fp32 elements"):
        ar.element_count(6, "fp32")


@pytest.mark.parametrize("dtype", list(ar.DTYPES))
@pytest.mark.parametrize("nranks", [2, 3, 8, 64])
def test_the_pattern_sums_exactly_in_every_dtype(dtype, nranks):
    """Summing the ranks' buffers in the dtype itself (in any order) gives the expected sum."""
    tdtype = ar.DTYPES[dtype]
    count = 1000  # not a multiple of the period: the tail is filled and checked too
    period = ar.pattern_period(nranks, dtype)
    assert (period - 1) * nranks <= ar.EXACT_INTEGERS[dtype]
    bufs = [ar.fill_periodic(torch.empty(count, dtype=tdtype), ar.rank_pattern(r, period, tdtype))
            for r in range(nranks)]
    assert bufs[0][:period].tolist() == list(range(period))
    total = torch.zeros(count, dtype=tdtype)
    for b in reversed(bufs):
        total += b
    expected = ar.expected_pattern(nranks, period, tdtype)
    assert ar.count_wrong(total, expected) == 0
    full = ar.fill_periodic(torch.empty(count, dtype=tdtype), expected)
    assert ar.count_wrong(total, full) == 0  # the whole-tensor form agrees


@pytest.mark.parametrize("dtype", list(ar.DTYPES))
def test_a_corrupted_result_is_counted_wrong(dtype):
    tdtype = ar.DTYPES[dtype]
    period = ar.pattern_period(2, dtype)
    expected = ar.expected_pattern(2, period, tdtype)
    result = ar.fill_periodic(torch.empty(4099, dtype=tdtype), expected)
    assert ar.count_wrong(result, expected) == 0
    result[2049] += 1
    assert ar.count_wrong(result, expected) == 1
    result[4098] = float("nan")  # in the tail after the last whole period
    assert ar.count_wrong(result, expected) == 2
    result[0] = -result[0] - 1
    assert ar.count_wrong(result, expected) == 3


def test_time_calls_times_each_iteration_after_warmup():
    """Calls of known least durations: 3 untimed warm-up calls of 1 s, then 0.01 s, 0.05 s and
    0.01 s. A sleep only ever takes longer than asked (a loaded machine): lower bounds, and an upper
    bound 20x above what was asked that only the warm-ups, if timed, would break."""
    naps = [1.0] * 3 + [0.01, 0.05, 0.01]
    calls = []
    avg, lo, hi = ar.time_calls(lambda: time.sleep(naps[len(calls)]) or calls.append(1), warmup=3, iters=3)
    assert len(calls) == 6
    assert lo >= 0.01 and hi >= 0.05 and avg >= 0.07 / 3, (avg, lo, hi)
    assert hi < 1.0, (avg, lo, hi)  # the warm-ups were not timed


def test_launcher_detection():
    assert launcher.name({}) is None
    assert launcher.name({"HOROVOD_RANK": "0", "HOROVOD_GLOO_RENDEZVOUS_ADDR": "x"}) == "horovodrun (Gloo)"
    assert launcher.name({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpirun (Open MPI)"
    assert launcher.name({"SLURM_PROCID": "0", "SLURM_STEP_ID": "1"}) == "srun"
    assert not launcher.mpi({"HOROVOD_RANK": "0"})
    assert launcher.mpi({"OMPI_COMM_WORLD_SIZE": "2"}) and launcher.mpi({"PMI_RANK": "1"})


def test_report_writers_round_trip(tmp_path):
    rows = [{"backend": "a", "bytes": 1024, "busbw_GBps": 1.5, "wrong": 0},
            {"backend": "b", "bytes": 2048, "busbw_GBps": 0.25, "wrong": 3}]
    assert output.read_csv(output.write_csv(tmp_path / "r.csv", rows)) == rows
    doc = json.loads(output.write_json(tmp_path / "r.json", {"ranks": 2}, rows).read_text())
    assert doc == {"meta": {"ranks": 2}, "rows": rows}
    panel = output.Panel("busbw", "size", "GB/s", {"a": ([1024, 2048], [1.0, 2.0]), "b": ([1024], [0.0])})
    png = output.plot_panels(tmp_path / "r.png", [panel], title="t", note="n")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = output.Table([output.Column("backend", "backend", 8, align="<"),
                          output.Column("busbw_GBps", "busbw", 6, "{:.2f}")])
    lines = table.render(rows, units=["", "(GB/s)"]).splitlines()
    assert lines[0].startswith("#") and lines[2].split() == ["a", "1.50"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert output.human_bytes(256 * 2 ** 20) == "256M" and output.human_bytes(6) == "6B"


def test_median_of_runs_takes_each_figure_s_median_and_adds_up_wrong():
    def doc(date, t, wrong=0):
        row = {"backend": "horovod", "dtype": "fp32", "placement": "in", "bytes": 1024, "time_avg_us": t,
               "time_min_us": t / 2, "time_max_us": t * 2, "algbw_GBps": 1024 / t / 1e3,
               "busbw_GBps": 1024 / t / 1e3, "wrong": wrong}
        return {"meta": {"date": date, "backends": {}}, "rows": [row]}

    meta, rows = ar.median_of_runs([doc("a", 10.0), doc("b", 1000.0, wrong=2), doc("c", 20.0)])
    assert meta["runs"] == 3 and meta["dates"] == ["a", "b", "c"]
    (row,) = rows
    assert row["time_avg_us"] == 20.0 and row["time_min_us"] == 10.0 and row["runs"] == 3
    assert row["busbw_GBps"] == pytest.approx(1024 / 20.0 / 1e3)
    assert row["wrong"] == 2


# ---------------------------------------------------------------------------------------------
# Real ranks

def sweep(launcher: str, tmp_path: Path, *flags: str, rc: int = 0):
    """--device cpu: these check the host transports (MPI, Gloo, mpi4py, memcpy) that every machine
    has, as on a CPU-only one; on a GPU host the default (auto) would measure NCCL instead, which
    2 ranks cannot share on a 1-GPU machine (scripts/gpu_check.sh sweeps NCCL on 2+ GPUs)."""
    out = tmp_path / launcher
    run = launch(launcher, [HVDLM, "bench", "allreduce", *TINY, "--device", "cpu", "--out_dir", str(out), *flags],
                 timeout=120)
    assert run.returncode == rc, run.output
    return run, output.read_csv(out / "allreduce.csv"), json.loads((out / "allreduce.json").read_text()), out


# Horovod's two controllers; horovodrun --mpi would run mpirun's case again (the same MPI
# controller and backends, under one more wrapper)
@pytest.mark.parametrize("launcher, backends", [
    ("mpirun", {"mpi4py", "horovod", "torch-gloo", "memcpy"}),
    ("horovodrun-gloo", {"horovod", "torch-gloo", "memcpy"}),
])
def test_small_sweep_on_two_ranks_parses_and_is_right(launcher, backends, tmp_path):
    run, rows, doc, out = sweep(launcher, tmp_path, *([] if launcher == "mpirun" else ["--no_plot"]))
    sizes = [4, 32, 256, 2048]
    assert {r["backend"] for r in rows} == backends
    assert doc["rows"] == rows and doc["meta"]["ranks"] == 2 and doc["meta"]["sizes"] == sizes
    controller = "Gloo" if launcher == "horovodrun-gloo" else "MPI"
    assert doc["meta"]["backends"]["horovod"]["transport"] == controller
    for b in backends:
        for dtype in ("fp32", "fp16", "bf16"):
            if b == "horovod" and dtype == "bf16":
                continue  # Horovod 0.28 has no bf16: skipped with a note
            for place in ("in", "out"):
                got = [r for r in rows if (r["backend"], r["dtype"], r["placement"]) == (b, dtype, place)]
                assert [r["bytes"] for r in got] == sizes, (b, dtype, place)
    assert "horovod skipped for bf16" in run.stdout
    if "mpi4py" not in backends:
        assert "mpi4py skipped: mpi4py needs an MPI launcher" in run.stdout
    for r in rows:
        assert r["wrong"] == 0, r
        assert r["count"] * ar.DTYPES[r["dtype"]].itemsize == r["bytes"]
        assert r["op"] == ("copy" if r["backend"] == "memcpy" else "sum")
        assert r["algbw_GBps"] == pytest.approx(r["bytes"] / (r["time_avg_us"] * 1e-6) / 1e9, rel=1e-6)
        factor = 1.0 if r["backend"] == "memcpy" else 2 * (2 - 1) / 2
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * factor, rel=1e-9)
    # rank 0 alone prints: one table per dtype and placement, then the side-by-side summaries
    assert run.stdout.count("hvdlm: wrote") == 1
    assert run.stdout.count("#wrong") == 6
    assert run.stdout.count("# side by side") == 6
    lines = [re.sub(r"^\[[\d,]+\]<stdout>:", "", line) for line in run.stdout.splitlines()]  # horovodrun's tags
    data = [line.split() for line in lines if line.startswith("  ") and line.split()[0].isdigit()]
    assert len(data) == len(rows) and all(len(d) == 12 for d in data)
    if launcher == "mpirun":  # one plot is enough (12 panels take seconds to draw)
        assert (out / "allreduce.png").read_bytes()[:4] == b"\x89PNG"


def test_a_corrupted_result_fails_the_run(tmp_path):
    """One element perturbed after each allreduce on the last rank: #wrong > 0, exit status 1."""
    run, rows, doc, _ = sweep("mpirun", tmp_path, "--dtypes", "fp32,fp16", "--corrupt_for_test",
                                  "--no_plot", rc=1)
    reduced = [r for r in rows if r["backend"] != "memcpy"]
    assert reduced and all(r["wrong"] == 1 for r in reduced)
    assert all(r["wrong"] == 0 for r in rows if r["backend"] == "memcpy")
    assert run.stderr.count("wrong elements in allreduce results") == 1


def test_horovod_settings_reach_horovod_and_the_results(tmp_path):
    run, rows, doc, _ = sweep("horovodrun-gloo", tmp_path, "--backends", "horovod", "--dtypes", "fp32",
                              "--cycle_time_ms", "0.5", "--fusion_threshold", "1M",
                              "--horovod_env", "HOROVOD_CACHE_CAPACITY=0", "--no_plot")
    settings = doc["meta"]["settings"]  # horovodrun adds its own (HOROVOD_CONTROLLER=gloo, ...)
    assert {k: settings.get(k) for k in ("HOROVOD_CACHE_CAPACITY", "HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD")} \
        == {"HOROVOD_CACHE_CAPACITY": "0", "HOROVOD_CYCLE_TIME": "0.5", "HOROVOD_FUSION_THRESHOLD": "1048576"}
    assert settings["HOROVOD_CONTROLLER"] == "gloo"
    assert "HOROVOD_CYCLE_TIME=0.5" in run.stdout
    assert {r["backend"] for r in rows} == {"horovod"}


BAD_INPUT = [
    (["--max_bytes", "4G"], "--max_bytes 4294967296 (4G) is out of range: at most 2G"),
    (["--min_bytes", "0"], "--min_bytes 0 is out of range: at least 1 byte"),
    (["--min_bytes", "64", "--max_bytes", "8"], "--min_bytes 64 is larger than --max_bytes 8"),
    (["--min_bytes", "6", "--max_bytes", "6"], "6 bytes is not a whole number of fp32 elements"),
    (["--min_bytes", "2", "--dtypes", "fp16,fp32"], "2 bytes is not a whole number of fp32 elements"),
    (["--factor", "1"], "--factor 1 is out of range"),
    (["--factor", "two"], "--factor 'two' is not a whole number"),
    (["--iters", "0"], "--iters 0 is out of range"),
    (["--warmup", "-1"], "--warmup -1 is out of range"),
    (["--max_bytes", "lots"], "--max_bytes 'lots' is not a byte count"),
    (["--backends", "horovod,nccl2"], "unknown backend 'nccl2'"),
    (["--dtypes", "fp8"], "unknown dtype 'fp8'"),
    (["--backends", "all,mpi4py-hvd"], "'all' cannot be combined with other names"),
    (["--placement", "sideways"], "unknown placement 'sideways'"),
    (["--cycle_time_ms", "0"], "--cycle_time_ms 0.0 is out of range"),
    (["--horovod_env", "CYCLE=1"], "only HOROVOD_* settings"),
    (["--horovod_env", "HOROVOD_CYCLE_TIME"], "expected HOROVOD_NAME=VALUE"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUT)
def test_bad_flags_are_refused_on_every_rank_alike(flags, message):
    """Checked before anything starts, from the command line alone: every rank raises the same."""
    from hvdlm.cli import build_parser

    args = build_parser().parse_args(["bench", "allreduce", *flags])
    with pytest.raises(HvdlmError) as e:
        ar.settings_from_args(args)
    assert message in str(e.value)
    assert e.value.everywhere  # so the CLI prints it once, on rank 0, and exits 2 everywhere


@pytest.mark.parametrize("flags, message", [
    BAD_INPUT[0],  # a size out of range
    BAD_INPUT[3],  # a count that does not divide
    (["--backends", "torch-nccl"], "backend torch-nccl is not available here (needs a CUDA GPU and torch with "
                                   "NCCL); available: horovod, torch-gloo, mpi4py, memcpy, mpi4py-hvd"),
])
def test_bad_input_is_one_message_and_exit_2_on_every_rank(flags, message, tmp_path):
    run = launch("mpirun", [HVDLM, "bench", "allreduce", "--out_dir", str(tmp_path), *flags], timeout=60)
    assert run.returncode == 2, run.output
    assert run.stderr.count("hvdlm: error:") == 1, run.output  # rank 0 alone prints it
    assert message in run.stderr
    assert not (tmp_path / "allreduce.csv").exists()


def test_mpi4py_asked_for_under_horovodrun_gloo_is_an_error(tmp_path):
    run = launch("horovodrun-gloo", [HVDLM, "bench", "allreduce", "--backends", "horovod,mpi4py",
                                     "--out_dir", str(tmp_path)], timeout=60)
    assert run.returncode != 0, run.output
    assert run.output.count("hvdlm: error: mpi4py needs an MPI launcher") == 1, run.output
    assert "launch with mpirun" in run.output


def test_one_rank_is_refused(tmp_path):
    run = launch("single", ["mpirun", "-np", "1", HVDLM, "bench", "allreduce", "--out_dir", str(tmp_path)],
                 timeout=60)
    assert run.returncode == 2, run.output
    assert "an allreduce needs at least 2" in run.stderr


def test_without_a_launcher_it_says_how_to_launch(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_COMM_WORLD", "PMI", "PMIX", "SLURM_", "HOROVOD_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    p = subprocess.run([HVDLM, "bench", "allreduce", "--out_dir", str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "launch it with `horovodrun -np 2" in p.stderr and "mpirun -np 2" in p.stderr
