"""One predicted row per method: compute, exchange, the exchange not hidden, step time, bytes.

Per optimizer step of one rank (C = its compute: forward, backward and optimizer over its
micro-steps; backward is 2/3 of forward + backward, ``mfu.flops_per_token``'s 6N = 2N + 4N):

  none, fp16  Horovod's DistributedOptimizer: the last micro-step's backward queues each gradient
              (fp32, or fp16: 2 bytes) as it is ready; ``overlap.simulate`` runs the background
              thread; exposed = how long the last buffer ends after backward.
  bf16        ``sync.allreduce.Bf16Allreduce``: after backward, one flat buffer of 2-byte values
              through ``network.alltoall_exchange`` (alltoall, then allgather: two collectives, each
              waiting half a cycle and a negotiation), plus the copies around it (flatten, encode,
              decode, unflatten: ~24 bytes of memory traffic per element); all of it exposed.
  powersgd r  ``sync.powersgd``: after backward, allreduce #1 of every P (n x r) and the small
              tensors (fp32), QR of each P, allreduce #2 of every Q (m x r); plus its matmuls (M Q,
              M^T P, P Q^T: 6 n m r FLOPs at the rate the model's own compute runs) or their memory
              traffic (~24 bytes per compressed element), whichever is longer, or under --measure
              hvdlm's own PowerSGD timed here on this model's shapes (``inputs.powersgd_work``);
              all exposed.
  local_sgd H, diloco H wire [overlap T]
              ``sync.periodic``: every H steps one exchange of every parameter (local_sgd fp32;
              diloco's pseudo-gradient in fp32/fp16 by ring allreduce, bf16/int8 by the alltoall
              exchange), at hvdlm's periodic cycle (``sync.Mode.cycle_ms``). On time:
              the step that syncs waits for all of it (exposed / H per step). Overlapped over T
              steps: T slices, one started per step, run one after another behind the inner
              steps; a logged step waits for the slices queued before its own; the due step for
              all of them (``_overlapped``); exposed = what the slices add to the T steps, / H.

Every logged step (one in ``--log_interval``) averages the train loss over the ranks, a blocking
one-number allreduce after the step (``loop``): half a cycle to Horovod's next, and its negotiation.
Behind an overlapped exchange it also waits for the slices started before this step's (``_overlapped``).

Every blocking point (each step's exchange; under local_sgd/diloco the period's exchange and the
logged steps) also waits for the slowest rank: ``straggler.wait``, from the spread of a rank's compute.

Every method also has the stop check (``distributed.StopSignals``): a one-number allreduce read
``stop_signals.check_lag`` steps after it starts (two cycles' worth of steps, at least one), so it
is back before it is read unless the cycle and the negotiation outlast those steps. A 4-byte
message is latency only: it costs what the negotiation does (a tree), not a ring's 2(N-1) hops.

Bytes each rank sends per step are what hvdlm's counters add up (``wire_bytes.ring_bytes``, the
``sync_bytes`` of metrics.jsonl): 2(N-1)/N x elements x bytes per element, per exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hvdlm.plan import network, overlap, straggler
from hvdlm.plan.network import Cluster
from hvdlm.stop_signals import check_lag
from hvdlm.sync import MODES, Mode
from hvdlm.wire_bytes import BYTES_PER_VALUE, compressed_shape, encoded_bytes, ring_bytes

BACKWARD = 2 / 3  # of forward + backward (6N FLOPs per token: 2N forward, 4N backward)
COPY_BYTES = 24  # memory traffic per element of hvdlm's own flatten/encode/decode/unflatten, or PowerSGD's passes


@dataclass(frozen=True)
class Method:
    name: str  # a sync mode (``sync.MODES``): none, fp16, bf16, powersgd, local_sgd, diloco
    rank: int = 0  # low_rank (powersgd): r
    every: int = 1  # periodic: H
    wire: str = "none"  # periodic: the exchange's wire type (one of the mode's wires)
    overlap: int = 0  # periodic: T

    @property
    def mode(self) -> Mode:
        return MODES[self.name]

    @property
    def sent_as(self) -> str:
        """The wire a periodic exchange travels in: ``wire`` where the mode has it, else its first."""
        return self.wire if self.wire in self.mode.wires else self.mode.wires[0]

    @property
    def own_exchange(self) -> bool:
        """A periodic exchange by hvdlm's alltoall + allgather (bf16, int8); fp32/fp16 go by ring allreduce."""
        return self.sent_as in ("bf16", "int8")

    @property
    def periodic(self) -> bool:
        """An exchange every H steps, at hvdlm's periodic cycle."""
        return self.mode.periodic

    @property
    def setting(self) -> int:
        """The number that tunes it: PowerSGD's rank, a periodic mode's H, else 0."""
        return self.rank if self.mode.path == "low_rank" else (self.every if self.periodic else 0)

    @property
    def label(self) -> str:
        if self.mode.path == "low_rank":
            return f"{self.name} r{self.rank}"
        if self.periodic:
            wire = f" {self.wire}" if len(self.mode.wires) > 1 else ""
            return f"{self.name} H={self.every}{wire}" + (f" overlap {self.overlap}" if self.overlap else "")
        return self.name


