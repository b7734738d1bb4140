"""Runs inside each rank of a test of the sync strategies (tests/test_sync.py) and reports what the
ranks computed; rank 0 writes one JSON file.

    python sync_probe.py math OUT.json                    PowerSGD and bf16 on synthetic gradients
    python sync_probe.py digests OUT.json -- <hvdlm train flags>   parameters' sha256 after every step
    python sync_probe.py exchanges OUT -- <hvdlm train flags>      local_sgd/diloco: each exchange's
                                                                   parameters, torch.save'd per rank
    python sync_probe.py nan STEP -- <hvdlm train flags>           rank 1's parameters nan before STEP's sync
    python sync_probe.py checkpoint_memory OUT -- <flags>          each rank's peak memory during each save
"""

import hashlib
import json
import sys

import horovod.torch as hvd
import torch


def digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def model():
    torch.manual_seed(0)  # the same shapes and weights on every rank
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 12), torch.nn.Linear(12, 5))


def fake_grads(params, step, low_rank=False):
    """This rank's own gradient at ``step`` (a rank-2 structure plus noise when ``low_rank``)."""
    gen = torch.Generator().manual_seed(1000 * hvd.rank() + step)
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen)
        if low_rank and p.dim() == 2:
            g = 0.1 * g + torch.randn(p.shape[0], 2, generator=gen) @ torch.randn(2, p.shape[1], generator=gen)
        p.grad = g.clone()
        out.append(g)
    return out


def true_average(grads):
    from hvdlm import distributed as dist
    from hvdlm.tensors import flatten

    return dist.allreduce_average(flatten(grads), "probe.true")


def powersgd_exact():
    """A rank at least the smaller side of every matrix: PowerSGD is the plain average."""
    from hvdlm.tensors import flatten, grads_of
    from hvdlm.sync.powersgd import PowerSGD

    net = model()
    ps = PowerSGD(rank=64, start=0, min_compression=0, seed=7)
    ps.wrap(torch.optim.SGD(net.parameters(), lr=0.0), net)
    worst = 0.0
    for step in range(4):  # past the first step: the warm-started Q and the residuals are exercised
        truth = true_average(fake_grads(list(net.parameters()), step))
        ps.compress_and_average(grads_of(ps.params))
        worst = max(worst, float((flatten(grads_of(ps.params)) - truth).abs().max() / truth.abs().max()))
    return {"compressed": len(ps.compressed), "tensors": len(ps.params), "max_rel_error": worst}


def powersgd_error_feedback():
    """Rank 1 of a rank-2 signal: the residual carries what was not sent, so the applied updates
    plus the ranks' mean residual add up to the true averaged gradients."""
    from hvdlm import distributed as dist
    from hvdlm.tensors import flatten, grads_of
    from hvdlm.sync.powersgd import PowerSGD

    net = model()
    ps = PowerSGD(rank=1, start=0, min_compression=0, seed=7)
    ps.wrap(torch.optim.SGD(net.parameters(), lr=0.0), net)
    applied = true = 0
    for step in range(30):
        true = true + true_average(fake_grads(list(net.parameters()), step, low_rank=True))
        ps.compress_and_average(grads_of(ps.params))
        applied = applied + flatten(grads_of(ps.params))
    # the residuals, laid out like the gradients (zero for the tensors sent whole)
    residual = [torch.zeros_like(p) for p in ps.params]
    for i, e in zip(ps.compressed, ps.errors):
        residual[i] = e
    mean_residual = dist.allreduce_average(flatten(residual), "probe.residual")
    scale = float(true.abs().max())
    return {"tracked_error": float((applied + mean_residual - true).abs().max()) / scale,
            "untracked_error": float((applied - true).abs().max()) / scale,
            "compressed": len(ps.compressed)}


def bf16():
    """bf16 on the wire: the fp32 mean to bf16 rounding, the same bits on every rank (uneven chunks)."""
    from hvdlm import distributed as dist

    scale = 10 ** torch.randint(-3, 4, (1001,), generator=torch.Generator().manual_seed(0)).float()
    scale[:3] = 1e10  # beyond fp16's range (65504): bf16 keeps fp32's exponent
    gen = torch.Generator().manual_seed(hvd.rank())
    x = (torch.rand(1001, generator=gen) + 0.5) * scale  # one sign: the mean's relative error is bf16's
    exact = dist.allreduce_average(x.double().float(), "probe.exact")
    got = dist.bf16_average(x, "probe.bf16")
    return {"max_rel_error": float(((got - exact).abs() / exact.abs().clamp_min(1e-30)).max()),
            "sha256": hashlib.sha256(got.numpy().tobytes()).hexdigest(), "numel": got.numel()}


