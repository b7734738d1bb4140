"""Runs inside each rank of a multi-process test and reports what the ranks saw.

    python rank_probe.py samples OUT.json NUM_SEQS BATCH SEED
    python rank_probe.py gather OUT.json                     (hvdlm's gather_objects, 16 MB a rank)
    python rank_probe.py broadcast OUT.json                  (hvdlm's broadcast_object: tensors as tensors)
    python rank_probe.py on_root OUT.json                    (on_root of an Unverified value: check, fallback)
    python rank_probe.py params OUT.json -- <hvdlm train flags>
    python rank_probe.py host_reads OUT.json -- <hvdlm train flags>  (hvdlm's tensor reads to the host, per step)
    python rank_probe.py crash UNUSED -- <hvdlm train flags>   (rank 1 raises at step 3)
    python rank_probe.py signal UNUSED -- <hvdlm train flags>  (rank 1 gets SIGUSR1 at step 3)
    python rank_probe.py fault UNUSED -- <hvdlm train flags>   (HVDLM_PROBE_FAULT=RANK:BATCH:raise|hang,
                                                                HVDLM_PROBE_SLOW_SAVE=SECONDS: slow checkpoint writes)

Rank 0 writes one JSON file with every rank's answer (gathered with Horovod), so the test
asserts on what the ranks really did, not on what a single process predicts.
"""

import hashlib
import json
import sys

import horovod.torch as hvd
import torch

from hvdlm.data.sampler import ShardedSampler


def samples(out, num_seqs, batch, seed):
    hvd.init()
    sampler = ShardedSampler(int(num_seqs), int(batch), hvd.rank(), hvd.size(), int(seed))
    epoch = [sampler.next_indices().tolist() for _ in range(sampler.steps_per_epoch)]
    everyone = hvd.allgather_object({"rank": hvd.rank(), "epoch": epoch, "next_epoch": sampler.epoch})
    if hvd.rank() == 0:
        json.dump(everyone, open(out, "w"))


def gather(out):
    """Each rank's object, tensors and all, on every rank in rank order (a periodic strategy's
    per-rank state at a checkpoint is ~128 MB on the mini preset)."""
    from hvdlm import distributed as d

    hvd.init()

    def own(r):
        return {"rank": r, "tensor": torch.arange(r, r + (4 << 20), dtype=torch.float32), "text": "é" * r, "none": None}

    everyone = d.gather_objects(own(hvd.rank()), "probe.gather")
    same = [o.keys() == own(i).keys() and torch.equal(o["tensor"], own(i)["tensor"]) and
            (o["rank"], o["text"], o["none"]) == (i, "é" * i, None) for i, o in enumerate(everyone)]
    report = d.gather_objects({"rank": hvd.rank(), "got": len(everyone), "same": same}, "probe.report")
    if hvd.rank() == 0:
        json.dump(report, open(out, "w"))


def broadcast(out):
    """Rank 0's object on every rank through hvdlm's broadcast_object: tensors of every wire type
    (bf16 and bool ride as int16/uint8), one of 80 MB (two pieces), a 0-d and an empty one, a tied
    pair, nested in dicts, lists and tuples; meanwhile a thread measures how long the GIL was held."""
    import collections
    import threading
    import time

    from hvdlm import distributed as d

    hvd.init()
    big = torch.arange(20 << 20, dtype=torch.float32)
    tied = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))

    def reference():
        return {"model": collections.OrderedDict(w=tied, head=tied, bias=torch.zeros(0)),
                "opt": [{"step": torch.tensor(7.0), "big": big, "mask": torch.tensor([True, False, True]),
                         "q": torch.tensor([-3, 4], dtype=torch.int8)}],
                "bf16": (torch.linspace(-2, 2, 9, dtype=torch.bfloat16), "text"), "n": 3, "none": None}

    gap, stop = [0.0], threading.Event()

    def tick():
        last = time.perf_counter()
        while not stop.wait(0.005):
            now = time.perf_counter()
            gap[0], last = max(gap[0], now - last), now

    threading.Thread(target=tick, daemon=True).start()
    got = d.broadcast_object(reference() if hvd.rank() == 0 else None, name="probe.broadcast")
    stop.set()
    want = reference()
    same = (isinstance(got["model"], collections.OrderedDict) and got["model"]["w"] is got["model"]["head"]
            and all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
            and all(torch.equal(got["opt"][0][k], want["opt"][0][k]) and got["opt"][0][k].dtype == want["opt"][0][k].dtype
                    for k in want["opt"][0])
            and got["bf16"][0].dtype == torch.bfloat16 and torch.equal(got["bf16"][0], want["bf16"][0])
            and (got["bf16"][1], got["n"], got["none"]) == ("text", 3, None))
    report = d.gather_objects({"rank": hvd.rank(), "same": bool(same), "gil_gap_s": gap[0]}, "probe.report")
    if hvd.rank() == 0:
        json.dump(report, open(out, "w"))