@dataclass(frozen=True)
class Setting:
    """What every row shares."""
    params: tuple  # ((name, shape), ...) of the model, in registration order
    shape: dict  # model_shape
    cluster: Cluster
    compute: float  # seconds of one rank's compute per optimizer step
    accum: int  # micro-steps per optimizer step
    tokens_per_step: int  # over all ranks
    cycle: float  # Horovod's cycle, every-step sync (seconds)
    periodic_cycle: float  # hvdlm's cycle under local_sgd/diloco
    threshold: float  # fusion threshold, bytes
    mem_bw: float  # bytes/s, for the copies and PowerSGD's passes
    flops: float  # FLOP/s the model's compute runs at (PowerSGD's matmuls)
    min_compression: float  # --powersgd_min_compression
    powersgd_work: tuple = ()  # ((rank, seconds), ...): PowerSGD's own work timed here (--measure)
    log_interval: int = 10  # hvdlm train's --log_interval: a blocking loss average every this many steps
    jitter: float = 0.0  # standard deviation of one rank's compute per step, seconds (``straggler``)

    @property
    def numel(self) -> int:
        return sum(numel(s) for _, s in self.params)


@dataclass
class Row:
    method: Method
    compute: float
    exchange: float  # seconds per step the exchange takes, hidden or not (averaged over H)
    exposed: float  # seconds per step the step waits for it
    sent: float  # bytes one rank sends per step (hvdlm's counter)
    nic: float  # bytes one host's NIC sends per step
    algorithm: str = ""  # what runs its largest allreduce (``network.algorithm``), or hvdlm's own exchange
    cycle_error: float = 0.0  # seconds per step the cycle's phase may move the exposed time either way (``cycles``)

    @property
    def step(self) -> float:
        return self.compute + self.exposed


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def summed_as(wire: str) -> str:
    """The dtype a ring-allreduced wire is summed in: its cost per byte under --calibrate is that dtype's
    fit (Gloo and MPI sum fp16 on the CPU, slower per byte than fp32: ``calibrate``)."""
    return "fp16" if wire == "fp16" else "fp32"


def collective(s: Setting, cycle: float, cost: float) -> float:
    """A collective started outside a cycle: half a cycle to the next, the negotiation, the transfer."""
    return cycle / 2 + network.negotiation(s.cluster) + cost


def stop_check(s: Setting, cycle: float) -> float:
    """What the one-number stop check adds per step: what is left of it when it is read."""
    if s.cluster.ranks == 1:
        return 0.0
    done = cycle + 2 * network.negotiation(s.cluster)  # a 4-byte allreduce: a tree's latency, as the negotiation
    lag = check_lag(cycle, s.compute)
    return max(0.0, done - lag * s.compute) / lag


def logged_loss(s: Setting, cycle: float) -> float:
    """Seconds per step of the logged loss's blocking allreduce (not behind an exchange)."""
    return 0.0 if s.cluster.ranks == 1 else collective(s, cycle, 0.0) / s.log_interval


