"""What a GPU cluster's hosts are made of: GPUs a host, the fabric inside it, its NICs (rails).

A ``Fabric`` is one host type as NCCL sees it. Every figure is a *bus bandwidth* in nccl-tests'
sense (busbw = algbw x 2(n-1)/n for an allreduce: what each GPU sends per second through its
slowest hop), since that is what NCCL's maintainers quote and what all_reduce_perf prints:

  ring_busbw   one GPU's share of the intra-host fabric under NCCL's ring (NVLink, or PCIe)
  nvls_busbw   NVLink SHARP (NVSwitch does the reduction; Hopper's NVSwitch 3 and later), or 0
  gpus         GPUs a host (8 for every default: HGX/DGX boards, DGX-1, 8-GPU PCIe servers)
  nics, nic    NICs a host and what NCCL gets from one of them (bytes/s); NCCL spreads its
               channels over every NIC near a GPU, so a host's network is nics x nic
  sharp        the switches reduce in the network (CollNet / SHARP): only where the user says so

The defaults by ``--gpu`` name (the exact names of ``mfu.GPU_PEAKS``), each with its source; every
one can be overridden on the command line (``--nics``, ``--link``, ``--intra_link``, ``--nvls``,
``--sharp``). ``uncertainty`` is the relative error a prediction on this fabric
carries: for H100-class hosts above the largest error of seven of the eight published checks (14%;
``benchmarks/plan_gpu_check.py``, docs/plan.md: the eighth, a self-described unstable run, is 71%
below the model); elsewhere a stated guess.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hvdlm.errors import HvdlmError

GB = 1e9


@dataclass(frozen=True)
class Fabric:
    name: str
    ring_busbw: float  # bytes/s: one GPU's share of the intra-host fabric under NCCL's ring
    intra: str  # "nvlink" or "pcie": which of NCCL's per-hop latency rows applies inside a host
    nvls_busbw: float  # bytes/s of NVLink SHARP's allreduce inside a host; 0 where there is none
    nics: int  # NICs a host
    nic: float  # bytes/s NCCL gets from one NIC
    sharp: bool = False  # in-network reduction (CollNet/SHARP) between hosts
    host_copy: float = 25 * GB  # bytes/s of one GPU's copy to or from host memory (Horovod's hierarchical)
    gpus: int = 8  # GPUs a host: HGX/DGX boards and the PCIe servers these parts ship in hold 8
    uncertainty: float = 0.5  # relative error a prediction on this fabric carries
    sources: tuple = ()  # (what, where it comes from), printed with the plan
    latency_scale: float = 1.0  # 0: every latency term removed (``network.idealized``, the "bound by" trials)

    def idealized(self, what: str) -> "Fabric":
        """The fabric without its latencies (``latency``) or with unlimited bandwidth (``bandwidth``)."""
        if what == "latency":
            return replace(self, latency_scale=0.0)
        inf = float("inf")
        return replace(self, ring_busbw=inf, nvls_busbw=inf if self.nvls_busbw else 0.0, nic=inf, host_copy=inf)

    def network(self, per_host: int) -> float:
        """Bytes/s a host's NICs carry: NCCL uses the NICs its GPUs sit near, so at most one per GPU."""
        return min(self.nics, max(1, per_host)) * self.nic


NDR = 47 * GB  # one 400 Gbit/s NDR ConnectX-7 NIC under NCCL: "46-48GB/s per NIC" (AddyLaddy,
#               https://github.com/NVIDIA/nccl-tests/issues/290; "48-49GB/s" in nccl-tests#267)
HDR = 24 * GB  # one 200 Gbit/s HDR NIC: "24GB/s inter-node" (sjeaugey, https://github.com/NVIDIA/nccl/issues/412)
EDR = 12.2 * GB  # one 100 Gbit/s EDR NIC: "12.2 GB/s (for a 100Gbps card) is as good as you can get"
#                  (sjeaugey, https://github.com/NVIDIA/nccl-tests/issues/29)
PCIE5_HOST = 57 * GB  # H100 host<->device copies measured at ~57 GB/s (https://github.com/NVIDIA/nvbandwidth/issues/6)
PCIE4_HOST = 25 * GB  # PCIe 4.0 x16 is half of 5.0's signalling rate: half of the above, rounded down (assumed)

_HOPPER = dict(
    ring_busbw=370 * GB, intra="nvlink", nvls_busbw=480 * GB, nics=8, nic=NDR, host_copy=PCIE5_HOST,
    uncertainty=0.25,
    sources=(("NVLink ring 370 GB/s", "450 GB/s line rate less ~20% protocol overhead (sjeaugey, "
                                      "https://github.com/NVIDIA/nccl-tests/issues/212); 365-370 GB/s "
                                      "measured with NCCL_ALGO=RING (https://github.com/NVIDIA/nccl/issues/1455)"),
             ("NVLS 480 GB/s", "NVLink SHARP on 8 H100s (nccl-tests#212; 479-480 GB/s at 8 GB in "
                               "https://github.com/NVIDIA/nccl-tests/issues/347)"),
             ("8 NICs x 47 GB/s", "DGX/HGX H100: one 400 Gbit/s NDR NIC per GPU (DGX H100 user guide); "
                                  "46-48 GB/s each under NCCL (nccl-tests#290)"),
             ("host copies 57 GB/s", "PCIe 5.0 host<->device (https://github.com/NVIDIA/nvbandwidth/issues/6)")))

