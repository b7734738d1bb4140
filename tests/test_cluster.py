"""A real SLURM cluster on this machine (slurm/cluster.sh, the session's one, 3 hosts): each host
pinned to its share of the cores, sbatch with srun --mpi=pmix, mpirun and horovodrun (Gloo and
MPI) across hosts, slowed and cut links, and a stop that leaves nothing behind. Needs root and `bash slurm/cluster.sh install`; a cluster that cannot start fails
the tests, it does not skip them."""

from __future__ import annotations

import ast
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.cluster import (CLUSTER, STATE, TestCluster, cluster, env, in_host, ns_pids, running_hosts,
                             snapshot, sh)
from support.procs import kill_until_gone

PY = sys.executable
# One line per rank: rank, size, cross_size (number of hosts), and the host it ran on.
# One write() per line: launchers that tag output per rank split lines written in pieces.
PROBE = ("import os, socket, horovod.torch as hvd; hvd.init(); "
         "os.write(1, f'PROBE {hvd.rank()} {hvd.size()} {hvd.cross_size()} {socket.gethostname()}\\n'.encode())")
# What a rank may use on each host, and the threads hvdlm gives it (slurm/cluster.sh pins each host
# to its share of this machine's cores; sbatch/srun add SLURM_CPUS_PER_TASK).
SHARE = ("import os, socket; from hvdlm.distributed import cores_per_rank; "
         "os.write(1, f'SHARE {socket.gethostname()} {sorted(os.sched_getaffinity(0))} {cores_per_rank(1)}\\n'.encode())")


def probes(output: str) -> list[tuple[int, int, int, str]]:
    rows = re.findall(r"PROBE (\d+) (\d+) (\d+) (\S+)", output)
    return sorted((int(r), int(s), int(c), h) for r, s, c, h in rows)


def assert_one_rank_per_host(output: str) -> None:
    assert probes(output) == [(0, 2, 2, "hvdnode1"), (1, 2, 2, "hvdnode2")], output


def test_idle_nodes_and_hosts_with_their_own_names(slurm_cluster):
    nodes = sh(["sinfo", "-h", "-N", "-o", "%N %t %P"]).stdout.split("\n")
    assert sorted(n.split() for n in nodes if n) == [[h, "idle", "debug*"] for h in slurm_cluster.hosts]
    assert "munged: running" in cluster("status").stdout
    for h in slurm_cluster.hosts:
        assert in_host(h, "hostname").stdout.strip() == h
        assert in_host(h, "sh", "-c", "ip -4 -o addr show eth0").stdout.split()[3].startswith("10.213.0.")
    assert socket.gethostname() == slurm_cluster.machine_hostname  # the machine's own name is untouched


def shares(output: str) -> dict[str, tuple[list[int], int]]:
    return {h: (ast.literal_eval(cpus), int(n)) for h, cpus, n in re.findall(r"SHARE (\S+) (\[[\d, ]*\]) (\d+)", output)}


