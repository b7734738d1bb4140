"""Elastic training: ranks leave and join while the job runs (Horovod elastic, over Gloo).

    hvdlm elastic --min_ranks 1 --max_ranks 2 --discovery_script ./hosts.sh [train options]

``hvdlm elastic`` checks the range and the discovery script (it must run and print one ``host`` or
``host:slots`` a line), then starts ``horovodrun --min-np --max-np --host-discovery-script ...``
with ``hvdlm train --elastic true`` on each rank. While the job runs:

* every ``--commit_interval`` steps each rank commits the state in memory: model, optimizer,
  step, data position and the batch plan (``distributed.ElasticState``);
* a rank that dies (or a host that disappears) makes a collective fail on the others: they go
  back to the last commit, Horovod restarts at the new size, and training goes on from there
  (the steps since that commit are done again, on the same data);
* a host that the discovery script adds, or one that comes back after failing (after
  ``--host_cooldown`` seconds), joins at the next commit: it receives the state from rank 0.

**Global batch and learning rate when the world size changes.** They do not change. The global
batch is fixed when the job starts: ``--global_batch_size``, or by default ``max_ranks x
batch_size x grad_accum`` (what the full-size job takes per step); the learning rate is scaled
for that batch once (``--lr_scaling``), and the warmup/cosine schedule runs over steps as usual.
At any world size in the range, each optimizer step still consumes exactly that global batch:
the ranks split it into micro-batches of at most ``--batch_size`` and accumulate as many as
needed (16 sequences = 2 ranks x 8 x 1, or 1 rank x 8 x 2 micro-steps). So losing a host makes
each step slower, not different: the parameters follow the same trajectory as an uninterrupted
run (to float rounding), and the data order goes on without repeating or skipping a sequence.
The global batch must divide evenly over every size in the range; ``hvdlm elastic`` refuses one
that does not, before anything starts.

Under elastic, no collective runs before the training function: a rank that joins later runs the
same start-up while the others wait in the state sync. So each rank checks its inputs alone, and
the watchdog watches only its own rank's progress (Horovod handles lost peers).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import shutil
import subprocess
import sys
from pathlib import Path

from hvdlm import loop
from hvdlm import distributed as dist
from hvdlm.config import FIELDS, Config
from hvdlm.errors import HvdlmError
from hvdlm.inputs import read_inputs
from hvdlm.state import TrainState
from hvdlm.train import end, setup, start

HOST_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?$")


# --- the launcher: `hvdlm elastic` ------------------------------------------------------------------

def discover_hosts(script: str, timeout: float = 30) -> dict[str, int]:
    """Run the discovery script as Horovod will (a shell command) and parse what it prints."""
    if not script:
        raise HvdlmError("elastic training needs --discovery_script: a program that prints the available "
                         "hosts, one `host` or `host:slots` a line")
    try:
        run = subprocess.run(script, shell=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HvdlmError(f"discovery script {script} did not finish within {timeout:.0f}s") from None
    if run.returncode != 0:
        said = (run.stderr.strip().splitlines() or run.stdout.strip().splitlines() or [""])[-1]
        raise HvdlmError(f"discovery script {script} failed with exit status {run.returncode}"
                         + (f": {said}" if said else ""))
    hosts: dict[str, int] = {}
    for line in run.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        if not HOST_LINE.match(line) or line.endswith(":0"):
            raise HvdlmError(f"discovery script {script} printed {line[:80]!r}: expected one `host` or "
                             "`host:slots` (slots >= 1) a line")
        host, _, slots = line.partition(":")
        hosts[host] = int(slots) if slots else 1
    if not hosts:
        raise HvdlmError(f"discovery script {script} printed no hosts")
    return hosts


def is_this_machine(host: str) -> bool:
    """Whether every address ``host`` resolves to is this machine's (loopback or its own name's)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        mine = set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback or a in mine for a in addresses)


def check_range(cfg: Config, size_now: int | None = None) -> range:
    """The world sizes the job may train on; the global batch must split evenly over each."""
    d = cfg.distributed
    top = d.max_ranks or size_now or d.min_ranks
    if d.min_ranks > top:
        raise HvdlmError(f"the elastic range is empty: min_ranks {d.min_ranks} is above max_ranks {top}")
    sizes = range(d.min_ranks, top + 1)
    global_batch = cfg.data.global_batch_size or top * cfg.data.batch_size * d.grad_accum
    bad = [s for s in sizes if global_batch % s]
    if bad:
        step = math.lcm(*sizes)
        suggestion = step * max(1, round(global_batch / step))
        raise HvdlmError(f"a global batch of {global_batch} sequences cannot be split evenly over "
                         f"{', '.join(map(str, bad))} rank(s), in the elastic range {d.min_ranks}..{top}; set "
                         f"--global_batch_size to a multiple of {step} (e.g. {suggestion})")
    return sizes


def check_inputs(cfg: Config, top: int) -> None:
    """What every rank will check, checked here first (on a shared file system it is the same):
    the data, its checksums, the output folder, the batch plan."""
    read_inputs(cfg, top, on_root=None)