_PCIE4 = dict(ring_busbw=14 * GB, intra="pcie", nvls_busbw=0.0, nics=1, nic=EDR, uncertainty=0.5,
              sources=(("PCIe ring 14 GB/s", "assumed: half of 8 PCIe 5.0 GPUs' 28 GB/s (nccl#1639), PCIe 4.0"),
                       ("1 NIC x 12.2 GB/s", "assumed: one 100 Gbit/s NIC a host (nccl-tests#29 for its rate)")))
_PCIE5 = dict(ring_busbw=28 * GB, intra="pcie", nvls_busbw=0.0, nics=1, nic=NDR, host_copy=PCIE5_HOST,
              uncertainty=0.5,
              sources=(("PCIe ring 28 GB/s", "8 PCIe 5.0 GPUs measured at 28 GB/s busbw; on PCIe hosts the CPU and "
                                             "memory decide it (sjeaugey, https://github.com/NVIDIA/nccl/issues/1639)"),
                       ("1 NIC x 47 GB/s", "assumed: one 400 Gbit/s NIC a host (no reference PCIe node)")))

# By the exact names of ``mfu.GPU_PEAKS`` (``--gpu``/``--fabric`` take them as ``mfu.gpu_named`` does).
FABRICS: dict[str, dict] = {
    "H100 SXM": dict(_HOPPER, name="H100 SXM (DGX/HGX H100)"),
    "H200 SXM": dict(_HOPPER, name="H200 SXM (HGX H200: the H100 SXM's NVLink 4 and NICs)"),
    "B200": dict(_HOPPER, name="B200 (HGX B200; assumed: the H100 SXM node's figures, NVLink 5 not checked)",
                 uncertainty=0.5),
    "H100 PCIe": dict(_PCIE5, name="H100 PCIe"),
    "H100 NVL": dict(_PCIE5, name="H100 NVL (PCIe; its NVLink bridges join pairs only)"),
    "H200 NVL": dict(_PCIE5, name="H200 NVL (PCIe; its NVLink bridges join pairs only)"),
    "A100 SXM": dict(
        name="A100 SXM (DGX A100)", ring_busbw=230 * GB, intra="nvlink", nvls_busbw=0.0, nics=8, nic=HDR,
        host_copy=PCIE4_HOST, uncertainty=0.3,
        sources=(("NVLink ring 230 GB/s", "A800 (400 GB/s NVLink) ~160 GB/s intra-node (nccl#412), scaled by "
                                          "A100's 600 GB/s NVLink 3 and rounded down"),
                 ("8 NICs x 24 GB/s", "DGX A100: 8 x 200 Gbit/s HDR; 192 GB/s allreduce busbw measured on it "
                                      "(AddyLaddy, https://github.com/NVIDIA/nccl/issues/812)"))),
    "A100 PCIe": dict(_PCIE4, name="A100 PCIe (PCIe 4.0)"),
    "L40S": dict(_PCIE4, name="L40S (PCIe 4.0)"),
    "L40": dict(_PCIE4, name="L40 (PCIe 4.0)"),
    "L4": dict(_PCIE4, name="L4 (PCIe 4.0)"),
    "A10": dict(_PCIE4, name="A10 (PCIe 4.0)"),
    "V100 SXM2": dict(
        name="V100 SXM2 (DGX-1)", ring_busbw=130 * GB, intra="nvlink", nvls_busbw=0.0, nics=4, nic=EDR,
        host_copy=12 * GB, uncertainty=0.5,
        sources=(("NVLink ring 130 GB/s", "assumed: NVLink 2's 150 GB/s a direction less NCCL's ~20% overhead "
                                          "(the H100 ratio, nccl-tests#212)"),
                 ("4 NICs x 12.2 GB/s", "DGX-1: 4 x 100 Gbit/s EDR; 48 GB/s measured on it (nccl-tests#29)"))),
    "V100 PCIe": dict(_PCIE4, name="V100 PCIe (PCIe 3.0: assumed as 4.0)", host_copy=12 * GB),
}


def fabric_for(gpu: str) -> Fabric:
    """The defaults for the host of ``--gpu``/``--fabric`` NAME (``mfu.gpu_named``'s exact names)."""
    from hvdlm.mfu import gpu_named, gpu_names

    found = gpu_named(gpu)
    if found is None or found.name not in FABRICS:
        raise HvdlmError(f"--fabric {gpu!r} is not a GPU hvdlm knows; it knows {gpu_names()}")
    return Fabric(**FABRICS[found.name])


def override(f: Fabric, nics: int | None = None, nic: float | None = None, ring_busbw: float | None = None,
             nvls: str = "auto", sharp: bool = False) -> Fabric:
    """The fabric with what the user stated instead of the defaults (each noted among the sources)."""
    notes = []
    if nics is not None:
        if nics < 1:
            raise HvdlmError(f"--nics {nics} is out of range: at least 1")
        f, notes = replace(f, nics=nics), notes + [(f"{nics} NIC(s)", "--nics")]
    if nic is not None:
        f, notes = replace(f, nic=nic), notes + [(f"NIC {nic / GB:g} GB/s", "--link")]
    if ring_busbw is not None:
        f, notes = replace(f, ring_busbw=ring_busbw), notes + [(f"intra-host {ring_busbw / GB:g} GB/s", "--intra_link")]
    if nvls == "off":
        f, notes = replace(f, nvls_busbw=0.0), notes + [("no NVLS", "--nvls off")]
    elif nvls == "on" and not f.nvls_busbw:
        raise HvdlmError(f"--nvls on: {f.name} has no NVLink SHARP (NVSwitch 3, Hopper and later)")
    if sharp:
        f, notes = replace(f, sharp=True), notes + [("SHARP in the switches", "--sharp")]
    return replace(f, sources=f.sources + tuple(notes)) if notes else f
