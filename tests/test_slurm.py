"""The SLURM templates (slurm/train.sbatch, slurm/bench_allreduce.sbatch) and `hvdlm preflight`,
submitted with sbatch to a real local cluster (slurm/cluster.sh, the session's one) of 3 hosts,
each on its share of the cores, scaled down: a tiny model, few steps, 2 nodes x 1 task x 1 CPU
unless a test says otherwise, on a corpus of generated words. Needs root and
`bash slurm/cluster.sh install`; a cluster that cannot start fails the tests, it does not skip them.

Covered: each template completes and writes what it should, with ranks on both hosts; the
time-limit warning (the template's own `--signal`) makes training checkpoint, exit 75 and requeue,
and resubmissions resume with the same and with another task count; the preflight passes, then
names the host whose link is slowed and stops the job before training; horovodrun -H across hosts
outside SLURM; bad input fails within seconds with one clear line in the job's output file."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from support.cluster import cluster, sh
from support.launch import BIN, TINY_WITH_PROGRESS
from support.progress import wait_for
from support.slurm import BENCH, TRAIN, last_step_hosts, metrics, prepared, submit, two_nodes

TINY = [*TINY_WITH_PROGRESS, "--eval_interval", "0", "--log_interval", "10"]
# Preflight thresholds for this machine (2 cores shared by 3 hosts), in GB/s. Measured here with
# 512 KiB messages: healthy point-to-point 0.1-0.7, allreduce busbw 0.01-0.06; with hvdnode2's link
# at 20 Mbit/s its point-to-point drops to ~0.0013 and the allreduce to ~0.002.
SLOW_RATE = "20mbit"
PREFLIGHT = "--size 512K --iters 3 --timeout 60"
MIN_P2P, MIN_BUSBW = "0.02", "0.004"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A small byte-level corpus (~300 KB)."""
    return prepared(tmp_path_factory.mktemp("slurm-data"), 300_000)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 KB of text: 65 sequences of 32 tokens, too few for 2 ranks x 40."""
    return prepared(tmp_path_factory.mktemp("slurm-tiny"), 3000, val_fraction=0.3)


# ------------------------------------------------------------------------------------------------
# The templates, as a user submits them

def test_train_template_srun_two_hosts(slurm_cluster, data, tmp_path):
    out = tmp_path / "out"
    job = submit(TRAIN, tmp_path, two_nodes(), [*TINY, "--max_steps", "20"],
                 DATA_DIR=data, OUT_DIR=out, PREFLIGHT_ARGS=PREFLIGHT).wait()
    job.assert_state("COMPLETED", "0:0")
    log = job.output
    assert f"hvdlm: job {job.id} (hvdlm-train) on 2 node(s)" in log, log
    assert "hvdlm: preflight passed: 2 ranks on 2 hosts" in log, log
    assert re.search(r"hvdlm: done at step 20/20", log), log
    assert (out / "checkpoint.pt").is_file() and (out / "config.toml").is_file()
    summary = metrics(out, "summary")[-1]
    assert summary["finished"] and summary["ranks"] == 2 and summary["step"] == 20, summary
    assert len(metrics(out, "eval")) == 2  # step 0 and the end
    pre = json.loads((out / f"preflight-{job.id}.json").read_text())
    assert pre["passed"] and pre["hosts"] == ["hvdnode1", "hvdnode2"], pre
    assert last_step_hosts(job) == {"hvdnode1", "hvdnode2"}  # the training step's ranks


def test_train_template_horovodrun_two_hosts(slurm_cluster, data, tmp_path):
    out = tmp_path / "out"
    # --verbose: horovodrun prints each rank's command, with the ssh to the other host
    job = submit(TRAIN, tmp_path, two_nodes(), [*TINY, "--max_steps", "10"], DATA_DIR=data, OUT_DIR=out,
                 LAUNCHER="horovodrun", HOROVODRUN_ARGS="--gloo --verbose", PREFLIGHT=0).wait()
    job.assert_state("COMPLETED", "0:0")
    log = job.output
    assert "horovodrun -np 2 -H hvdnode1:1,hvdnode2:1 --gloo" in log, log
    assert re.search(r"ssh .* hvdnode2 .*HOROVOD_HOSTNAME=hvdnode2 HOROVOD_RANK=1 ", log), log
    assert "hvdlm: done at step 10/10" in log, log
    assert (out / "checkpoint.pt").is_file() and metrics(out, "summary")[-1]["ranks"] == 2


def test_more_cpus_per_task_than_a_node_has_pends_as_the_template_warns(slurm_cluster, tmp_path):
    """The template's --cpus-per-task, unchanged, on the test cluster's smaller nodes: SLURM never
    starts the job (Reason=PartitionConfig), which the template says at that directive."""
    lines = TRAIN.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH --cpus-per-task="))
    asked = int(lines[at].split("=")[1].split()[0])
    node_cpus = min(int(c) for c in sh(["sinfo", "-h", "-N", "-o", "%c"]).stdout.split())
    assert node_cpus < asked, f"the test cluster's nodes have {node_cpus} CPUs: nothing to check"
    assert "Reason=PartitionConfig" in " ".join(lines[at:at + 3]), lines[at:at + 3]
    job = submit(TRAIN, tmp_path, ["--time", "10"], ["--max_steps", "1"], DATA_DIR=tmp_path, OUT_DIR=tmp_path / "o")
    try:
        def reason() -> str:
            job.info = sh(["scontrol", "show", "job", "-o", job.id]).stdout
            return job.field("Reason")
        wait_for(lambda: reason() not in ("", "None"), f"job {job.id}'s pending reason", lambda: job.info,
                 stall=30, poll=0.5)
        assert (job.field("JobState"), job.field("Reason")) == ("PENDING", "PartitionConfig"), job.info
    finally:
        sh(["scancel", job.id], check=False)


def test_bench_template_writes_csv_from_both_hosts(slurm_cluster, tmp_path):
    out = tmp_path / "bench"
    job = submit(BENCH, tmp_path, two_nodes() + ["--exclusive"],
                 ["--min_bytes", "1K", "--max_bytes", "64K", "--factor", "8", "--iters", "3", "--warmup", "1",
                  "--no_plot"], OUT_DIR=out).wait()
    job.assert_state("COMPLETED", "0:0")
    rows = (out / "allreduce.csv").read_text().splitlines()
    header = rows[0].split(",")
    backends = {dict(zip(header, r.split(",")))["backend"] for r in rows[1:]}
    assert {"horovod", "mpi4py"} <= backends, rows
    assert len(rows) - 1 == 3 * len(backends)  # 1K, 8K, 64K for each
    assert all(dict(zip(header, r.split(",")))["wrong"] == "0" for r in rows[1:])
    meta = json.loads((out / "allreduce.json").read_text())
    assert sorted(meta["meta"]["hosts"]) == ["hvdnode1", "hvdnode2"], meta["meta"]
    assert f"hvdlm: job {job.id} finished: {out}/allreduce.csv" in job.output


# ------------------------------------------------------------------------------------------------
# The time limit: SLURM's warning signal, a checkpoint, requeue, and resuming elsewhere

def test_time_limit_signal_checkpoints_requeues_and_resumes_on_other_task_counts(slurm_cluster, data, tmp_path):
    out = tmp_path / "out"
    knobs = dict(DATA_DIR=data, OUT_DIR=out, PREFLIGHT=0)
    # 2 minutes and the warning 45 s before the end (in place of the template's 300 s), while
    # training would go on for hours. slurmctld looks every 30 s and may send it early: measured
    # here 45-75 s into the job (`man sbatch`: up to 60 s early), after training has started.
    t0 = time.monotonic()
    first = submit(TRAIN, tmp_path, two_nodes(time_limit="2") + ["--signal", "B:USR1@45"],
                   [*TINY, "--max_steps", "100000", "--log_interval", "5"], REQUEUE=1, **knobs)
    # The job requeues itself: it is pending again (SLURM holds a requeued job ~2 minutes).
    first.wait(until=lambda info: "Restarts=1" in info and "JobState=PENDING" in info)
    requeued_after = time.monotonic() - t0
    sh(["scancel", first.id])
    first.wait()
    log = first.output
    assert f"hvdlm: job {first.id} got SIGUSR1" in log, log
    m = re.search(r"hvdlm: stopped at step (\d+)/100000 on SIGUSR1: checkpoint written to (\S+);", log)
    assert m and m.group(2) == f"{out}/checkpoint.pt", log
    stopped = int(m.group(1))
    assert "requeueing it to resume" in log, log  # and SLURM did: Restarts=1, pending again
    summary = metrics(out, "summary")[-1]
    assert summary["stopped_by"] == "SIGUSR1" and summary["step"] == stopped, summary
    assert requeued_after < 120, f"the warning came {requeued_after:.0f}s in, past the 2-minute limit"

    # Resubmitted with the same shape: resumes at the checkpoint's step.
    same = submit(TRAIN, tmp_path, two_nodes(), [*TINY, "--max_steps", "100000", "--stop_after", "5"],
                  **knobs).wait()
    same.assert_state("COMPLETED", "0:0")
    assert f"resuming at step {stopped}" in same.output and "global batch 16 x 32 tokens (2 x 8 x 1" in same.output
    assert metrics(out, "summary")[-1]["step"] == stopped + 5

    # And with twice the tasks: the global batch of 16 stays, each of 4 ranks takes 4.
    more = submit(TRAIN, tmp_path, two_nodes(tasks_per_node=2), [*TINY, "--max_steps", "100000",
                                                                   "--stop_after", "5"], **knobs).wait()
    more.assert_state("COMPLETED", "0:0")
    assert "4 rank(s)" in more.output and f"resuming at step {stopped + 5}" in more.output, more.output
    assert "global batch 16 x 32 tokens (4 x 4 x 1" in more.output, more.output
    final = metrics(out, "summary")[-1]
    assert final["step"] == stopped + 10 and final["ranks"] == 4 and final["global_batch"] == 16, final
    steps = [r["step"] for r in metrics(out, "train")]
    assert steps == sorted(steps) and steps[-1] == stopped + 10


def test_time_limit_without_requeue_exits_75_for_a_resubmission(slurm_cluster, data, tmp_path):
    """REQUEUE=0: the job ends with status 75 and says how to resume; here the warning is sent with
    scancel (what SLURM's --signal does) so the test need not wait for slurmctld's timer."""
    out = tmp_path / "out"
    job = submit(TRAIN, tmp_path, two_nodes(), [*TINY, "--max_steps", "100000", "--log_interval", "1"],
                 DATA_DIR=data, OUT_DIR=out, PREFLIGHT=0, REQUEUE=0)
    job.wait_for_train_records(out)  # training has started, however long that took
    sh(["scancel", "--batch", "--signal", "USR1", job.id])
    job.wait()
    job.assert_state("FAILED", "75:0")
    assert "stopped with a checkpoint in" in job.output and "submit it again: sbatch" in job.output, job.output
    assert (out / "checkpoint.pt").is_file()


# ------------------------------------------------------------------------------------------------
# Preflight

def test_preflight_passes_then_names_the_slowed_host_and_stops_the_job(slurm_cluster, data, tmp_path):
    knobs = dict(DATA_DIR=data, PREFLIGHT_MIN_BUSBW=MIN_BUSBW, PREFLIGHT_MIN_P2P=MIN_P2P, PREFLIGHT_ARGS=PREFLIGHT)
    three = ["--nodes", "3", "--ntasks-per-node", "1", "--cpus-per-task", "1", "--time", "10"]
    healthy = submit(TRAIN, tmp_path / "healthy", three, [*TINY, "--max_steps", "5"], OUT_DIR=tmp_path / "o1",
                     **knobs).wait()
    healthy.assert_state("COMPLETED", "0:0")
    assert "hvdlm: preflight passed: 3 ranks on 3 hosts" in healthy.output, healthy.output
    assert "hvdlm: done at step 5/5" in healthy.output

    cluster("slow", "hvdnode2", SLOW_RATE)
    try:
        slowed = submit(TRAIN, tmp_path / "slowed", three, [*TINY, "--max_steps", "5"], OUT_DIR=tmp_path / "o2",
                        **knobs).wait()
    finally:
        cluster("heal", "hvdnode2")
    slowed.assert_state("FAILED", "2:0")
    log = slowed.output
    errors = [line for line in log.splitlines() if line.startswith("hvdlm: error: preflight:")]
    assert len(errors) == 1, log
    assert re.match(r"hvdlm: error: preflight: rank 1 on hvdnode2 is slow: point-to-point [0-9.e-]+ GB/s "
                    r"\(the other ranks: [0-9.e-]+ GB/s\); allreduce busbw [0-9.e-]+ GB/s < threshold "
                    rf"{MIN_BUSBW} GB/s.*--exclude=hvdnode2", errors[0]), errors[0]
    assert "hvdnode1" not in errors[0].split("--exclude")[0] and "hvdnode3" not in errors[0], errors[0]
    assert "preflight failed (exit 2)" in log and "nothing was trained" in log, log
    assert not (tmp_path / "o2" / "checkpoint.pt").exists()
    report = json.loads((tmp_path / "o2" / f"preflight-{slowed.id}.json").read_text())
    print("preflight healthy:", healthy.output.split("# point to point")[1].split("hvdlm:")[0])
    print("preflight slowed:", log.split("# point to point")[1].split("hvdlm:")[0])
    assert report["slow_ranks"] == [1] and not report["passed"], report


# ------------------------------------------------------------------------------------------------
# horovodrun across the hosts, outside SLURM

def test_horovodrun_across_hosts_outside_slurm(slurm_cluster, data, tmp_path):
    out = tmp_path / "out"
    p = cluster("exec", "hvdnode1", BIN / "horovodrun", "-np", "2", "-H", "hvdnode1:1,hvdnode2:1", "--gloo",
                "--verbose", "--start-timeout", "120", BIN / "hvdlm", "train", *TINY, "--max_steps", "10",
                "--data_dir", str(data), "--out_dir", str(out), timeout=240)
    assert re.search(r"ssh .* hvdnode2 .*HOROVOD_HOSTNAME=hvdnode2 HOROVOD_RANK=1 ", p.stdout), p.stdout
    assert "hvdlm: done at step 10/10" in p.stdout, p.stdout + p.stderr
    assert metrics(out, "summary")[-1]["ranks"] == 2


# ------------------------------------------------------------------------------------------------
# Bad input: the job ends within seconds, with one clear line in its output file

def test_bad_input_fails_fast_with_one_line(slurm_cluster, data, tiny_data, tmp_path):
    t0 = time.monotonic()
    no_pkg = submit(TRAIN, tmp_path / "a", two_nodes(), TINY, DATA_DIR=data, OUT_DIR=tmp_path / "oa",
                    PATH="/usr/local/bin:/usr/bin:/bin")
    no_data = submit(TRAIN, tmp_path / "b", two_nodes(), TINY, DATA_DIR=tmp_path / "missing",
                     OUT_DIR=tmp_path / "ob")
    too_many = submit(TRAIN, tmp_path / "c", two_nodes(), [*TINY, "--batch_size", "40"], DATA_DIR=tiny_data,
                      OUT_DIR=tmp_path / "oc", PREFLIGHT=0)
    for job in (no_pkg, no_data, too_many):
        job.wait().assert_state("FAILED", "2:0")
    took = time.monotonic() - t0

    assert re.search(r"^hvdlm: error: hvdlm is not installed on every node of the job \(hvdnode1: no hvdlm "
                     r"command on PATH=\S+; hvdnode2: no hvdlm command", no_pkg.output, re.M), no_pkg.output
    assert re.search(rf"^hvdlm: error: data_dir {tmp_path}/missing does not exist .*hvdlm prepare",
                     no_data.output, re.M), no_data.output
    assert re.search(r"^hvdlm: error: the training split of \S+ holds 65 sequences, fewer than one global "
                     r"batch of 80", too_many.output, re.M), too_many.output
    for job in (no_pkg, no_data, too_many):
        assert "Traceback" not in job.output, job.output
    assert took < 60, f"bad input took {took:.0f}s to fail"
