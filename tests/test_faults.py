"""Faults on real ranks: every one ends the job quickly, with one line naming the cause, and the
last checkpoint loads; where the run resumes, it reaches an uninterrupted run's parameters.

Two ranks on this machine under horovodrun (Gloo) and mpirun; the faults are real: kill -9 and
SIGSTOP of a rank's process, an exception on one rank, a rank that stops making progress, rank 0
killed while it writes a checkpoint, a corrupt data shard. tests/support/faults.py is the harness (also
behind the fault matrix in docs/faults.md); tests/rank_probe.py injects the in-process faults.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support.launch import HVDLM, LAUNCHERS, PROBE, TINY, check, launch, launch_env
from support.faults import Job
from support.runs import reference_params, saved
from hvdlm import checkpoint, watchdog
from hvdlm.metrics import read_jsonl

HOST = socket.gethostname()
LIMIT = 60  # seconds from the fault to the end of the job: the target
TRIALS = Path(__file__).parent / "checkpoint_trials.py"


def train_flags(corpus, out: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(corpus), "--out_dir", str(out), *TINY, "--max_steps", "100000", "--log_interval", "1",
            "--eval_interval", "0", "--checkpoint_interval", "4", *extra]


def start(launcher: str, flags: list[str], workdir: Path, **env) -> Job:
    cmd = LAUNCHERS[launcher] + [sys.executable, PROBE, "fault", "unused", "--", *flags]
    return Job(cmd, workdir, env=dict(launch_env(), **env)).start()


def trained(out: Path, step: int):
    """A predicate: rank 0 has logged this step."""
    def done() -> bool:
        path = out / "metrics.jsonl"
        return path.exists() and any(r.get("step", 0) >= step for r in read_jsonl(path, "train"))
    return done


def assert_ended_with_one_line(result, *words: str) -> str:
    assert not result.hung, f"still running {LIMIT}s after the fault:\n{result.output}"
    assert result.since_fault < LIMIT, f"ended {result.since_fault:.0f}s after the fault"
    lines = result.error_lines()
    assert len(lines) == 1, result.output
    for pattern in words:  # regular expressions
        assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    assert result.rank_tracebacks() == 0, result.output
    assert not result.leftovers, result.leftovers
    return lines[0]


def assert_last_checkpoint_loads(out: Path) -> dict:
    found = checkpoint.newest_valid(out)
    assert found is not None and not found.skipped, found and found.note()
    assert found.state["step"] >= 4
    return found.state


# --- kill -9 and SIGSTOP of a rank --------------------------------------------------------------

@pytest.mark.parametrize("launcher, code", [("horovodrun-gloo", 1), ("mpirun", 137)])
def test_kill_9_a_rank(launcher, code, corpus, tmp_path):
    out = tmp_path / "run"
    job = start(launcher, train_flags(corpus, out), tmp_path)
    job.wait_until(trained(out, 9), what="step 9")
    job.inject(job.rank_pid(1), signal.SIGKILL)
    result = job.wait(LIMIT)
    assert result.returncode == code, result.output  # horovodrun: 1 always; mpirun: the killed rank's 128+9
    assert_ended_with_one_line(result, rf"^hvdlm: rank 1 on {HOST} is gone \(its process ended\) while rank 0 was in")
    assert result.since_fault < 10
    assert_last_checkpoint_loads(out)


@pytest.mark.parametrize("launcher, code", [("horovodrun-gloo", 1), ("mpirun", watchdog.EXIT_STALLED)])
def test_sigstop_a_rank(launcher, code, corpus, tmp_path):
    """A stopped peer: Horovod over MPI would wait forever, Gloo for 30 s and then print a
    traceback on every rank. The watchdog hears no heartbeat for --peer_timeout seconds."""
    out = tmp_path / "run"
    job = start(launcher, train_flags(corpus, out, "--peer_timeout", "5"), tmp_path)
    job.wait_until(trained(out, 9), what="step 9")
    job.inject(job.rank_pid(1), signal.SIGSTOP)
    result = job.wait(LIMIT)
    assert result.returncode == code, result.output
    line = assert_ended_with_one_line(result, rf"^hvdlm: rank 1 on {HOST} has sent no heartbeat for [56]s",
                                      "stopped, hung or cut off", "error-rank0.log")
    assert 5 <= result.since_fault < 15, line
    assert "stacks of this rank's threads" in (out / "error-rank0.log").read_text()
    assert_last_checkpoint_loads(out)


def test_a_rank_that_stops_making_progress_names_itself(corpus, tmp_path):
    """Rank 1 hangs while loading data (a hung file system): its own watchdog fires after
    --step_timeout and names the phase; rank 0, waiting in the allreduce, stays quiet."""
    out = tmp_path / "run"
    # training batch 9 of rank 1 (one micro-step a step): the one of step 9, after step 8 is done
    job = start("mpirun", train_flags(corpus, out, "--step_timeout", "6"), tmp_path, HVDLM_PROBE_FAULT="1:9:hang")
    job.wait_until(trained(out, 5), what="step 5")
    job.mark_fault()
    result = job.wait(LIMIT)
    assert result.returncode == watchdog.EXIT_STALLED, result.output
    assert_ended_with_one_line(result, rf"^hvdlm: rank 1 on {HOST}: no progress for [67]s while data loading at step 8")
    assert_last_checkpoint_loads(out)


# --- faults the run resumes from -----------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """The reference: 2 ranks (Gloo), 12 steps without a fault."""
    return reference_params(tmp_path_factory, lambda out: [*train_flags(corpus, out), "--max_steps", "12"])


def resume_and_compare(corpus, out: Path, reference: dict, from_step: int) -> None:
    run = check(launch("horovodrun-gloo", [HVDLM, "train", *train_flags(corpus, out), "--max_steps", "12"]))
    assert f"resuming at step {from_step}" in run.output, run.output
    got = saved(out)
    assert got["step"] == 12
    for name, ref in reference.items():
        torch.testing.assert_close(got["model"][name], ref, rtol=1e-6, atol=1e-7, msg=name)


def test_exception_on_one_rank_then_resume(corpus, tmp_path, uninterrupted):
    """Rank 1 raises in step 6: one line with its message, every rank ends; the run resumes from
    the step-4 checkpoint and reaches the uninterrupted run's parameters at step 12."""
    out = tmp_path / "run"
    job = start("horovodrun-gloo", train_flags(corpus, out, "--max_steps", "12"), tmp_path,
                HVDLM_PROBE_FAULT="1:6:raise")
    job.mark_fault()
    result = job.wait(120)
    assert result.returncode == 1
    assert_ended_with_one_line(result, rf"^hvdlm: rank 1 on {HOST} failed: RuntimeError: injected fault at batch 6")
    assert assert_last_checkpoint_loads(out)["step"] == 4
    resume_and_compare(corpus, out, uninterrupted, 4)


