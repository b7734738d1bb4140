"""hvdlm bench sync runs each method for real with 2 ranks and reports bytes, tokens/s and val loss."""

import json

import pytest

from support.launch import HVDLM, check, launch
from hvdlm.bench.report import read_csv


def test_bench_sync_compares_methods_and_links(corpus, tmp_path):
    out = tmp_path / "bench"
    # a "shaped" link whose shaping does nothing (this machine's lo): the runs there stop once their
    # byte window holds 8 steps, and must compute exactly what the free link's runs computed. Steps
    # of ~0.1 s (not the few ms of a smaller batch) let the counters be read at the steps they belong to.
    cmd = [
        HVDLM, "bench", "sync", "--data_dir", str(corpus), "--preset", "tiny", "--block_size", "128",
        "--global_batch", "16", "--steps", "24", "--lr_warmup", "2", "--warmup", "2", "--eval_interval", "8",
        "--eval_sequences", "8", "--methods", "none,powersgd,diloco,diloco-bf16,diloco-bf16-overlap", "--sync_every", "4",
        "--powersgd_rank", "2", "--links", "free,100mbit:none+diloco-bf16+diloco-bf16-overlap",
        "--slow_cmd", "true {rate}",
        "--heal_cmd", "true", "--shaped_window", "8",
        "--tx_bytes_cmd", "cat /sys/class/net/lo/statistics/tx_bytes", "--poll", "0.01", "--out_dir", str(out)]
    run = check(launch("single", cmd, timeout=600))
    rows = {(r["link"], r["method"]): r for r in read_csv(out / "sync.csv")}
    overlapped = ("diloco-bf16-overlap",)
    assert set(rows) == {("free", m) for m in ("none", "powersgd", "diloco", "diloco-bf16", *overlapped)} | {
        ("100mbit", "none"), ("100mbit", "diloco-bf16"), ("100mbit", *overlapped)}, run.output
    for (link, _), r in rows.items():
        assert r["tokens_per_s"] > 0 and r["val_loss"] > 0 and r["bytes_per_step_tx"] > 0
        if link == "free":
            assert r["steps"] == 24 and r["tokens"] == 24 * 16 * 128
    none, psgd = rows["free", "none"], rows["free", "powersgd"]
    diloco, diloco16 = rows["free", "diloco"], rows["free", "diloco-bf16"]
    # the ranks' own count over whole sync periods: PowerSGD's factors after its plain start (steps
    # 2-23), DiLoCo's one exchange in 4 steps, in 16 bits half of that
    assert in_window(psgd, 2, 1, 23) and in_window(diloco, 4, 4, 23)
    assert psgd["bytes_per_step_computed"] < none["bytes_per_step_computed"] / 2
    assert diloco["bytes_per_step_computed"] == pytest.approx(none["bytes_per_step_computed"] / 4, rel=1e-6)
    assert diloco16["bytes_per_step_computed"] == pytest.approx(diloco["bytes_per_step_computed"] / 2, rel=1e-6)
    assert none["bytes_vs_none"] == 1.0 and none["val_loss_vs_none"] == 0.0
    # overlapped (--overlap_steps 2, half of H): the same exchanges, applied two steps later
    behind = rows["free", "diloco-bf16-overlap"]
    assert behind["bytes_per_step_computed"] == diloco16["bytes_per_step_computed"]
    assert behind["val_loss"] != diloco16["val_loss"]
    assert rows["100mbit", "diloco-bf16-overlap"]["same_as_free"] == "True"
    # shaped runs: stopped after window start + 8 steps in whole periods + 1, same losses as free
    slow, slow16 = rows["100mbit", "none"], rows["100mbit", "diloco-bf16"]
    assert slow["steps"] == 11 and slow16["steps"] == 13
    assert in_window(slow, 2, 1, 10) and in_window(slow16, 4, 4, 12)
    assert slow["same_as_free"] == slow16["same_as_free"] == "True"  # CSV text
    assert slow16["val_loss_compared"] == diloco16["val_loss"] and slow16["val_loss_compared_at"] == 24
    assert "MB/step (tx counters)" in run.stdout and (out / "sync.png").stat().st_size > 1000
    assert not list((out / "runs").rglob("checkpoint*.pt"))  # the runs' checkpoints are not kept
    evals = json.loads((out / "sync.json").read_text())["rows"][0]["evals"]  # (step, seconds, val loss)
    assert [e[0] for e in evals] == [0, 8, 16, 24]
    # an interrupted benchmark keeps its finished runs (same flags): nothing is trained again
    (out / "runs" / "100mbit-none" / "row.json").unlink()
    again = check(launch("single", [*cmd, "--reuse"], timeout=600))
    assert again.stdout.count("kept from") == 7 and "[100mbit] none ..." in again.stdout, again.output
    assert len(read_csv(out / "sync.csv")) == 8


def in_window(row: dict, start: int, every: int, last: int) -> bool:
    """The byte window spans the syncs at which the poller read the counters. Which ones it catches
    depends on the machine's speed (two train records may land between two looks), so only its
    bounds are fixed: from a sync at or after ``start`` to a later one at or before ``last``."""
    a, b = map(int, row["window"].split("-"))
    assert start <= a < b <= last and a % every == b % every == 0, row["window"]
    return True


def test_bench_sync_without_slow_cmd_says_so_and_refuses_shaped_only(corpus, tmp_path):
    run = launch("single", [HVDLM, "bench", "sync", "--data_dir", str(corpus), "--links", "100mbit",
                            "--out_dir", str(tmp_path)], timeout=120)
    assert run.returncode != 0
    assert "no --slow_cmd: measuring the free link only (not 100mbit)" in run.stdout
    assert "hvdlm: error: nothing to measure" in run.output and "Traceback" not in run.output
