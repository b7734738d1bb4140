"""How long one collective takes on a cluster of hosts: the alpha-beta (latency-bandwidth) model.

A message of m bytes over a link costs ``latency + m / bandwidth``. N ranks, g on each of H hosts,
ranked host by host (as mpirun and horovodrun place them). Every formula gives 0 on one rank.

ring allreduce (what Horovod runs over MPI and Gloo for a fused buffer of S bytes):
    2(N-1) steps, each moving S/N bytes to the next rank:  2(N-1)/N x S / B  +  2(N-1) x latency.
    The ring crosses each host boundary once, so a host's NIC carries one hop (S x 2(N-1)/N), the
    same as one rank; B is the slowest hop's bandwidth, the latency the slowest hop's.
    (Patarasuk and Yuan 2009; Horovod's paper, Sergeev and Del Balso 2018, section 3; the bytes are
    ``sync.base.ring_bytes``.)  MPI may pick another algorithm for small messages (recursive
    doubling: log2 N steps); the ring is the bandwidth-optimal one for the large fused buffers.

hierarchical allreduce (HOROVOD_HIERARCHICAL_ALLREDUCE=1; described in ``horovodrun --help`` of
Horovod 0.28.1 as a reduction inside each host, allreduces between the ranks of the same local
rank on every host, run side by side, then a gather inside each host): a reduce-scatter inside each host, g
allreduces of S/g across the H hosts (one per local rank, sharing the host's NIC), an allgather
inside the host:
    2(g-1)/g x S / B_intra + 2(g-1) x lat_intra   +   2(H-1)/H x S / B_inter + 2(H-1) x lat_inter.
    It trades the flat ring's 2(N-1) inter-host latencies for 2(H-1).

hvdlm's 16- and 8-bit exchange (``distributed.Average``: ``codecs.Bf16``, ``codecs.Int8``): Horovod
cannot sum bf16, so a reduce-scatter by ``alltoall`` (rank r receives every rank's r-th chunk of
E encoded bytes), an fp32 sum, then an ``allgather`` of the summed chunks:
    alltoall:  each rank sends (N-1)/N x E in N-1 messages; the g ranks of a host send
               g x (N-g)/N x E through its NIC, at the same time:
               max(g(N-g)/N x E / B_inter, (g-1)/N x E / B_intra) + (N-1) x latency
    allgather: a ring: (N-1)/N x E / B + (N-1) x latency.
    At one rank per host both halves add up to the ring allreduce's time; at g ranks per host the
    alltoall's NIC term is g times the ring's.

negotiation (Horovod's controller, docs "Timeline": every rank tells rank 0 which tensors are
ready, rank 0 answers which to reduce): a gather and a broadcast, modelled as trees,
2 ceil(log2 N) x latency once per cycle that has work.

Everything above is the CPU path: Horovod over MPI or Gloo, one link between hosts and one inside.
Two descriptions replace the allreduce's formula where they are given:
  ``fabric`` (GPU ranks under NCCL, ``topology.Fabric``): NCCL's own choice of ring, tree, NVLS or
      CollNet per message (``nccl.choose``), and Horovod's hierarchical allreduce as Horovod runs it
      over NCCL (``nccl.horovod_hierarchical``: reduce-scatter, copy to host, MPI between hosts, copy
      back, allgather); ``inter``/``intra`` then hold the host's NICs and the ring's hop, for the
      alltoall and allgather of hvdlm's own exchange.
  ``measured`` (``--calibrate``: a user's nccl-tests or ``hvdlm bench allreduce`` output): the
      fitted bus bandwidth per size and latency per hop (``calibrate.Calibration``), per dtype.
A measured allreduce is taken as it was measured: ``hierarchical`` does not change it.
``uncertainty``: the relative error of the network's times (CPU path: 20%, the cluster check in
docs/plan.md, 126 of 132 step times within it; a fabric's or a fit's own otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hvdlm.errors import HvdlmError
from hvdlm.plan import nccl
from hvdlm.plan.calibrate import Calibration
from hvdlm.plan.topology import Fabric
from hvdlm.units import bus_factor

CPU_UNCERTAINTY = 0.2  # 126 of 132 predicted step times within 20% on the test cluster (docs/plan.md)


@dataclass(frozen=True)
class Link:
    bandwidth: float  # bytes/s
    latency: float  # seconds per message


@dataclass(frozen=True)
class Cluster:
    ranks: int
    per_host: int
    inter: Link  # between hosts
    intra: Link  # inside a host
    hierarchical: bool = False  # HOROVOD_HIERARCHICAL_ALLREDUCE
    fabric: Fabric | None = None  # GPU ranks under NCCL
    measured: Calibration | None = None  # --calibrate
    uncertainty: float = CPU_UNCERTAINTY

    def __post_init__(self):
        if self.ranks < 1:
            raise HvdlmError(f"--ranks {self.ranks} is out of range: at least 1")
        if self.per_host < 1 or self.ranks % min(self.per_host, self.ranks):
            raise HvdlmError(f"--ranks {self.ranks} is not a whole number of hosts of --ranks_per_host "
                             f"{self.per_host}")

    @property
    def local(self) -> int:
        return min(self.per_host, self.ranks)

    @property
    def hosts(self) -> int:
        return self.ranks // self.local

    @property
    def slowest(self) -> Link:
        """The slowest hop a collective over every rank crosses."""
        if self.hosts == 1:
            return self.intra
        if self.local == 1:
            return self.inter
        return Link(min(self.inter.bandwidth, self.intra.bandwidth), max(self.inter.latency, self.intra.latency))


def ring_allreduce(nbytes: float, n: int, link: Link) -> float:
    """Seconds for a ring allreduce of ``nbytes`` over ``n`` ranks joined by ``link``."""
    if n <= 1:
        return 0.0
    return bus_factor(n) * nbytes / link.bandwidth + 2 * (n - 1) * link.latency


def ring_allgather(nbytes: float, n: int, link: Link) -> float:
    """Seconds for a ring allgather whose result is ``nbytes`` (each rank brings nbytes / n)."""
    if n <= 1:
        return 0.0
    return (n - 1) / n * nbytes / link.bandwidth + (n - 1) * link.latency


def allreduce(c: Cluster, nbytes: float, dtype: str = "fp32") -> float:
    """One allreduce of ``nbytes`` on the cluster: measured (``dtype``'s own fit, where the file has
    it), NCCL's choice, the flat ring, or the hierarchical one (these three per byte, whatever the dtype)."""
    if c.ranks <= 1:
        return 0.0
    if c.measured is not None:
        return c.measured.allreduce(nbytes, c.ranks, dtype)
    hierarchical = c.hierarchical and c.local > 1 and c.hosts > 1
    if c.fabric is not None:
        if hierarchical:
            return nccl.horovod_hierarchical(c.fabric, c.ranks, c.local, nbytes, c.inter.latency)
        return nccl.choose(c.fabric, c.ranks, c.local, nbytes).seconds
    if hierarchical:
        return ring_allreduce(nbytes, c.local, c.intra) + ring_allreduce(nbytes, c.hosts, c.inter)
    return ring_allreduce(nbytes, c.ranks, c.slowest)