@pytest.mark.parametrize("launcher", ["horovodrun-gloo", "mpirun"])
def test_kill_rank_0_while_it_writes_a_checkpoint_then_resume(launcher, corpus, tmp_path, uninterrupted):
    """Rank 0 dies in the middle of writing the step-8 checkpoint (writes slowed to ~3 s):
    rank 1 names it, checkpoint.pt is still the complete step-4 one, and the resumed run reaches
    the uninterrupted run's parameters."""
    out = tmp_path / "run"
    job = start(launcher, train_flags(corpus, out, "--max_steps", "12"), tmp_path, HVDLM_PROBE_SLOW_SAVE="3")
    job.wait_until(lambda: (out / "checkpoint.pt").exists() and any(out.glob(".checkpoint-step00000008*.tmp")),
                   120, "rank 0 writing the step-8 checkpoint")
    time.sleep(0.5)
    job.inject(job.rank_pid(0), signal.SIGKILL)
    result = job.wait(LIMIT)
    assert result.returncode != 0
    assert_ended_with_one_line(result, rf"^hvdlm: rank 0 on {HOST} is gone \(its process ended\) while rank 1 was in")
    assert list(out.glob(".checkpoint*.tmp")), "the kill did not land in the write"
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 4
    resume_and_compare(corpus, out, uninterrupted, 4)
    assert not list(out.glob(".checkpoint*.tmp"))  # the next save cleared the half-written file


