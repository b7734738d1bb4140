"""The local SLURM test cluster (slurm/cluster.sh): one per machine, shared by every test that
needs it (tests/test_cluster.py, test_faults_cluster.py, test_slurm.py) through one session
fixture. It starts a cluster only when none is running and stops only a cluster it started: a
cluster someone else brought up is used as it is and left up. Namespaces with nothing alive in them
are not a cluster but what a killed one left (a machine restored from a snapshot of a running one
has them): they are cleared and a cluster of ours is started."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .launch import launch_env
from .procs import alive, daemons

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "slurm" / "cluster.sh"
STATE = Path(os.environ.get("HVDLM_CLUSTER_DIR", "/tmp/hvdlm-cluster"))
SIZE = 3  # hosts: test_slurm tells a slow host from its two partners
DAEMONS = {"slurmctld", "slurmd", "slurmstepd", "slurmscriptd", "munged", "sshd"}


def env(**extra) -> dict:
    e = launch_env()
    e["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")
    # the cluster's ssh (for horovodrun between hosts) first on PATH, then the venv
    e["PATH"] = f"{STATE / 'bin'}{os.pathsep}{e['PATH']}"
    # The hosts share this machine's 2 cores: MPI ranks that spin while they wait starve each other
    e["OMPI_MCA_mpi_yield_when_idle"] = "1"
    e.update(extra)
    return e


def sh(args: list, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", env())
    try:
        p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(map(str, args))} hung for {timeout}s:\n{e.stdout}\n{e.stderr}")
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def cluster(*args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """bash slurm/cluster.sh ARGS..."""
    return sh(["bash", CLUSTER, *args], timeout=timeout, check=check)


def in_host(host: str, *cmd, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return cluster("exec", host, *cmd, timeout=timeout, check=check)


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def ns_pids(name: str) -> list[int]:
    """The live processes in network namespace ``name``."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if alive(int(p))]


def running_hosts() -> list[str]:
    """The compute hosts of a cluster that is up (whoever started it), in order."""
    return sorted((n for n in netns() if n.startswith("hvdnode")), key=lambda n: int(n[len("hvdnode"):]))


def snapshot() -> dict:
    """What a stopped cluster must leave as it was."""
    return {"hosts": Path("/etc/hosts").read_text(), "netns": netns(), "links": links(),
            "daemons": daemons(DAEMONS), "run_netns": os.path.exists("/run/netns"), "hostname": socket.gethostname()}


class TestCluster:
    """The cluster the tests run on; ``ours``: this session started it (and so may stop it)."""

    __test__ = False  # not a test class

    def __init__(self):
        assert os.geteuid() == 0, "the local SLURM cluster needs root (namespaces, a bridge, /etc/hosts)"
        self.machine_hostname = socket.gethostname()
        self.before: dict | None = None  # the machine before our start
        self.ours = False
        self.up = False
        self.hosts: list[str] = []

    def open(self) -> "TestCluster":
        found = running_hosts()
        if found and self.dead(found):
            print(f"a dead test cluster's namespaces ({', '.join(found)}): nothing runs in them; "
                  "clearing them and starting ours")
            cluster("stop", timeout=90)
            found = running_hosts()
        if found:  # someone's (a developer's, an aborted session's): use it, never stop it
            if len(found) < SIZE:
                pytest.fail(f"a test cluster with {len(found)} host(s) is running; the tests need {SIZE}: "
                            f"stop it (bash slurm/cluster.sh stop) if it is yours, or start it with {SIZE}")
            self.hosts, self.up = found, True
            return self
        self.start()
        return self

    @staticmethod
    def dead(hosts: list[str]) -> bool:
        """Nothing alive in the controller's namespace nor any host's, three times 2 s apart (a
        cluster being started has namespaces for a moment before its daemons)."""
        for attempt in range(3):
            if any(ns_pids(h) for h in ["hvdctl", *hosts]):
                return False
            if attempt < 2:
                time.sleep(2)
        return True

    def start(self) -> None:
        self.before = snapshot()
        t = time.monotonic()
        p = cluster("start", SIZE, timeout=240, check=False)
        self.ours = True  # even a failed start may have left pieces: ours to clean up
        if p.returncode != 0:
            self.close()
            pytest.fail(f"bash slurm/cluster.sh start {SIZE} failed ({p.returncode}); run "
                        f"'bash slurm/cluster.sh install' first?\n{p.stdout}\n{p.stderr}")
        self.hosts, self.up = running_hosts(), True
        print(f"cluster up in {time.monotonic() - t:.1f}s")

    def ensure_up(self) -> "TestCluster":
        """Start ours again after a test stopped it (test_cluster's stop test)."""
        if self.ours and not self.up:
            self.start()
        return self

    def stop(self, check: bool = False) -> subprocess.CompletedProcess:
        assert self.ours, "not our cluster: the tests never stop a cluster they did not start"
        self.up = False
        return cluster("stop", timeout=90, check=check)

    def close(self) -> None:
        if self.ours and (self.up or running_hosts() or STATE.exists()):
            self.stop()