def algorithm(c: Cluster, nbytes: float) -> str:
    """What runs an allreduce of ``nbytes``: NCCL's pair, "measured", "hierarchical" or "ring"."""
    if c.ranks <= 1:
        return "-"
    if c.measured is not None:
        return "measured"
    if c.hierarchical and c.local > 1 and c.hosts > 1:
        return "hierarchical"
    if c.fabric is not None:
        return nccl.choose(c.fabric, c.ranks, c.local, nbytes).label
    return "ring"


def idealized(c: Cluster, what: str) -> Cluster:
    """The cluster without latency (``latency``) or with unlimited bandwidth (``bandwidth``): what
    ``methods.bottleneck`` removes one term at a time."""
    fabric = c.fabric.idealized(what) if c.fabric is not None else None
    measured = c.measured.idealized(what) if c.measured is not None else None
    if what == "latency":
        return replace(c, inter=replace(c.inter, latency=0.0), intra=replace(c.intra, latency=0.0),
                       fabric=fabric, measured=measured)
    inf = float("inf")
    return replace(c, inter=replace(c.inter, bandwidth=inf), intra=replace(c.intra, bandwidth=inf),
                   fabric=fabric, measured=measured)


def alltoall(c: Cluster, nbytes: float) -> float:
    """hvdlm's reduce-scatter: every rank sends nbytes / N to each other rank."""
    n, g = c.ranks, c.local
    if n <= 1:
        return 0.0
    if c.hosts == 1:
        return (n - 1) / n * nbytes / c.intra.bandwidth + (n - 1) * c.intra.latency
    nic = g * (n - g) / n * nbytes / c.inter.bandwidth
    inside = (g - 1) / n * nbytes / c.intra.bandwidth
    return max(nic, inside) + (n - 1) * c.slowest.latency


def alltoall_exchange(c: Cluster, nbytes: float) -> float:
    """hvdlm's 16/8-bit average of ``nbytes`` encoded bytes: alltoall, then ring allgather."""
    return alltoall(c, nbytes) + ring_allgather(nbytes, c.ranks, c.slowest)


def nic_bytes_allreduce(c: Cluster, nbytes: float) -> float:
    """Bytes a host's NIC sends for one allreduce (flat ring: one hop; hierarchical: g rings of S/g;
    under NCCL: what its pick sends, ``nccl.network_bytes``)."""
    if c.hosts == 1:
        return 0.0
    if c.hierarchical and c.local > 1:
        return 2 * (c.hosts - 1) / c.hosts * nbytes
    if c.fabric is not None and c.measured is None:
        return nccl.network_bytes(c.fabric, c.ranks, c.local, nbytes)
    return 2 * (c.ranks - 1) / c.ranks * nbytes


def nic_bytes_exchange(c: Cluster, nbytes: float) -> float:
    """Bytes a host's NIC sends for hvdlm's alltoall + allgather of ``nbytes`` encoded bytes."""
    if c.hosts == 1:
        return 0.0
    n, g = c.ranks, c.local
    return g * (n - g) / n * nbytes + (n - 1) / n * nbytes


def negotiation(c: Cluster) -> float:
    """Seconds of Horovod's per-cycle coordination: a gather to rank 0 and a broadcast back."""
    if c.ranks <= 1:
        return 0.0
    return 2 * math.ceil(math.log2(c.ranks)) * c.slowest.latency
