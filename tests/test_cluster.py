"""A real 2-node SLURM cluster on this machine (slurm/cluster.sh): sbatch with srun --mpi=pmix,
mpirun and horovodrun (Gloo and MPI) across hosts, slowed and cut links, and a stop that leaves
nothing behind. Needs root and `bash slurm/cluster.sh install`; a cluster that cannot start fails
the tests, it does not skip them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import launch_env

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "cluster.sh"
STATE = Path(os.environ.get("HVDLM_CLUSTER_DIR", "/tmp/hvdlm-cluster"))
HOSTS = ["hvdnode1", "hvdnode2"]
DAEMONS = {"slurmctld", "slurmd", "slurmstepd", "slurmscriptd", "munged", "sshd"}
PY = sys.executable
# One line per rank: rank, size, cross_size (number of hosts), and the host it ran on.
# One write() per line: launchers that tag output per rank split lines written in pieces.
PROBE = ("import os, socket, horovod.torch as hvd; hvd.init(); "
         "os.write(1, f'PROBE {hvd.rank()} {hvd.size()} {hvd.cross_size()} {socket.gethostname()}\\n'.encode())")


def env() -> dict:
    e = launch_env()
    e["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")
    return e


def sh(args: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env(), **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(map(str, args))} hung for {timeout}s:\n{e.stdout}\n{e.stderr}")
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def cluster(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return sh(["bash", str(CLUSTER), *args], timeout=timeout, check=check)


def in_host(host: str, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return cluster("exec", host, *cmd, timeout=timeout, check=check)


def probes(output: str) -> list[tuple[int, int, int, str]]:
    rows = re.findall(r"PROBE (\d+) (\d+) (\d+) (\S+)", output)
    return sorted((int(r), int(s), int(c), h) for r, s, c, h in rows)


def assert_one_rank_per_host(output: str) -> None:
    assert probes(output) == [(0, 2, 2, "hvdnode1"), (1, 2, 2, "hvdnode2")], output


def daemons() -> set[int]:
    """Live slurm/munge/sshd processes (a killed one that its parent has yet to reap is not live)."""
    pids = set()
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit() or (p / "comm").read_text().strip() not in DAEMONS:
                continue
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            pids.add(int(p.name))
    return pids


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def snapshot() -> dict:
    return {"hosts": Path("/etc/hosts").read_text(), "netns": netns(), "links": links(),
            "daemons": daemons(), "run_netns": os.path.exists("/run/netns"), "hostname": socket.gethostname()}


@pytest.fixture(scope="module")
def before() -> dict:
    assert os.geteuid() == 0, "the local SLURM cluster needs root (namespaces, a bridge, /etc/hosts)"
    cluster("stop", timeout=60)  # a leftover from an aborted run must not count as ours
    return snapshot()


@pytest.fixture(scope="module")
def up(before):
    t = time.monotonic()
    p = cluster("start", "2", timeout=180, check=False)
    if p.returncode != 0:
        cluster("stop", check=False)
        pytest.fail(f"bash slurm/cluster.sh start 2 failed ({p.returncode}); run "
                    f"'bash slurm/cluster.sh install' first?\n{p.stdout}\n{p.stderr}")
    print(f"cluster up in {time.monotonic() - t:.1f}s")
    yield
    cluster("stop", timeout=60, check=False)


def test_two_idle_nodes_and_hosts_with_their_own_names(up, before):
    nodes = sh(["sinfo", "-h", "-N", "-o", "%N %t %P"]).stdout.split("\n")
    assert sorted(n.split() for n in nodes if n) == [["hvdnode1", "idle", "debug*"], ["hvdnode2", "idle", "debug*"]]
    assert "munged: running" in cluster("status").stdout
    for h in HOSTS:
        assert in_host(h, "hostname").stdout.strip() == h
        assert in_host(h, "sh", "-c", "ip -4 -o addr show eth0").stdout.split()[3].startswith("10.213.0.")
    assert socket.gethostname() == before["hostname"]  # the machine's own name is untouched


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


def test_sbatch_two_nodes_srun_pmix_starts_one_horovod_rank_per_host(up, tmp_path):
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


def test_mpirun_across_hosts(up):
    p = in_host("hvdnode1", "mpirun", "-np", "2", "-H", "hvdnode1,hvdnode2", "--bind-to", "none",
                PY, "-c", PROBE, timeout=120)
    assert_one_rank_per_host(p.stdout)


@pytest.mark.parametrize("controller", ["--gloo", "--mpi"])
def test_horovodrun_from_hvdnode1_across_hosts(up, controller):
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


def test_slow_shapes_the_link_and_heal_restores_it(up, tmp_path):
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


def test_cut_makes_a_host_unreachable_and_heal_brings_it_back(up):
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
    out = sh(["srun", "-N", "2", "hostname"], timeout=60).stdout  # and SLURM still reaches it
    assert sorted(out.split()) == HOSTS


def test_stop_leaves_nothing_behind(up, before):
    t = time.monotonic()
    cluster("stop", timeout=60)
    print(f"cluster stopped in {time.monotonic() - t:.1f}s")
    after = snapshot()
    assert after["hosts"] == before["hosts"]
    assert not {"hvdctl", *HOSTS} & after["netns"], after["netns"]
    assert not {link for link in after["links"] if link.startswith(("hvdbr", "hvdveth"))}, after["links"]
    assert after["daemons"] <= before["daemons"], f"daemons left: {after['daemons'] - before['daemons']}"
    assert after["run_netns"] == before["run_netns"]
    assert not STATE.exists()
    assert cluster("stop").returncode == 0  # stopping twice is fine