def on_root(out):
    """``on_root`` of values read without their check (``Unverified``): a check that passes, one
    that fails and one that raises, each running on rank 0 in a thread while the value travels;
    every rank must end with the value or the fallback's, and an HvdlmError must reach every rank."""
    import threading

    from hvdlm import distributed as d
    from hvdlm.errors import HvdlmError

    hvd.init()
    value, fallback = torch.arange(2 << 20, dtype=torch.float32), torch.full((3,), 7.0)
    threads = []

    def checker(answer):
        def check():
            threads.append(threading.current_thread() is not threading.main_thread())
            if isinstance(answer, Exception):
                raise answer
            return answer
        return check

    got = {}
    for case, answer in (("passes", None), ("fails", "checksum mismatch"), ("raises", OSError("gone"))):
        result = d.on_root(lambda: d.Unverified({"t": value}, checker(answer), lambda: {"t": fallback}))
        got[case] = ("value" if torch.equal(result["t"], value) else
                     "fallback" if torch.equal(result["t"], fallback) else "neither")

    def refuse():
        raise HvdlmError("no such checkpoint")
    try:
        d.on_root(refuse)
        got["error"] = None
    except HvdlmError as e:
        got["error"] = str(e)
    report = d.gather_objects({"rank": hvd.rank(), **got, "in_threads": threads}, "probe.report")
    if hvd.rank() == 0:
        json.dump(report, open(out, "w"))


def host_reads(out, *flags):
    """Train through the real CLI counting every read of a tensor's value into Python that hvdlm's
    own code makes (``item``, ``float``, ``bool``, ``int``, ``tolist``, ``cpu``: each a device sync
    on a GPU), by the step in which it happens. torch's and Horovod's own are not counted (AdamW's
    step counters are host tensors, read without a sync); a host tensor hvdlm reads on purpose
    (the stop check's answer) is read with ``numpy()``, which no device tensor allows."""
    import collections
    import os

    import hvdlm.loop
    from hvdlm.cli import main

    package = os.path.dirname(hvdlm.loop.__file__) + os.sep
    counts, where, step = collections.Counter(), collections.defaultdict(set), [0]

    def counted(name, real):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(package):
                counts[step[0]] += 1
                where[step[0]].add(f"{name} in {os.path.basename(caller.co_filename)}:{caller.co_name}")
            return real(self, *args, **kwargs)
        return read

    for name in ("item", "__float__", "__bool__", "__int__", "tolist", "cpu"):
        setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    real_batch = hvdlm.loop.get_batch

    def batch(*args, **kwargs):  # one per step (no accumulation): what follows is that step's
        step[0] += 1
        return real_batch(*args, **kwargs)

    hvdlm.loop.get_batch = batch
    try:
        main(["train", *flags])
    finally:
        report = {"rank": hvd.rank(), "reads": {k: counts[k] for k in sorted(counts)},
                  "where": {k: sorted(v) for k, v in sorted(where.items())}}
        with open(f"{out}.{hvd.rank()}", "w") as fh:
            json.dump(report, fh)


def params(out, *flags):
    """Train through the real CLI and digest each rank's own model at the end (the checkpoint holds
    rank 0's only: ranks that drifted apart would not show there)."""
    import hvdlm.train
    from hvdlm.cli import main

    real_build, seen = hvdlm.train.build_strategy, {}

    def build(cfg):
        strategy = real_build(cfg)
        real_wrap = strategy.wrap

        def wrap(optimizer, model):
            seen["model"] = model
            return real_wrap(optimizer, model)

        strategy.wrap = wrap
        return strategy

    hvdlm.train.build_strategy = build
    main(["train", *flags])
    model = seen["model"]
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    first = next(model.parameters()).detach().flatten()[:4].tolist()
    everyone = hvd.allgather_object({"rank": hvd.rank(), "sha256": digest.hexdigest(), "first": first})
    if hvd.rank() == 0:
        json.dump(everyone, open(out, "w"))