def launch_command(cfg: Config, given: dict, np: int, network_interface: str, host_cooldown: int,
                   config_file: str | None) -> list[str]:
    """The horovodrun command for this job, after checking everything it can before starting."""
    d = cfg.distributed
    hosts = discover_hosts(d.discovery_script)
    slots = sum(hosts.values())
    top = d.max_ranks or slots
    check_range(cfg, top)
    check_inputs(cfg, top)
    if slots < d.min_ranks:
        raise HvdlmError(f"discovery script {d.discovery_script} offers {slots} slot(s) "
                         f"({', '.join(f'{h}:{n}' for h, n in hosts.items())}), fewer than min_ranks {d.min_ranks}")
    if not network_interface and all(is_this_machine(h) for h in hosts):
        network_interface = "lo"  # every rank on this machine: they talk over loopback
    if len(hosts) < 2 and not network_interface:
        raise HvdlmError(f"the elastic job starts on one host ({next(iter(hosts))}): give --network_interface "
                         "(lo on one machine, else the NIC the hosts share, e.g. eth0); without it Horovod waits "
                         "for a second host to test the network with")
    if host_cooldown < 1:
        raise HvdlmError(f"host_cooldown must be >= 1 second, got {host_cooldown}")
    start = min(np or top, slots, top)
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent)) or "horovodrun"
    cmd = [horovodrun, "-np", str(start), "--min-np", str(d.min_ranks), "--max-np", str(top),
           "--host-discovery-script", d.discovery_script,
           "--blacklist-cooldown-range", str(host_cooldown), str(min(3600, 10 * host_cooldown))]
    if network_interface:
        cmd += ["--network-interface", network_interface]
    train = [sys.executable, "-m", "hvdlm.cli", "train"]
    if config_file:
        train += ["--config", config_file]
    for name, value in given.items():
        if name in ("elastic", "max_ranks"):
            continue
        train += [f"--{name}", str(value)]
    return cmd + train + ["--elastic", "true", "--max_ranks", str(top)]


# --- a rank of the elastic job ------------------------------------------------------------------------

class ElasticSession(loop.Session):
    """What an elastic run adds to the loop: the state is committed in memory every
    ``commit_interval`` steps (where ranks may join or leave), and each (re)entry says the size."""

    def __init__(self, job: loop.Job, state: TrainState, sizes: range, commit_interval: int):
        self.sizes, self.commit_interval, self.size = sizes, commit_interval, None
        self.horovod = dist.ElasticState(job.model, job.optimizer, state, job.sync)

    def enter(self, job, state, world, metrics):
        job.watch.moved(world.rank, world.size)
        batch = loop.describe_batch(state, world, job)
        if self.size is None:
            metrics.info(f"hvdlm: elastic, {world.size} rank(s) (range {self.sizes[0]}..{self.sizes[-1]}), "
                         f"{loop.describe_params(job)}, {job.precision}, {batch}, "
                         f"{loop.describe_lr(state, job)}" + (f", resuming at step {state.step}" if state.step else ""))
        else:
            metrics.info(f"hvdlm: elastic: {world.size} rank(s) now (were {self.size}), going on from step "
                         f"{state.step} (the last commit); {batch}, same lr schedule")
        self.size = world.size

    def commit(self, job, state):
        if state.step % self.commit_interval == 0:
            job.watch.phase("allreduce")
            self.horovod.commit()  # may raise HostsUpdatedInterrupt: ranks join or leave here


def train_elastic(cfg: Config) -> dict:
    """Train under Horovod elastic; returns the final summary (on the ranks that finish)."""
    if not dist.elastic_launched():
        raise HvdlmError("--elastic true needs Horovod's elastic launcher: start it with `hvdlm elastic ...` "
                         "(or horovodrun --min-np/--max-np --host-discovery-script)", everywhere=True)
    world, watch = start(cfg)  # the watchdog watches this rank's own progress only

    # The same setup as a plain run, each rank alone (no collective may run before the elastic
    # loop), planned for the full-size job; rank 0's state reaches every rank in the elastic sync.
    sizes = check_range(cfg, world.size)
    job, state = setup(cfg, world, watch, sizes[-1], everyone=lambda fn: fn(),
                       on_root=lambda fn: dist.settled(fn()) if world.is_root else None)
    t = cfg.train
    session = ElasticSession(job, state, sizes, cfg.distributed.commit_interval)

    def run(_) -> dict:  # Horovod calls it again after every reset, with the state as synced
        return loop.run(job, state, dist.world_now(world), session)

    summary = dist.elastic_run(run, str(Path(t.out_dir) / f"elastic-{world.host}-{world.local_rank}.log"))(
        session.horovod)
    return end(job, summary, dist.world_now(world))


def given_options(args) -> dict:
    """The config options given on the command line (to hand on to each rank)."""
    return {k: v for k, v in vars(args).items() if k in FIELDS}
