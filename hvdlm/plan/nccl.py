"""How long NCCL takes for one allreduce on GPUs, and which algorithm it picks: our own model of
NCCL's tuning, with its constants from NCCL's source (src/graph/tuning.cc at NVIDIA/nccl 5067397c,
2026-06-11, unless a line names v2.21.5-1; read for its numbers, its code is not copied).

NCCL prices every (algorithm, protocol) pair as latency + bytes / bandwidth and runs the cheapest
for each message; so does ``choose``. n GPUs, g a host, H hosts, S bytes; B_intra = the fabric's ring
bus bandwidth inside a host, B_net = a host's NICs (``topology.Fabric``). Times in nccl-tests' terms
(busbw = 2(n-1)/n x S / time):

  ring      2(n-1)/n x S / min(B_intra, B_net)  (B_intra alone on one host): every GPU sends each
            byte 2(n-1)/n times, and the ring's channels cross each host boundary through its NICs
  tree      (more than one host) NCCL's double binary tree between hosts, a chain inside each: a GPU
            of the chain sends 2S (reduce up, broadcast down), a host's NICs S at 2 hosts (each is
            the root of one tree and a leaf of the other) and 2S beyond:
            max(k S / B_net, 2S / B_intra) / 0.92,  k = 1 at 2 hosts, else 2
            (tuning.cc: the tree's bandwidth x 0.92; at <= 2 nodes it takes the intra-node figure)
  nvls      (one host with NVLink SHARP) the NVSwitch reduces: S / A_nvls, A_nvls = the quoted
            8-GPU busbw x 8/14 (its algbw, ~275 GB/s on H100: nccl-tests#212, constant in the GPU
            count from 5 to 8 GPUs: nccl#1455)
  nvls_tree (several hosts with NVLS) NVLS inside, the tree between hosts:
            max(S / A_nvls, k S / B_net) x 6/5  (v2.21.5-1's tuning.cc: NVLS Tree's algbw is 5/6 of its
            busbw; with it, 2 hosts at 4 GB come to 427 GB/s against 430 published, nccl#1221)
  collnet   (--sharp) the switches reduce: a host's NICs send S and receive S once, NVLink does the
            reduce-scatter and allgather: max(S / B_net, 2(g-1)/g x S / B_intra) / 0.85
            (tuning.cc: CollNet Direct x 0.85 on Hopper)

Protocols (tuning.cc): Simple at full bandwidth; LL128 (NVLink hosts only) at 0.92 of the ring's
and 120/128 of the tree's (7/9 on one host); LL at half the ring's (at most 141 GB/s on one Hopper
host, 39 on 2 hosts, 20.4 beyond: ``llMaxBws``, Intel CPUs) and 1/3.8 of the tree's.

Latency (microseconds, tuning.cc's ``baseLatencies`` + ``hwLatencies`` per hop, by link: NVLink,
PCI, NET): ring: base + (2(n-1) - 2(H-1)) intra hops + 2(H-1) network hops, an intra hop of a ring that
leaves the host costing at least NCCL's network post overhead (1 us, x3 for Simple); tree: base +
2((g-1) intra + log2 H network); nvls: one NVLS hop (+ 2 log2 H network hops for nvls_tree); collnet:
2(intra + 0.4 (g-1)) + one network hop. Left out: NCCL's tree correction below 8 MB, the ring's
x1.4 latency plateau past 2 nodes, channel counts (NCCL_MIN/MAX_NCHANNELS), PAT.

Not in tuning.cc, measured: an allreduce between hosts costs ~90 us more than those latencies
once the message fills NCCL's pipeline (published runs from 64 MB to 1 GB read as t = a + S/b with
a = 200-320 us, where tuning.cc gives 60-130): the fill, a few chunks' time through each hop and the
network proxies. A message smaller than the pipeline (``FULL_PIPELINE``: 32 channels x 512 KiB, the
Simple protocol's 4 MiB buffer in NCCL's 8 steps) pays its share, so small messages keep tuning.cc's
latency (47 us for a few bytes on 2 hosts: nccl#1244). ``MULTI_HOST`` is fitted on one published run
(nccl-tests#309's 2 x 8 H100 default run, 64 MB-1 GB) and checked on six others at 2-8 hosts
(benchmarks/plan_gpu_check.py: 27 of their 30 points within 20%, 23 without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hvdlm.plan.topology import Fabric

US = 1e-6
GB = 1e9

# tuning.cc baseLatencies (us), (LL, LL128, Simple)
BASE = {"ring": (6.6, 14.0, 8.4), "tree": (6.8, 14.0, 8.4), "nvls": (0, 0, 0), "nvls_tree": (0, 0, 0),
        "collnet": (0, 0, 0)}
# tuning.cc hwLatencies (us per hop), (LL, LL128, Simple); CollNet Direct's row for collnet
HOP = {
    "nvlink": {"ring": (0.6, 1.9, 3.4), "tree": (0.6, 1.25, 4.0), "nvls": (0, 0, 25), "nvls_tree": (0, 0, 25),
               "collnet": (0, 0, 3.7)},
    "pcie": {"ring": (1.0, 2.5, 5.7), "tree": (1.0, 1.9, 4.0), "nvls": (0, 0, 0), "nvls_tree": (0, 0, 0),
             "collnet": (0, 0, 3.7)},
    "net": {"ring": (2.7, 4.0, 14.0), "tree": (5.0, 8.5, 14.0), "nvls": (0, 0, 18), "nvls_tree": (0, 0, 20.9),
            "collnet": (0, 0, 31)},
}
NET_OVERHEAD = 1.0  # us a network post (tuning.cc getNetOverhead, Intel CPUs); x3 for Simple
MULTI_HOST = 90.0  # us an allreduce between hosts costs beyond tuning.cc's latencies (measured: above)
FULL_PIPELINE = 32 * 512 * 1024  # bytes from which it is whole: NCCL's channels x a Simple step's chunk
PROTOCOLS = ("LL", "LL128", "Simple")
LL_CAP = (141 * GB, 39 * GB, 20.4 * GB)  # tuning.cc llMaxBws: one Hopper host, 2 hosts, more (Intel)


@dataclass(frozen=True)
class Choice:
    algorithm: str  # ring, tree, nvls, nvls_tree, collnet
    protocol: str  # LL, LL128, Simple
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.algorithm}/{self.protocol}"


def busbw(nbytes: float, ranks: int, seconds: float) -> float:
    """nccl-tests' bus bandwidth of an allreduce: algbw x 2(n-1)/n."""
    return 2 * (ranks - 1) / ranks * nbytes / seconds if seconds > 0 else math.inf