def _train_with_fault_at_batch(flags, fault, batch):
    """Train through the real CLI; rank 1 calls ``fault()`` when it fetches its ``batch``-th
    training batch (one per step with one micro-step; evaluation reads through its own module)."""
    import hvdlm.loop
    from hvdlm.cli import main

    real, calls = hvdlm.loop.get_batch, []

    def faulty(*args, **kwargs):
        calls.append(1)
        if hvd.rank() == 1 and len(calls) == batch:
            fault()
        return real(*args, **kwargs)

    hvdlm.loop.get_batch = faulty
    main(["train", *flags])


def crash(out, *flags):
    def fault():
        raise RuntimeError("injected fault at step 3")

    _train_with_fault_at_batch(flags, fault, 3)


def signal(out, *flags):
    """Rank 1 alone receives SIGUSR1 (as from SLURM's --signal) during step 2. The ranks agree on
    a signal through an allreduce started at the end of a step and read at the end of the next
    (steps longer than two of Horovod's cycles), so a signal that comes during step 2 is in the
    question asked after step 2 and every rank stops after step 3."""
    import os
    import signal as sig

    _train_with_fault_at_batch(flags, lambda: os.kill(os.getpid(), sig.SIGUSR1), 2)


def slow_torch_save(seconds):
    """Make ``torch.save`` into a file take about ``seconds``: the bytes trickle out in 50 writes,
    so a test can kill the writer in the middle of a checkpoint."""
    import io
    import time

    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, bytes)) or not hasattr(f, "write"):
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        chunk = max(1, len(data) // 50)
        for i in range(0, len(data), chunk):
            f.write(data[i:i + chunk])
            f.flush()
            time.sleep(seconds / 50)

    torch.save = save


def fault(out, *flags):
    """HVDLM_PROBE_FAULT=R:N:KIND: rank R, at its N-th batch, raises (raise) or stops making
    progress while loading data (hang). HVDLM_PROBE_SLOW_SAVE=S: checkpoint writes take ~S s."""
    import os
    import time

    if os.environ.get("HVDLM_PROBE_SLOW_SAVE"):
        slow_torch_save(float(os.environ["HVDLM_PROBE_SLOW_SAVE"]))
    spec = os.environ.get("HVDLM_PROBE_FAULT", "-1:-1:none")
    pause = float(os.environ.get("HVDLM_PROBE_STEP_SLEEP", "0"))  # slows every batch (elastic timelines)
    rank, batch, kind = spec.split(":")
    import hvdlm.elastic
    import hvdlm.loop
    from hvdlm.cli import main

    real, calls = hvdlm.loop.get_batch, []

    def faulty(*args, **kwargs):
        calls.append(1)
        if pause:
            time.sleep(pause)
        if hvd.rank() == int(rank) and len(calls) == int(batch):
            if kind == "raise":
                raise RuntimeError(f"injected fault at batch {batch}")
            if kind == "hang":
                while True:
                    time.sleep(1)
        return real(*args, **kwargs)

    hvdlm.loop.get_batch = faulty
    main(["train", *flags])


def elastic_sync(out, *flags):
    """At size 1: what syncing a fresh AdamW does to the weights, with Horovod's TorchState and
    with hvdlm's ElasticState (the first moves them by weight decay)."""
    from horovod.torch.elastic import TorchState

    from hvdlm import distributed as dist

    hvd.init()
    moved = {}
    for name in ("TorchState", "ElasticState"):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 8)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        before = model.weight.detach().clone()
        if name == "TorchState":
            TorchState(model=model, optimizer=opt, step=0).sync()
        else:
            dist.ElasticState(model, opt).horovod.sync()
        moved[name] = {"max_change": float((model.weight.detach() - before).abs().max()),
                       "optimizer_steps": [float(s["step"]) for s in opt.state_dict()["state"].values()]}
    json.dump(moved, open(out, "w"))


if __name__ == "__main__":
    what, out, *rest = sys.argv[1:]
    torch.set_num_threads(1)
    {"samples": samples, "gather": gather, "broadcast": broadcast, "on_root": on_root, "host_reads": host_reads, "params": params, "crash": crash, "signal": signal, "fault": fault,
     "elastic_sync": elastic_sync}[what](out, *[a for a in rest if a != "--"])
