"""Faults across two hosts of the local test cluster (slurm/cluster.sh: network namespaces with
their own names, addresses and sshd): a cut link ends the job within a minute, with one line from
rank 0 naming the host that was cut off (Horovod over Gloo and over MPI); under elastic training
the rank on one host is killed, the other goes on alone and the host comes back. The cluster is
the session's one (tests/support/cluster.py); each host runs on its share of the cores.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from hvdlm import checkpoint
from support.cluster import CLUSTER, cluster
from support.elastic import start_elastic, train_rows
from support.faults import Job
from support.launch import BIN, HVDLM, TINY, check, launch, launch_env
from support.runs import final_params

LIMIT = 60
ACROSS = {  # 2 ranks, one per host, launched from hvdnode1
    "horovodrun-gloo": [str(BIN / "horovodrun"), "-np", "2", "-H", "hvdnode1:1,hvdnode2:1", "--gloo",
                        "--start-timeout", "120"],
    "mpirun": ["mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2", "--bind-to", "none"],
}
FLAGS = [*TINY, "--log_interval", "1", "--eval_interval", "0", "--checkpoint_interval", "10"]


# mpirun notices a daemon on a cut-off host only through TCP keepalive (default: after 300 + 9 x 20 s
# of silence); docs/faults.md recommends these values for jobs across hosts
KEEPALIVE = {"OMPI_MCA_oob_tcp_keepalive_time": "5", "OMPI_MCA_oob_tcp_keepalive_intvl": "2",
             "OMPI_MCA_oob_tcp_keepalive_probes": "3"}


def on_hvdnode1(argv: list[str], workdir: Path, marker: Path) -> Job:
    return Job(["bash", str(CLUSTER), "exec", "hvdnode1", *argv], workdir, env=dict(launch_env(), **KEEPALIVE),
               marker=str(marker)).start()


def logged(out: Path, step: int):
    return lambda: any(r["step"] >= step for r in train_rows(out))


@pytest.mark.parametrize("launcher", ["horovodrun-gloo", "mpirun"])
def test_a_cut_link_ends_the_job_with_one_line_naming_the_host(slurm_cluster, launcher, corpus, tmp_path):
    out = tmp_path / "run"
    job = on_hvdnode1(ACROSS[launcher] + [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(out),
                                          *FLAGS, "--max_steps", "100000"], tmp_path, out)
    try:
        job.wait_until(logged(out, 12), what="step 12")
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
ELASTIC = [*TINY, "--max_steps", str(STEPS), "--log_interval", "5", "--eval_interval", "0",
           "--checkpoint_interval", "50", "--commit_interval", "5"]


def test_elastic_loses_a_host_goes_on_and_takes_it_back(slurm_cluster, corpus, tmp_path):
    """kill -9 of the rank on hvdnode2: the rank on hvdnode1 goes on alone from the last commit
    within seconds; hvdnode2 comes back after its cooldown; the loss keeps falling and the result
    is an uninterrupted 2-rank run's."""
    whole = tmp_path / "whole"
    check(launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(whole), *ELASTIC],
                 timeout=300))
    # what `hvdlm elastic` starts, from hvdnode1, on one slot of each host
    job, out, _ = start_elastic(ELASTIC, corpus, tmp_path / "elastic", "hvdnode1:1\nhvdnode2:1\n",
                                prefix=["bash", str(CLUSTER), "exec", "hvdnode1"], marker=True,
                                network_interface="", host_cooldown=2)

    def rows():
        return train_rows(out)

    def after(size, step):
        return lambda: any(r["ranks"] == size and r["step"] > step for r in rows())

    job.wait_until(lambda: any(r["step"] >= 30 for r in rows()), what="step 30 on 2 ranks")
    victims = job.pids_on_host("hvdnode2")
    assert victims, "no rank found on hvdnode2"
    job.inject(victims[0], signal.SIGKILL)
    job.wait_until(after(1, 0), what="the rank on hvdnode1 going on alone")
    recovered = job.since_fault()
    job.wait_until(after(2, max(r["step"] for r in rows())), what="hvdnode2 back")
    result = job.wait(240)
    assert result.returncode == 0, result.output
    assert recovered < LIMIT, recovered
    sizes = [r["ranks"] for r in rows()]
    assert [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]] == [2, 1, 2], sizes
    loss = {s: [r["loss"] for r in rows() if r["ranks"] == s] for s in (1, 2)}
    back = [r["loss"] for r in rows()[sizes.index(1):] if r["ranks"] == 2]
    assert sum(loss[2][:6]) / 6 > sum(loss[1]) / len(loss[1]) > sum(back) / len(back)
    got = checkpoint.load(out / "checkpoint.pt")["model"]
    for name, ref in final_params(whole).items():
        torch.testing.assert_close(got[name], ref, rtol=1e-4, atol=1e-5, msg=name)
    print(f"elastic: went on at 1 rank {recovered:.1f}s after the kill")