def test_each_host_runs_on_its_share_of_the_cores_and_ranks_size_their_threads_to_it(slurm_cluster):
    """N hosts on a machine of C cores: each host's processes (sshd, slurmd and what they start) may
    run on max(1, C // N) of them, hvdnode1 and hvdnode2 on different ones, and a rank runs that
    many threads, not C (2 hosts x 2 threads on 2 cores made every job crawl)."""
    allowed = sorted(os.sched_getaffinity(0))
    share = max(1, len(allowed) // len(slurm_cluster.hosts))
    outside = {h: shares(in_host(h, PY, "-c", SHARE).stdout)[h] for h in slurm_cluster.hosts}
    for h, (cpus, threads) in outside.items():
        assert len(cpus) == share and set(cpus) <= set(allowed) and threads == share, outside
    if len(allowed) >= 2:
        assert not set(outside["hvdnode1"][0]) & set(outside["hvdnode2"][0]), outside
    # a job step started by each host's slurmd, and a process started over each host's sshd
    step = sh(["srun", "-N", len(slurm_cluster.hosts), "--ntasks-per-node", "1", PY, "-c", SHARE], timeout=120)
    assert shares(step.stdout) == outside, step.stdout
    ssh = in_host("hvdnode1", "ssh", "hvdnode2", PY, "-c", shlex.quote(SHARE), timeout=60)
    assert shares(ssh.stdout) == {"hvdnode2": outside["hvdnode2"]}, ssh.stdout


def wait_job(job: str, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = sh(["scontrol", "show", "job", "-o", job]).stdout
        state = re.search(r"JobState=(\S+)", info).group(1)
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return info
        time.sleep(0.5)
    sh(["scancel", job], check=False)
    pytest.fail(f"job {job} did not finish in {timeout}s:\n{info}")


def test_sbatch_two_nodes_srun_pmix_starts_one_horovod_rank_per_host(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nsrun --mpi=pmix {PY} -c \"{PROBE}\"\n")
    out = tmp_path / "job.out"
    job = sh(["sbatch", "--parsable", "-N", "2", "--ntasks-per-node", "1", "-o", str(out),
              "-D", str(tmp_path), str(script)]).stdout.strip().split(";")[0]
    info = wait_job(job)
    log = out.read_text() if out.exists() else "(no output file)"
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info + log
    assert "NodeList=hvdnode[1-2]" in info, info
    assert_one_rank_per_host(log)


def test_mpirun_across_hosts(slurm_cluster):
    p = in_host("hvdnode1", "mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2", "--bind-to", "none",
                PY, "-c", PROBE, timeout=120)
    assert_one_rank_per_host(p.stdout)


@pytest.mark.parametrize("controller", ["--gloo", "--mpi"])
def test_horovodrun_from_hvdnode1_across_hosts(slurm_cluster, controller):
    # --disable-cache: do horovodrun's ssh and network-interface checks every time, across both hosts
    p = in_host("hvdnode1", str(Path(PY).parent / "horovodrun"), "-np", "2", "-H", "hvdnode1:1,hvdnode2:1",
                controller, "--disable-cache", "--start-timeout", "120", PY, "-c", PROBE, timeout=240)
    assert_one_rank_per_host(p.stdout)


BW = """
import socket, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "recv":
    s = socket.create_server(("0.0.0.0", 5999)); c, _ = s.accept(); got = 0
    while got < n:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
    c.sendall(b"k")
else:
    end = time.monotonic() + 20
    while True:
        try:
            c = socket.create_connection(("hvdnode2", 5999), timeout=30); break
        except OSError:
            if time.monotonic() > end: raise
            time.sleep(0.1)
    t = time.monotonic(); c.sendall(b"x" * n); c.recv(1)
    print(n / (time.monotonic() - t) / 1e6)
"""


def bandwidth(tmp_path, nbytes: int) -> float:
    """MB/s of one TCP transfer from hvdnode1 to hvdnode2."""
    script = tmp_path / "bw.py"
    script.write_text(BW)
    recv = subprocess.Popen(["bash", str(CLUSTER), "exec", "hvdnode2", PY, str(script), "recv", str(nbytes)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        send = in_host("hvdnode1", PY, str(script), "send", str(nbytes), timeout=60)
        assert recv.wait(timeout=30) == 0, recv.stdout.read()
    finally:
        if recv.poll() is None:
            recv.kill()
    return float(send.stdout.strip().splitlines()[-1])


def test_slow_shapes_the_link_and_heal_restores_it(slurm_cluster, tmp_path):
    fast = bandwidth(tmp_path, 16_000_000)
    cluster("slow", "hvdnode2", "40mbit")
    try:
        assert "slowed to 40Mbit" in cluster("status").stdout
        slow = bandwidth(tmp_path, 2_000_000)  # 40 Mbit/s = 5 MB/s: ~0.4 s
    finally:
        cluster("heal", "hvdnode2")
    healed = bandwidth(tmp_path, 16_000_000)
    print(f"MB/s: {fast:.0f} unshaped, {slow:.1f} at 40mbit, {healed:.0f} healed")
    assert slow < 7, slow
    assert fast > 5 * slow and healed > 5 * slow, (fast, slow, healed)


def reachable(src: str, dst: str) -> bool:
    code = f"import socket; socket.create_connection(('{dst}', 22), timeout=2).close()"
    return in_host(src, PY, "-c", code, check=False).returncode == 0


def test_cut_makes_a_host_unreachable_and_heal_brings_it_back(slurm_cluster):
    assert reachable("hvdnode1", "hvdnode2")
    cluster("cut", "hvdnode2")
    try:
        assert not reachable("hvdnode1", "hvdnode2")
        assert "link DOWN" in [line for line in cluster("status").stdout.splitlines() if "hvdnode2" in line][0]
    finally:
        cluster("heal", "hvdnode2")
    end = time.monotonic() + 15
    while not reachable("hvdnode1", "hvdnode2"):
        assert time.monotonic() < end, "hvdnode2 still unreachable after heal"
    out = sh(["srun", "-w", "hvdnode1,hvdnode2", "hostname"], timeout=60).stdout  # and SLURM still reaches it
    assert sorted(out.split()) == ["hvdnode1", "hvdnode2"]


def test_a_dead_clusters_namespaces_are_cleared_and_a_cluster_started(slurm_cluster):
    """What a killed cluster leaves (namespaces, /etc/hosts lines, its state directory, nothing alive
    in them; a machine restored from a snapshot of a running cluster looks the same) is not taken for
    a running cluster: the session clears it and starts its own (a CI run once used such leftovers
    and every cluster test failed on a controller that was not there)."""
    if not slurm_cluster.ours:  # someone else's cluster: not ours to kill
        pytest.skip("the running test cluster was not started by this session: not ours to kill")
    names = ["hvdctl", *slurm_cluster.hosts]
    left = kill_until_gone(lambda: [p for h in names for p in ns_pids(h)])
    assert not left, f"still alive in the hosts: {left}"
    assert sh(["sinfo", "-h"], check=False).returncode != 0  # dead indeed
    assert running_hosts() == slurm_cluster.hosts  # yet its namespaces remain
    c = TestCluster().open()
    assert c.ours and c.hosts == slurm_cluster.hosts
    nodes = sh(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.split("\n")
    assert sorted(n.split() for n in nodes if n) == [[h, "idle"] for h in slurm_cluster.hosts]
    assert_one_rank_per_host(in_host("hvdnode1", "mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2",
                                     "--bind-to", "none", PY, "-c", PROBE, timeout=120).stdout)


def test_stop_leaves_nothing_behind(slurm_cluster):
    if not slurm_cluster.ours:  # never stop someone else's cluster (nor can we tell what it added)
        pytest.skip("the running test cluster was not started by this session: not ours to stop")
    before = slurm_cluster.before
    t = time.monotonic()
    slurm_cluster.stop(check=True)  # the next test that needs the cluster starts it again
    print(f"cluster stopped in {time.monotonic() - t:.1f}s")
    after = snapshot()
    assert after["hosts"] == before["hosts"]
    assert not {"hvdctl", *slurm_cluster.hosts} & after["netns"], after["netns"]
    assert not {link for link in after["links"] if link.startswith(("hvdbr", "hvdveth"))}, after["links"]
    assert after["daemons"] <= before["daemons"], f"daemons left: {after['daemons'] - before['daemons']}"
    assert after["run_netns"] == before["run_netns"]
    assert not STATE.exists()
    assert cluster("stop").returncode == 0  # stopping twice is fine


def test_diloco_across_3_hosts_each_rank_writes_its_own_file_and_a_resume_is_exact(slurm_cluster, corpus, tmp_path):
    """3 hosts, one rank each, DiLoCo with an int8 exchange (uneven chunks): stopped between syncs,
    each rank's own state goes to its own file from its own host; the resume reproduces an unbroken
    run's losses and parameters."""
    from support.runs import G12, assert_same_params, flags, losses

    def train(out, *extra):
        return in_host("hvdnode1", str(Path(PY).parent / "horovodrun"), "-np", "3", "-H",
                       "hvdnode1:1,hvdnode2:1,hvdnode3:1", "--gloo", "--start-timeout", "120",
                       str(Path(PY).parent / "hvdlm"), "train",
                       *flags(corpus, out, "--sync", "diloco", "--sync_every", "3", "--compression", "int8", *G12),
                       *extra, timeout=300)

    whole, split = tmp_path / "whole", tmp_path / "split"
    train(whole)
    first = train(split, "--stop_after", "5")
    assert "3 rank(s) on hvdnode1 (rank 0), hvdnode2 (rank 1), hvdnode3 (rank 2)" in first.stdout, first.stdout
    assert sorted(p.name for p in (split / "ranks").iterdir()) == [
        f"step00000005-rank{r:05d}-of00003.pt" for r in range(3)]
    resumed = train(split)
    assert "resuming at step 5" in resumed.stdout
    expected, got = losses(whole), losses(split)
    for step in range(6, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert_same_params(split, whole, rtol=1e-6, atol=1e-7)