def predict(s: Setting, m: Method) -> Row:
    row = _predict(s, m)
    if not (m.periodic and m.overlap):  # _overlapped counts its own
        row.exposed += logged_loss(s, s.periodic_cycle if m.periodic else s.cycle)
    row.exposed += straggler.wait(s.jitter, s.cluster.ranks, m.every, s.log_interval)  # every = 1: each step
    row.cycle_error = cycles(s, m) * (s.periodic_cycle if m.periodic else s.cycle) / 2
    return row


def cycles(s: Setting, m: Method) -> float:
    """Blocking collectives per step that start outside a cycle. Each waits for Horovod's next cycle:
    half a cycle on average over compute times (``collective``), but for one run's steady compute
    anywhere from none to a whole one (the loop locks to the cycle: the test cluster's
    cycle_probe.py, benchmarks/RESULTS.md), so each adds half a cycle to the row's +-. The gradients'
    tail after backward (none, fp16), the two collectives of hvdlm's own exchange (bf16, a periodic
    bf16/int8 slice) or of PowerSGD, one allreduce a periodic fp32/fp16 slice, and the logged loss."""
    if s.cluster.ranks <= 1:
        return 0.0
    path = m.mode.path
    if path == "hooks":
        per_step = 1.0
    elif path in ("fused", "low_rank"):
        per_step = 2.0
    else:
        per_step = (2 if m.own_exchange else 1) * max(1, m.overlap) / m.every
    return per_step + 1 / s.log_interval


def _predict(s: Setting, m: Method) -> Row:
    c, n, path = s.cluster, s.cluster.ranks, m.mode.path
    if path == "hooks":
        bpe = BYTES_PER_VALUE[m.mode.wires[0]]
        backward = s.compute * BACKWARD / s.accum
        ready = overlap.ready_times(list(s.params), s.shape, backward, bpe)
        dtype = summed_as(m.mode.wires[0])
        tl = overlap.simulate(ready, s.cycle, s.threshold, lambda b: network.allreduce(c, b, dtype),
                              network.negotiation(c))
        exposed = max(tl.finish - backward, stop_check(s, s.cycle)) if n > 1 else 0.0
        return Row(m, s.compute, tl.busy if n > 1 else 0.0, exposed, ring_bytes(s.numel, bpe, n),
                   network.nic_bytes_allreduce(c, s.numel * bpe),
                   network.algorithm(c, min(max([s.threshold] + [numel(p) * bpe for _, p in s.params]),
                                            s.numel * bpe)))
    if path == "fused":
        bpe = BYTES_PER_VALUE[m.mode.wires[0]]
        nbytes = s.numel * bpe
        ex = 0.0
        if n > 1:
            ex = (2 * collective(s, s.cycle, 0.0) + network.alltoall_exchange(c, nbytes)
                  + s.numel * COPY_BYTES / s.mem_bw)
        return Row(m, s.compute, ex, ex + stop_check(s, s.cycle), ring_bytes(s.numel, bpe, n),
                   network.nic_bytes_exchange(c, nbytes), "alltoall+allgather" if n > 1 else "-")
    if path == "low_rank":
        return _powersgd(s, m)
    return _periodic(s, m)


def _powersgd(s: Setting, m: Method) -> Row:
    c, n = s.cluster, s.cluster.ranks
    first = second = compressed = 0
    for _, shape in s.params:
        nmr = compressed_shape(tuple(shape), m.rank, s.min_compression)
        if nmr:
            rows, cols, r = nmr
            first, second, compressed = first + rows * r, second + cols * r, compressed + rows * cols
        else:
            first += numel(shape)
    matmul = dict(s.powersgd_work).get(m.rank)
    if matmul is None:
        matmul = max(6 * compressed * m.rank / s.flops, compressed * COPY_BYTES / s.mem_bw)
    ex = 0.0
    if n > 1:
        ex = (collective(s, s.cycle, network.allreduce(c, first * 4)) + matmul
              + collective(s, s.cycle, network.allreduce(c, second * 4)))
    sent = ring_bytes(first, 4, n) + ring_bytes(second, 4, n)
    nic = network.nic_bytes_allreduce(c, first * 4) + network.nic_bytes_allreduce(c, second * 4)
    return Row(m, s.compute, ex, ex + stop_check(s, s.cycle), sent, nic, network.algorithm(c, first * 4))