def test_no_broken_or_lost_checkpoint_over_20_kills_during_writes(tmp_path):
    run = subprocess.run([sys.executable, str(TRIALS), str(tmp_path), "20", "7"], capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["killed_mid_write"] >= 20, report
    assert report["broken"] == 0 and report["lost"] == 0, report
    assert report["left_a_temporary_file"] >= 10  # most kills really cut a file short


def test_resume_skips_a_damaged_checkpoint_and_says_so(corpus, tmp_path):
    out = tmp_path / "run"
    check(launch("single", [HVDLM, "train", *train_flags(corpus, out), "--max_steps", "8"]))
    newest = checkpoint.step_path(out, 8)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit... byte, in the middle: torch.load may not notice
    newest.write_bytes(bytes(data))  # (checkpoint.pt is the same file: damaged too)
    run = check(launch("mpirun", [HVDLM, "train", *train_flags(corpus, out), "--max_steps", "10"]))
    assert "hvdlm: skipped damaged checkpoint(s): checkpoint.pt (" in run.output, run.output
    assert "resuming from checkpoint-step00000004.pt (step 4)" in run.output
    assert "resuming at step 4" in run.output


# --- bad data and bad options ---------------------------------------------------------------------

def test_corrupt_data_shard_is_one_error_before_training(corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    with open(data / "train.bin", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff\xff" * 64)
    job = Job(LAUNCHERS["mpirun"] + [HVDLM, "train", *train_flags(data, tmp_path / "run")], tmp_path,
              env=launch_env()).start()
    job.mark_fault()
    result = job.wait(LIMIT)
    assert result.returncode == 2
    assert_ended_with_one_line(result, "^hvdlm: error:", r"train\.bin does not match its sha256")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


@pytest.mark.parametrize("launcher, flag, value, message", [
    ("horovodrun-gloo", "--step_timeout", "0", "step_timeout must be positive, got 0.0"),
    ("single", "--step_timeout", "-5", "step_timeout must be positive, got -5.0"),
    ("single", "--peer_timeout", "0", "peer_timeout must be positive"),
    ("single", "--keep_checkpoints", "0", "keep_checkpoints must be >= 1"),
])
def test_bad_watchdog_and_checkpoint_options(launcher, flag, value, message, tmp_path):
    run = launch(launcher, [HVDLM, "train", flag, value, "--out_dir", str(tmp_path)])
    assert run.returncode != 0 and run.seconds < LIMIT
    lines = [line for line in run.output.splitlines() if "hvdlm: error:" in line]
    assert len(lines) == 1 and message in lines[0], run.output


# --- the watchdog in one process --------------------------------------------------------------------

def pair(tmp_path, peer_timeout=1.0, step_timeout=None):
    """Rank 0 and rank 1 watchdogs in this process, talking over UDP like two ranks."""
    exits = {0: [], 1: []}
    dogs = [watchdog.Watchdog(r, 2, HOST, str(tmp_path), step_timeout, peer_timeout, exit_fn=exits[r].append)
            for r in (0, 1)]
    everyone = [d.address() for d in dogs]
    for d in dogs:
        d.connect(everyone)
        d._stop.clear()
        d._thread = __import__("threading").Thread(target=d._run, daemon=True)
        d._thread.start()
    return dogs, exits


def wait_for(cond, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def test_a_silent_peer_is_named_within_the_peer_timeout(tmp_path, capfd):
    (w0, w1), exits = pair(tmp_path)
    w1.step, w1.phase_name = 7, "forward/backward"
    time.sleep(1.2)  # heartbeats flow
    assert not exits[0] and not exits[1]
    w1._stop.set()  # rank 1 falls silent (as if stopped) without saying goodbye
    assert wait_for(lambda: exits[0], 4), "rank 0 did not notice"
    assert exits[0] == [watchdog.EXIT_STALLED]
    err = capfd.readouterr().err
    assert re.search(rf"hvdlm: rank 1 on {HOST} has sent no heartbeat for [12]s \(the last one from "
                     r"forward/backward at step 7\)", err), err
    w0.stop()


def test_a_rank_stopped_just_after_it_listened_stays_quiet_when_continued(tmp_path, capfd):
    """SIGSTOP of rank 1 can fall between its wait for datagrams and its check. Rank 0 names it
    and says goodbye; when rank 1 is continued (the launcher ending the job) it must read that
    goodbye, not take rank 0's silence while it was stopped for a second fault (CI, 2026-12-07:
    two lines, one from each rank)."""
    (w0, w1), exits = pair(tmp_path, peer_timeout=1.0)
    w0.exit_fn = lambda status: (exits[0].append(status), w0._stop.set())  # rank 0's process ends
    stop_now, listened = __import__("threading").Event(), w1.wire.wait

    def listen_then_stop(timeout):
        got = listened(timeout)
        if stop_now.is_set():
            stop_now.clear()
            time.sleep(5 * watchdog.INTERVAL + 3)  # stopped: the clock runs on, the thread does not
        return got

    w1.wire.wait = listen_then_stop
    assert wait_for(lambda: w0.peers[1].heard and w1.peers[0].heard, 10), "no heartbeat flowed"
    stop_now.set()
    assert wait_for(lambda: exits[0], 4), "rank 0 did not notice"
    assert wait_for(lambda: w1.peers[0].left is not None, 8), "rank 1 never read rank 0's goodbye"
    time.sleep(1.5)  # past the peer timeout after rank 1 is continued
    assert exits[1] == []
    assert len(re.findall("has sent no heartbeat", capfd.readouterr().err)) == 1
    w1._stop.set()


def test_a_peer_that_said_why_it_failed_keeps_the_others_quiet(tmp_path):
    (w0, w1), _ = pair(tmp_path)
    time.sleep(0.8)
    w1.stop("failed: RuntimeError: boom")
    assert wait_for(lambda: w0.peers[1].left is not None, 2)
    verdict = w0.explain_peer_failure(wait=0.1)
    assert verdict.line is None and "boom" in verdict.cause
    w0.stop()


def test_the_automatic_limit_follows_the_step_time():
    w = watchdog.Watchdog(0, 1, HOST, ".", None, 20)
    assert w.limit() == watchdog.STARTUP_SECONDS  # nothing measured yet
    w.phase("forward/backward")
    for step in range(1, 10):
        w.step_started -= 0.01  # 10 ms steps
        w.step_done(step)
    assert w.limit() == watchdog.FLOOR_SECONDS
    w.step_times.extend([20.0] * 50)  # 20 s steps
    assert w.limit() == pytest.approx(200.0)
    w.phase("checkpointing")
    assert w.limit() == watchdog.STARTUP_SECONDS
    w = watchdog.Watchdog(0, 1, HOST, ".", 7.5, 20)
    assert w.limit() == watchdog.STARTUP_SECONDS  # starting up: at least that, whatever the option says
    w.phase("allreduce")
    assert w.limit() == 7.5


def test_waiting_on_a_peer_that_writes_a_long_checkpoint_is_not_a_stall(tmp_path):
    """Rank 1 waits in the allreduce past its limit while rank 0, alive, writes a checkpoint:
    rank 0's own (longer) checkpointing limit is what counts."""
    (w0, w1), exits = pair(tmp_path, peer_timeout=5.0, step_timeout=1.0)
    w0.phase("checkpointing")
    w1.phase("allreduce")
    time.sleep(3.0)
    assert not exits[0] and not exits[1]
    w0._stop.set()
    w1._stop.set()


def test_a_peer_never_heard_from_is_not_taken_for_dead(tmp_path, capfd):
    """UDP blocked between two hosts: no heartbeat ever arrives. That must not end a healthy job;
    rank 0 warns once and the progress limit still applies."""
    exits = []
    w0 = watchdog.Watchdog(0, 2, HOST, str(tmp_path), None, 1.0, exit_fn=exits.append)
    ghost = {"rank": 1, "host": "elsewhere", "pid": 1, "machine": "another", "addresses": ["192.0.2.1"],
             "port": 9, "job": "x"}
    w0.connect([w0.address(), ghost])
    w0._thread = __import__("threading").Thread(target=w0._run, daemon=True)
    w0._thread.start()
    time.sleep(2.5)
    assert not exits
    assert "hvdlm: warning: rank 0 on" in capfd.readouterr().err
    w0._stop.set()


def test_a_stall_in_this_rank_fires_with_its_phase(tmp_path, capfd):
    exits = []
    w = watchdog.Watchdog(0, 1, HOST, str(tmp_path), 1.0, 20, exit_fn=exits.append)
    w._thread = __import__("threading").Thread(target=w._run, daemon=True)
    w._thread.start()
    w.phase("data loading")
    assert wait_for(lambda: exits, 3)
    assert re.search(rf"hvdlm: rank 0 on {HOST}: no progress for [12]s while data loading at step 0",
                     capfd.readouterr().err)
    assert "data loading" in (tmp_path / "error-rank0.log").read_text()
    w._stop.set()