def _bandwidth_time(f: Fabric, algo: str, proto: int, n: int, g: int, hosts: int, s: float) -> float:
    """Seconds of the bandwidth term; inf where the pair does not exist here."""
    intra, net = f.ring_busbw, f.network(g)
    k = 1 if hosts == 2 else 2
    ll_cap = LL_CAP[min(hosts, 3) - 1] if math.isfinite(net) else math.inf  # none in the "bandwidth" trial
    nvlink = f.intra == "nvlink"
    if algo == "ring":
        bw = intra if hosts == 1 else min(intra, net)
        if PROTOCOLS[proto] == "LL":
            bw = min(bw * 0.5, ll_cap)
        elif PROTOCOLS[proto] == "LL128":
            if not nvlink:
                return math.inf
            bw *= 0.92
        return 2 * (n - 1) / n * s / bw
    if algo == "tree":
        if hosts == 1:
            return math.inf
        t = max(k * s / net, 2 * s / intra) / 0.92
        if PROTOCOLS[proto] == "LL":
            t = max(t * 3.8, 2 * (n - 1) / n * s / ll_cap)
        elif PROTOCOLS[proto] == "LL128":
            if not nvlink:
                return math.inf
            t /= 120 / 128
        return t
    if PROTOCOLS[proto] != "Simple":
        return math.inf
    nvls_algbw = f.nvls_busbw * 8 / 14
    if algo == "nvls":
        return s / nvls_algbw if hosts == 1 and f.nvls_busbw and g > 1 else math.inf
    if algo == "nvls_tree":
        return max(s / nvls_algbw, k * s / net) * 6 / 5 if hosts > 1 and f.nvls_busbw else math.inf
    if algo == "collnet":
        return max(s / net, 2 * (g - 1) / g * s / intra) / 0.85 if hosts > 1 and f.sharp else math.inf
    raise ValueError(algo)


