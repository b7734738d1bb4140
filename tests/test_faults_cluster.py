"""Faults across two hosts of the local test cluster (slurm/cluster.sh: network namespaces with
their own names, addresses and sshd): a cut link ends the job within a minute, with one line from
rank 0 naming the host that was cut off (Horovod over Gloo and over MPI); under elastic training
the rank on one host is killed, the other goes on alone and the host comes back.

Only one cluster can run on this machine. The module fixture waits (polling every 30 s) while a
cluster that is not ours is up, starts its own, and stops it at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import HVDLM, PROBE, TINY, check, launch, launch_env
from faultkit import Job
from hvdlm import checkpoint
from hvdlm.config import FIELDS, _base_type, load_config
from hvdlm.elastic import launch_command
from hvdlm.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "cluster.sh"
STATE = Path(os.environ.get("HVDLM_CLUSTER_DIR", "/tmp/hvdlm-cluster"))
BIN = Path(sys.executable).parent
LIMIT = 60
ACROSS = {  # 2 ranks, one per host, launched from hvdnode1
    "horovodrun-gloo": [str(BIN / "horovodrun"), "-np", "2", "-H", "hvdnode1:1,hvdnode2:1", "--gloo",
                        "--start-timeout", "120"],
    "mpirun": ["mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2", "--bind-to", "none"],
}
# each host claims all of this machine's cores: one thread per rank, or they fight over two cores
FLAGS = [*TINY, "--threads", "1", "--log_interval", "1", "--eval_interval", "0", "--checkpoint_interval", "10"]


def cluster(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout,
                       env=launch_env())
    if check:
        assert p.returncode == 0, f"cluster.sh {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def someone_elses_cluster() -> bool:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return STATE.exists() or any(line.startswith(("hvdctl", "hvdnode")) for line in netns.splitlines())


@pytest.fixture(scope="module")
def hosts():
    assert os.geteuid() == 0, "the local test cluster needs root"
    deadline = time.monotonic() + 1200
    while someone_elses_cluster():  # never stop a cluster we did not start: wait for it
        if time.monotonic() > deadline:
            pytest.fail("another test cluster has been up for 20 minutes (bash slurm/cluster.sh status)")
        time.sleep(30)
    p = cluster("start", "2", timeout=180, check=False)
    if p.returncode != 0:
        pytest.fail(f"bash slurm/cluster.sh start 2 failed ({p.returncode}); if it is ours, "
                    f"`bash slurm/cluster.sh stop` cleans up:\n{p.stdout}\n{p.stderr}")
    try:
        yield
    finally:
        cluster("stop", timeout=90, check=False)


# mpirun notices a daemon on a cut-off host only through TCP keepalive (default: after 300 + 9 x 20 s
# of silence); docs/faults.md recommends these values for jobs across hosts
KEEPALIVE = {"OMPI_MCA_oob_tcp_keepalive_time": "5", "OMPI_MCA_oob_tcp_keepalive_intvl": "2",
             "OMPI_MCA_oob_tcp_keepalive_probes": "3"}


def on_hvdnode1(argv: list[str], workdir: Path, marker: Path) -> Job:
    return Job(["bash", str(CLUSTER), "exec", "hvdnode1", *argv], workdir, env=dict(launch_env(), **KEEPALIVE),
               marker=str(marker)).start()


def logged(out: Path, step: int):
    def done() -> bool:
        path = out / "metrics.jsonl"
        return path.exists() and any(r["step"] >= step for r in read_jsonl(path, "train"))
    return done


@pytest.mark.parametrize("launcher", ["horovodrun-gloo", "mpirun"])
def test_a_cut_link_ends_the_job_with_one_line_naming_the_host(hosts, launcher, corpus, tmp_path):
    out = tmp_path / "run"
    job = on_hvdnode1(ACROSS[launcher] + [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(out),
                                          *FLAGS, "--max_steps", "100000"], tmp_path, out)
    try:
        job.wait_until(logged(out, 12), 180, "step 12")
        cluster("cut", "hvdnode2")
        job.mark_fault()
        result = job.wait(LIMIT + 30)
    finally:
        cluster("heal", "hvdnode2", check=False)
    assert not result.hung, result.output
    assert result.since_fault < LIMIT, f"ended {result.since_fault:.0f}s after the cut"
    lines = result.error_lines()
    assert len(lines) == 1, result.output
    # rank 0 hears no heartbeat for --peer_timeout seconds, or mpirun, which notices the lost daemon
    # first (TCP keepalive), starts ending the job and rank 0 names the silent host on the way out
    assert re.match(r"hvdlm: rank 1 on hvdnode2 (has sent no heartbeat for \d+s \(the last one from .* at step \d+\): "
                    r"it is stopped, hung or cut off from rank 0 on hvdnode1|is gone \(no heartbeat for [\d.]+s\) "
                    r"while rank 0 was in)", lines[0]), lines[0]
    assert result.rank_tracebacks() == 0, result.output
    found = checkpoint.newest_valid(out)
    assert found is not None and found.state["step"] >= 10 and not found.skipped
    print(f"{launcher}: ended {result.since_fault:.1f}s after the cut")


STEPS = 240
ELASTIC = [*TINY, "--threads", "1", "--max_steps", str(STEPS), "--log_interval", "5", "--eval_interval", "0",
           "--checkpoint_interval", "50", "--commit_interval", "5"]


def elastic_job(corpus, tmp_path: Path, out: Path) -> Job:
    """What `hvdlm elastic` starts, from hvdnode1, with each rank run through rank_probe.py, which
    slows every batch a little (HVDLM_PROBE_STEP_SLEEP; horovodrun passes the environment on to
    the other host) so that the host comes back before the run ends."""
    script = tmp_path / "discover.sh"
    script.write_text("#!/bin/sh\necho hvdnode1:1\necho hvdnode2:1\n")
    script.chmod(0o755)
    given = {k.lstrip("-"): v for k, v in zip(ELASTIC[::2], ELASTIC[1::2])}
    given.update(data_dir=str(corpus), out_dir=str(out), min_ranks=1, max_ranks=2, discovery_script=str(script))
    cfg = load_config(None, {k: _base_type(FIELDS[k][1])(v) for k, v in given.items()})
    cmd = launch_command(cfg, given, np=2, network_interface="", host_cooldown=2, config_file=None)
    at = cmd.index("-m")
    cmd = cmd[:at] + [PROBE, "fault", "unused", "--"] + cmd[at + 3:]
    env = dict(launch_env(), HVDLM_PROBE_STEP_SLEEP="0.03")
    return Job(["bash", str(CLUSTER), "exec", "hvdnode1", *cmd], tmp_path, env=env, marker=str(out)).start()


def test_elastic_loses_a_host_goes_on_and_takes_it_back(hosts, corpus, tmp_path):
    """kill -9 of the rank on hvdnode2: the rank on hvdnode1 goes on alone from the last commit
    within seconds; hvdnode2 comes back after its cooldown; the loss keeps falling and the result
    is an uninterrupted 2-rank run's."""
    whole = tmp_path / "whole"
    check(launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(whole), *ELASTIC],
                 timeout=300))
    out = tmp_path / "run"
    job = elastic_job(corpus, tmp_path, out)

    def rows():
        path = out / "metrics.jsonl"
        return read_jsonl(path, "train") if path.exists() else []

    def after(size, step):
        return lambda: any(r["ranks"] == size and r["step"] > step for r in rows())

    job.wait_until(lambda: any(r["step"] >= 30 for r in rows()), 180, "step 30 on 2 ranks")
    victims = job.pids_on_host("hvdnode2")
    assert victims, "no rank found on hvdnode2"
    job.inject(victims[0], signal.SIGKILL)
    job.wait_until(after(1, 0), 60, "the rank on hvdnode1 going on alone")
    recovered = job.since_fault()
    job.wait_until(after(2, max(r["step"] for r in rows())), 150, "hvdnode2 back")
    result = job.wait(240)
    assert result.returncode == 0, result.output
    assert recovered < LIMIT, recovered
    sizes = [r["ranks"] for r in rows()]
    assert [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]] == [2, 1, 2], sizes
    loss = {s: [r["loss"] for r in rows() if r["ranks"] == s] for s in (1, 2)}
    back = [r["loss"] for r in rows()[sizes.index(1):] if r["ranks"] == 2]
    assert sum(loss[2][:6]) / 6 > sum(loss[1]) / len(loss[1]) > sum(back) / len(back)
    got = checkpoint.load(out / "checkpoint.pt")["model"]
    for name, ref in torch.load(whole / "checkpoint.pt", weights_only=True)["model"].items():
        torch.testing.assert_close(got[name], ref, rtol=1e-4, atol=1e-5, msg=name)
    print(f"elastic: went on at 1 rank {recovered:.1f}s after the kill")