def _periodic(s: Setting, m: Method) -> Row:
    c, n, h = s.cluster, s.cluster.ranks, m.every
    wire, own = m.sent_as, m.own_exchange
    encoded = encoded_bytes(s.numel, wire)
    parts = max(1, m.overlap)

    def one(nbytes: float) -> float:
        if own:
            return 2 * collective(s, s.periodic_cycle, 0.0) + network.alltoall_exchange(c, nbytes)
        return collective(s, s.periodic_cycle, network.allreduce(c, nbytes, summed_as(wire)))

    ex = exposed = 0.0
    if n > 1:
        copies = s.numel * COPY_BYTES / s.mem_bw  # flatten, the payload, unflatten (and encode/decode)
        slice_time = one(encoded / parts)
        ex = parts * slice_time + copies
        if m.overlap:
            exposed = _overlapped(s, slice_time, parts, h) + copies
        else:
            exposed = ex
    sent = ring_bytes(s.numel, BYTES_PER_VALUE[wire], n) / h
    nic = (network.nic_bytes_exchange(c, encoded) if own else network.nic_bytes_allreduce(c, encoded)) / h
    algorithm = ("alltoall+allgather" if n > 1 else "-") if own else network.algorithm(c, encoded / parts)
    return Row(m, s.compute, ex / h, exposed / h + stop_check(s, s.periodic_cycle), sent, nic, algorithm)


def _overlapped(s: Setting, slice_time: float, parts: int, h: int) -> float:
    """Seconds one overlapped period waits. Slice k is started at the end of inner step k (k = 0:
    the syncing step) and Horovod's background thread runs the slices one after another. A logged
    step's loss average, started just after slice k, is modelled as waiting for the slices started
    before it, not for slice k, which runs behind the next step's compute. The test cluster's runs
    (benchmarks/RESULTS.md, issue 32) show the totals this gives: at 100 Mbit/s, a slice shorter than
    a step, the slices hide (the first model, the average queued behind slice k, was 2.3-3.9x high);
    at 10 Mbit/s every slice is waited for, though the waits fall in pairs (the syncing step's average
    went ahead of its slice, the next one's waited for two), an order Horovod's cycle picks and plan
    does not follow. The due step (T) waits for every slice. Averaged over where the logged steps fall."""
    log = collective(s, s.periodic_cycle, 0.0)
    phases = [0] if h % s.log_interval == 0 else range(s.log_interval)
    total = 0.0
    for j in phases:
        t = waited = busy = 0.0  # t: when this rank's step k ends; busy: when the thread is free
        for k in range(parts):
            if (h * j + k) % s.log_interval == 0:  # the average: after the slices already queued
                done = max(t, busy) + log
                waited, t = waited + done - t, done
            busy = max(t, busy) + slice_time  # slice k, behind the ones before it
            t += s.compute  # step k + 1
        waited += max(0.0, busy - t)  # the due step applies the exchange: every slice has arrived
        total += waited
    logged_elsewhere = max(0, h - parts) / s.log_interval * log
    return total / len(phases) + logged_elsewhere


def bottleneck(s: Setting, m: Method) -> str:
    """What the exposed time is mostly made of: the term whose removal saves the most."""
    base = predict(s, m)
    if base.exposed < 0.05 * base.step:
        return "compute"
    c = s.cluster
    trials = {
        "latency": replace(s, cluster=network.idealized(c, "latency")),
        "bandwidth": replace(s, cluster=network.idealized(c, "bandwidth")),
        "cycle": replace(s, cycle=0.0, periodic_cycle=0.0),
        "fusion buffer": replace(s, threshold=float("inf")),
        "memory copies": replace(s, mem_bw=float("inf"), flops=float("inf")),
        "stragglers": replace(s, jitter=0.0),
    }
    saved = {k: base.exposed - predict(t, m).exposed for k, t in trials.items()}
    return max(saved, key=saved.get)