def int8(count):
    """int8 on the wire (blocks of 256 with one scale each, rounded twice: each rank's value, then the
    mean): within 2/254 of the block's largest input magnitude, the same bits on every rank. 1001
    values: 4 blocks, the last one short; 300 on 3 ranks: chunks of 256, 44 and none."""
    from hvdlm import distributed as dist
    from hvdlm.distributed.codecs import Int8

    block = Int8.BLOCK
    scale = 10 ** torch.randint(-3, 4, (count,), generator=torch.Generator().manual_seed(0)).float()
    x = torch.randn(count, generator=torch.Generator().manual_seed(hvd.rank())) * scale
    exact = dist.allreduce_average(x.double().float(), f"probe.exact8.{count}")
    got = dist.Average(x, f"probe.int8.{count}", "int8").result()
    padded = torch.nn.functional.pad(x.abs(), (0, -count % block)).view(-1, block).amax(1)
    largest = hvd.allgather(padded.unsqueeze(0), name=f"probe.largest.{count}").amax(0)  # over the ranks, per block
    bound = torch.repeat_interleave(largest, block)[:count] * 2 / 254
    return {"worst_of_bound": float(((got - exact).abs() / bound).max()), "numel": got.numel(),
            "sha256": hashlib.sha256(got.numpy().tobytes()).hexdigest()}


def math(out):
    hvd.init()
    result = {"rank": hvd.rank(), "powersgd_exact": powersgd_exact(), "error_feedback": powersgd_error_feedback(),
              "bf16": bf16(), "int8": int8(1001), "int8_small": int8(300)}
    everyone = hvd.allgather_object(result)
    if hvd.rank() == 0:
        json.dump(everyone, open(out, "w"))


def digests(out, *flags):
    """Train through the real CLI, recording the parameters' sha256 after every optimizer step
    (after the strategy's ``after_step``: right after each sync)."""
    import hvdlm.train
    from hvdlm.cli import main

    seen = []
    real_build = hvdlm.train.build_strategy

    def build(cfg):
        strategy = real_build(cfg)
        real_after = strategy.after_step

        def after_step(step, model):
            wait = real_after(step, model)
            seen.append({"step": step, "sha256": digest(model.parameters())})
            return wait

        strategy.after_step = after_step
        return strategy

    hvdlm.train.build_strategy = build
    try:
        main(["train", *flags])
    finally:
        everyone = hvd.allgather_object({"rank": hvd.rank(), "steps": seen})
        if hvd.rank() == 0:
            json.dump(everyone, open(out, "w"))


def exchanges(out, *flags):
    """Train through the real CLI, recording around each local_sgd/diloco exchange: at its send, the
    step, the step it is due and the parameters sent (and diloco's synced parameters); at its
    application, the parameters just before and just after. Each rank saves ``OUT.RANK``."""
    import hvdlm.train
    from hvdlm.cli import main
    from hvdlm.tensors import flatten

    events, now = [], {}
    real_build = hvdlm.train.build_strategy

    def build(cfg):
        strategy = real_build(cfg)
        real_after, real_send, real_apply = strategy.after_step, strategy.send, strategy.apply

        def after_step(step, model):
            now["step"] = step
            return real_after(step, model)

        def anchor():
            return None if strategy.anchor is None else strategy.anchor.clone()

        def send(*args):
            before = anchor()
            exchange = real_send(*args)
            events.append({"send": now["step"], "due": exchange.due, "sent": exchange.sent.clone(), "anchor": before,
                           "slices": len(exchange.bounds)})
            return exchange

        def apply(exchange):
            before = flatten([p.detach() for p in strategy.params]).clone()
            real_apply(exchange)
            events.append({"applied": now["step"], "due": exchange.due, "before": before,
                           "after": flatten([p.detach() for p in strategy.params]).clone()})

        strategy.after_step, strategy.send, strategy.apply = after_step, send, apply
        return strategy

    hvdlm.train.build_strategy = build
    try:
        main(["train", *flags])
    finally:
        import os
        torch.save({"events": events, "cycle_ms": os.environ.get("HOROVOD_CYCLE_TIME")}, f"{out}.{hvd.rank()}")


def nan(out, *flags):
    """Train through the real CLI; at step ``out`` (a number) rank 1's parameters turn nan just
    before the strategy's exchange of that step."""
    import hvdlm.train
    from hvdlm.cli import main

    real_build = hvdlm.train.build_strategy

    def build(cfg):
        strategy = real_build(cfg)
        real_after = strategy.after_step

        def after_step(step, model):
            if step == int(out) and hvd.rank() == 1:
                with torch.no_grad():
                    next(model.parameters())[0] = float("nan")
            return real_after(step, model)

        strategy.after_step = after_step
        return strategy

    hvdlm.train.build_strategy = build
    main(["train", *flags])


def checkpoint_memory(out, *flags):
    """Train through the real CLI; around each checkpoint save, this rank's peak resident memory
    above what it held just before (the kernel's high-water mark, reset first). Each rank saves
    ``OUT.RANK`` (JSON: the MB of each save)."""
    import hvdlm.checkpoint
    from hvdlm.cli import main

    real_save, peaks = hvdlm.checkpoint.Checkpointer.save, []

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB

    def save(self, world):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := VmRSS now
        before = status("VmRSS")
        real_save(self, world)
        self.wait(world)  # the write on its thread is part of the save (every rank saves, and waits, at this step)
        peaks.append(status("VmHWM") - before)

    hvdlm.checkpoint.Checkpointer.save = save
    try:
        main(["train", *flags])
    finally:
        json.dump(peaks, open(f"{out}.{hvd.rank()}", "w"))


if __name__ == "__main__":
    what, out, *rest = sys.argv[1:]
    torch.set_num_threads(1)
    {"math": math, "digests": digests, "exchanges": exchanges, "nan": nan,
     "checkpoint_memory": checkpoint_memory}[what](out, *[a for a in rest if a != "--"])
