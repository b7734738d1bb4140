"""hvdlm bench train runs hvdlm and the DDP baseline for real and reports comparable figures."""

from conftest import HVDLM, TINY, check, launch
from hvdlm.bench.report import read_csv


def test_bench_train_compares_horovod_with_ddp_and_one_rank(corpus, tmp_path):
    out = tmp_path / "bench"
    run = check(launch("single", [HVDLM, "bench", "train", "--data_dir", str(corpus), "--preset", "tiny",
                                  "--block_size", "32", "--global_batch", "4", "--steps", "4", "--warmup", "2",
                                  "--repeats", "1", "--runs", "single,single-1,bare,horovod-gloo,ddp",
                                  "--out_dir", str(out)], timeout=400))
    rows = {r["run"]: r for r in read_csv(out / "train.csv")}
    assert set(rows) == {"1 rank x 2 threads", "1 rank x 1 thread(s)", "bare PyTorch 1 x 2", "Horovod Gloo 2 x 1",
                         "DDP gloo 2 x 1"}, run.output
    for r in rows.values():
        assert r["global_batch"] == 4 and r["tokens_per_s"] > 0
    assert rows["Horovod Gloo 2 x 1"]["micro_batch"] == 2 and rows["DDP gloo 2 x 1"]["micro_batch"] == 2
    assert rows["1 rank x 2 threads"]["vs_1_rank_all_cores"] == 1.0
    assert rows["1 rank x 1 thread(s)"]["scaling_efficiency"] == 1.0
    hvd = rows["Horovod Gloo 2 x 1"]
    assert abs(hvd["scaling_efficiency"] - hvd["tokens_per_s"] / (2 * rows["1 rank x 1 thread(s)"]["tokens_per_s"])) < 1e-6
    assert hvd["allreduce_wait_ms"] >= 0  # Horovod reports its wait; DDP overlaps and cannot
    # the bare PyTorch loop beside hvdlm on one rank: step time and whole-process wall time
    single, bare = rows["1 rank x 2 threads"], rows["bare PyTorch 1 x 2"]
    assert bare["wall_s"] > 0 and single["wall_s"] > 0
    assert abs(single["bare_wall_ratio"] - bare["wall_s"] / single["wall_s"]) < 1e-6
    assert abs(single["bare_step_ratio"] - bare["step_ms"] / single["step_ms"]) < 1e-6
    assert (out / "train.png").stat().st_size > 1000
    assert "scaling eff." in run.stdout


def test_a_horovod_timeline_of_a_training_run_can_be_recorded(corpus, tmp_path):
    timeline = tmp_path / "timeline.json"
    check(launch("horovodrun-mpi", ["--timeline-filename", str(timeline), HVDLM, "train", "--data_dir", str(corpus),
                                    "--out_dir", str(tmp_path / "run"), *TINY, "--max_steps", "3"]))
    text = timeline.read_text()
    assert '"ph"' in text and "allreduce" in text.lower()  # Chrome trace events of the gradient allreduces