def _latency(f: Fabric, algo: str, proto: int, n: int, g: int, hosts: int) -> float:
    """Seconds of the latency term: NCCL's base latency and its per-hop latencies."""
    intra, net = HOP[f.intra][algo][proto], HOP["net"][algo][proto]
    lat = BASE[algo][proto]
    if algo == "ring":
        inter_hops = 2 * (hosts - 1)
        if hosts > 1:
            intra = max(intra, NET_OVERHEAD * (3 if PROTOCOLS[proto] == "Simple" else 1))
        lat += (2 * (n - 1) - inter_hops) * intra + inter_hops * net
    elif algo == "tree":
        lat += 2 * ((g - 1) * intra + math.log2(hosts) * net)
    elif algo == "nvls":
        lat += intra
    elif algo == "nvls_tree":
        lat += intra + 2 * math.log2(hosts) * net
    else:  # collnet
        lat += 2 * (min(1, g - 1) * intra + 0.4 * (g - 1)) + net
    return lat * US * f.latency_scale


def _fill(f: Fabric, hosts: int, nbytes: float) -> float:
    """Seconds of the pipeline's fill between hosts (measured, not tuning.cc's: the docstring)."""
    return MULTI_HOST * min(1.0, nbytes / FULL_PIPELINE) * US * f.latency_scale if hosts > 1 else 0.0


def network_bytes(f: Fabric, ranks: int, per_host: int, nbytes: float) -> float:
    """Bytes a host's NICs send for one allreduce under NCCL's pick: the ring's 2(n-1)/n x S, the
    tree's S (2 hosts) or 2S, CollNet's S (the switch reduces); nothing on one host."""
    g = min(per_host, ranks)
    hosts = ranks // g
    if hosts == 1:
        return 0.0
    algorithm = choose(f, ranks, per_host, nbytes).algorithm
    if algorithm in ("tree", "nvls_tree"):
        return (1 if hosts == 2 else 2) * nbytes
    if algorithm == "collnet":
        return nbytes
    return 2 * (ranks - 1) / ranks * nbytes


def candidates(f: Fabric, ranks: int, per_host: int, nbytes: float) -> list[Choice]:
    """Every (algorithm, protocol) this fabric offers for an allreduce of ``nbytes``, priced."""
    g = min(per_host, ranks)
    hosts = ranks // g
    out = []
    for algo in BASE:
        for p in range(len(PROTOCOLS)):
            t = _bandwidth_time(f, algo, p, ranks, g, hosts, nbytes)
            if math.isfinite(t):
                out.append(Choice(algo, PROTOCOLS[p], _latency(f, algo, p, ranks, g, hosts) + t
                                  + _fill(f, hosts, nbytes)))
    return out


def choose(f: Fabric, ranks: int, per_host: int, nbytes: float) -> Choice:
    """The pair NCCL would run: the cheapest of ``candidates`` (nothing at one rank)."""
    if ranks <= 1:
        return Choice("none", "-", 0.0)
    return min(candidates(f, ranks, per_host, nbytes), key=lambda c: c.seconds)


def reduce_scatter(f: Fabric, g: int, nbytes: float) -> float:
    """NCCL's ring reduce-scatter (or allgather) of ``nbytes`` over the g GPUs of one host, Simple:
    (g-1)/g x S / B_intra + base + (g-1) hops (tuning.cc: nsteps = n-1 for these)."""
    if g <= 1:
        return 0.0
    lat = (BASE["ring"][2] + (g - 1) * HOP[f.intra]["ring"][2]) * US * f.latency_scale
    return (g - 1) / g * nbytes / f.ring_busbw + lat


def horovod_hierarchical(f: Fabric, ranks: int, per_host: int, nbytes: float, mpi_latency: float) -> float:
    """HOROVOD_HIERARCHICAL_ALLREDUCE=1 over NCCL as Horovod 0.28.1 runs it
    (horovod/common/ops/nccl_operations.cc, NCCLHierarchicalAllreduce::Execute): an NCCL
    reduce-scatter inside the host, a wait, a copy of the GPU's 1/g share to host memory, an
    MPI_Allreduce of that share between the hosts (the g local ranks' allreduces side by side, all
    through the host's NICs: a ring, 2(H-1)/H x S / B_net + 2(H-1) x the MPI latency), a copy
    back, and an NCCL allgather inside the host. Nothing overlaps: each step waits for the last."""
    g = min(per_host, ranks)
    hosts = ranks // g
    share = nbytes / g
    copies = 2 * share / f.host_copy if hosts > 1 else 0.0
    mpi = 0.0
    if hosts > 1:
        mpi = 2 * (hosts - 1) / hosts * nbytes / f.network(g) + 2 * (hosts - 1) * mpi_latency * f.latency_scale
    return 2 * reduce_scatter(f, g, nbytes) + copies + mpi
