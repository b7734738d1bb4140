"""hvdlm bench sync runs each method for real with 2 ranks and reports bytes, tokens/s and val loss."""

import json

import pytest

from support.launch import HVDLM, check, launch
from hvdlm.bench.report import read_csv


def test_bench_sync_compares_methods_on_one_link(corpus, tmp_path):
    out = tmp_path / "bench"
    run = check(launch("single", [
        HVDLM, "bench", "sync", "--data_dir", str(corpus), "--preset", "tiny", "--block_size", "32",
        "--global_batch", "4", "--steps", "24", "--lr_warmup", "2", "--warmup", "2", "--eval_interval", "8",
        "--eval_sequences", "8", "--methods", "none,powersgd,diloco", "--sync_every", "4", "--powersgd_rank", "2",
        "--links", "free,100mbit",  # no --slow_cmd here: the free link only, said in one line
        "--tx_bytes_cmd", "cat /sys/class/net/lo/statistics/tx_bytes", "--poll", "0.01", "--out_dir", str(out)], timeout=600))
    assert "no --slow_cmd: measuring the free link only (not 100mbit)" in run.stdout
    rows = {r["method"]: r for r in read_csv(out / "sync.csv")}
    assert set(rows) == {"none", "powersgd", "diloco"}, run.output
    for r in rows.values():
        assert r["link"] == "free" and r["steps"] == 24 and r["tokens"] == 24 * 4 * 32
        assert r["tokens_per_s"] > 0 and r["val_loss"] > 0 and r["bytes_per_step_tx"] > 0
    none, psgd, diloco = rows["none"], rows["powersgd"], rows["diloco"]
    # the ranks' own count over whole sync periods: PowerSGD's factors, DiLoCo's one exchange in 4 steps
    assert psgd["bytes_per_step_computed"] < none["bytes_per_step_computed"] / 2
    assert diloco["bytes_per_step_computed"] == pytest.approx(none["bytes_per_step_computed"] / 4, rel=1e-6)
    assert none["bytes_vs_none"] == 1.0 and none["val_loss_vs_none"] == 0.0
    assert "MB/step (tx counters)" in run.stdout and (out / "sync.png").stat().st_size > 1000
    evals = json.loads((out / "sync.json").read_text())["rows"][0]["evals"]  # (step, seconds, val loss)
    assert [e[0] for e in evals] == [0, 8, 16, 24]
