"""Each rank steps its own optimizer on its own data; every H steps (``--sync_every``) the ranks meet.

``local_sgd``: at a sync the parameters are averaged in one fused fp32 allreduce (the periodic
parameter averaging of classic local SGD). With H = 1 and SGD this is synchronous training.

``diloco`` (Douillard et al. 2023, arXiv 2311.08105): the H steps are the inner AdamW steps; at a
sync the pseudo-gradient (the parameters at the last sync minus now) is averaged across ranks (fp32,
fp16, bf16 or int8 on the wire) and an outer SGD with Nesterov momentum (``--outer_lr``,
``--outer_momentum``) applies it to the parameters at the last sync; every rank continues from
the result. With outer lr 1 and momentum 0 this is local SGD.

``--overlap_steps T`` (the overlap of Streaming DiLoCo, Douillard et al. 2025, arXiv 2501.18512,
which mixes the local and synced parameters where this adds the local steps to the synced): the
exchange starts at the sync and runs in Horovod's background thread, one slice started per step,
while each rank takes T more inner steps; then the synced parameters (the average, or the outer
step's result) are applied with those T steps of this rank's own progress added on top, and the
next pseudo-gradient is measured from the synced parameters, so every inner step counts in
exactly one exchange. A slow link then costs nothing while a slice takes less than a step.

The ranks also meet at the run's last step (``max_steps``), so the final model is one model.
Between syncs each rank's parameters and optimizer moments are its own (``rank_state``); the
parameters at the last sync and the outer momentum are the same on every rank (``state_dict``).
Gradients are clipped per rank: there is no averaged gradient.
"""

from __future__ import annotations

import time

import torch

from hvdlm import distributed as dist
from hvdlm.sync.base import FiniteWatch, OwnCollectives
from hvdlm.sync.modes import MODES
from hvdlm.wire_bytes import BYTES_PER_VALUE
from hvdlm.tensors import flatten, unflatten_into


class Exchange:
    """One sync's exchange: the mean over ranks of ``payload``, and when it is applied.

    Overlapped, it goes in ``parts`` slices, one started per step. Horovod's background thread runs
    one collective at a time, so a step's own small collectives (the stop check, the logged loss,
    an evaluation) queue behind whatever it is running: behind a whole exchange on a slow link they
    wait as long as it takes (seconds: benchmarks/RESULTS.md); behind one slice, at most that slice.
    """

    def __init__(self, payload: torch.Tensor, name: str, wire: str, sent: torch.Tensor, due: int, parts: int):
        self.payload, self.name, self.wire, self.sent, self.due = payload, name, wire, sent, due
        size = -(-payload.numel() // parts)
        self.bounds = [(i, min(i + size, payload.numel())) for i in range(0, payload.numel(), size)] or [(0, 0)]
        self.started: list[dist.Average] = []
        self.advance()

    def advance(self) -> None:
        """Start the next slice (once a step) and let the started ones progress."""
        for average in self.started:
            average.poll()  # bf16: starts a slice's second half once its first has arrived
        if len(self.started) < len(self.bounds):
            a, b = self.bounds[len(self.started)]
            self.started.append(dist.Average(self.payload[a:b], f"{self.name}.{len(self.started)}", self.wire))

    def result(self) -> torch.Tensor:
        while len(self.started) < len(self.bounds):
            self.advance()
        return torch.cat([average.result() for average in self.started])

    @classmethod
    def arrived(cls, average: torch.Tensor, sent: torch.Tensor, due: int) -> "Exchange":
        """An exchange whose mean is already here (restored from a checkpoint)."""
        done = cls.__new__(cls)
        done.payload, done.sent, done.due, done.bounds = None, sent, due, [(0, average.numel())]
        done.started = [dist.Average.arrived(average)]
        return done


class Periodic(OwnCollectives):
    def __init__(self, every: int, max_steps: int, outer: tuple[float, float] | None, wire: str, overlap: int = 0):
        self.every, self.max_steps, self.outer, self.wire, self.overlap = every, max_steps, outer, wire, overlap
        self.mode = MODES["local_sgd" if outer is None else "diloco"]
        self.anchor: torch.Tensor | None = None  # diloco: the parameters at the last sync (flat)
        self.outer_opt: torch.optim.SGD | None = None
        self.outer_state: dict | None = None  # the outer optimizer's state, loaded before start()
        self.own: dict | None = None  # this rank's parameters and moments, from a checkpoint
        self.pending: Exchange | None = None  # --overlap_steps: the exchange running behind the inner steps
        self.arrived: torch.Tensor | None = None  # its mean, from a checkpoint taken while it was in flight
        self.finite = FiniteWatch("parameters" if outer is None else "pseudo-gradient", wire)

    def describe(self) -> str:
        overlap = f", each exchange applied {self.overlap} steps later" if self.overlap else ""
        if self.outer is None:
            return f"local SGD, parameters averaged every {self.every} steps{overlap}"
        lr, momentum = self.outer
        wire = "" if self.wire == "none" else f", {self.wire} on the wire"
        return f"DiLoCo, outer Nesterov SGD (lr {lr:g}, momentum {momentum:g}) every {self.every} steps{wire}{overlap}"

    def start(self, model):
        dist.broadcast_parameters(model)
        device = self.params[0].device  # restored state was read onto the CPU
        if self.own is not None:  # resuming on the same rank count: this rank's own state between syncs
            with torch.no_grad():
                unflatten_into(self.own["params"].to(device), self.params)
            self.optimizer.load_state_dict(self.own["optimizer"])  # moves the moments to their parameters
            if "pending" in self.own and self.arrived is not None:
                p = self.own["pending"]
                self.pending = Exchange.arrived(self.arrived.to(device), p["sent"].to(device), p["due"])
        if self.outer is not None:
            # the last sync's parameters, or (a fresh run, another strategy's checkpoint) rank 0's, just broadcast
            anchor = self.anchor if self.anchor is not None else flatten([p.detach() for p in self.params])
            self.anchor = anchor.to(device).clone()
            lr, momentum = self.outer
            self.outer_opt = torch.optim.SGD([self.anchor], lr=lr, momentum=momentum, nesterov=momentum > 0)
            if self.outer_state is not None:
                self.outer_opt.load_state_dict(self.outer_state)  # the momentum buffer, on the anchor's device
                # the outer lr and momentum of this run's command line win over the checkpoint's
                self.outer_opt.param_groups[0].update(lr=lr, momentum=momentum, nesterov=momentum > 0)

    def after_step(self, step, model):
        last, sync = step == self.max_steps, step % self.every == 0
        if not (sync or last or self.pending):
            return 0.0
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.pending and (step == self.pending.due or last):
                self.apply(self.pending)
            elif self.pending:
                self.pending.advance()
            if sync or last:
                self.pending = self.send(step, step if last else step + self.overlap)
                if self.pending.due == step:
                    self.apply(self.pending)
        return time.perf_counter() - t0

    def check(self, step):
        self.finite.check(step)

    def send(self, step: int, due: int) -> Exchange:
        """Start this sync's exchange (in one slice per step until ``due``): the parameters
        (local_sgd), or where this rank's inner steps went since the last sync, negated (diloco's
        pseudo-gradient)."""
        now = flatten([p.detach() for p in self.params])
        name = "hvdlm.local_sgd" if self.outer is None else f"hvdlm.diloco.{self.wire}"
        payload = now if self.outer is None else self.anchor - now
        self.count_ring(now.numel(), BYTES_PER_VALUE[self.wire])
        return Exchange(payload, name, self.wire, now, due, parts=max(1, due - step))

    def apply(self, exchange: Exchange) -> None:
        """The synced parameters (the average, or diloco's outer step from the last sync's), plus
        the inner steps this rank took since it sent (none when the exchange is not overlapped)."""
        average = exchange.result()
        self.finite.note(average, average if exchange.payload is None else exchange.payload)
        if self.outer is None:
            synced = average
        else:
            self.anchor.grad = average
            self.outer_opt.step()
            self.anchor.grad = None
            synced = self.anchor
        now = flatten([p.detach() for p in self.params])
        unflatten_into(synced if torch.equal(now, exchange.sent) else synced + (now - exchange.sent), self.params)
        self.pending = None

    def state_dict(self) -> dict:
        # An exchange in flight: its mean is the same on every rank (rank_state, which every rank
        # calls first, has waited for it); what each rank sent is its own (rank_state).
        pending = {"pending_average": self.pending.result()} if self.pending else {}
        if self.anchor is None:
            return pending
        return {"anchor": self.anchor.clone(), "outer": self.outer_opt.state_dict(), **pending}

    def load_state_dict(self, state: dict) -> list[str]:
        self.arrived = state.get("pending_average")
        if self.outer is None or "anchor" not in state:
            return []
        self.anchor, self.outer_state = state["anchor"], state["outer"]
        group = state["outer"]["param_groups"][0]
        if (group["lr"], group["momentum"]) == self.outer:
            return []
        return [f"hvdlm: outer lr {self.outer[0]:g} and momentum {self.outer[1]:g} (this run's) replace the checkpoint's "
                f"lr {group['lr']:g} and momentum {group['momentum']:g}; its outer momentum buffer is kept"]

    def rank_state(self) -> dict | None:
        own = {"params": flatten([p.detach() for p in self.params]).clone(), "optimizer": self.optimizer.state_dict()}
        if self.pending:  # every rank waits for it here, so a resumed run applies what this one would
            p = self.pending
            p.result()
            own["pending"] = {"sent": p.sent, "due": p.due}
        return own

    def load_rank_state(self, state: dict) -> list[str]:
        self.own = state
        return []

    def what_ranks_hold(self) -> str:
        # An exchange in flight is dropped with them: the next one, measured from the last sync's
        # parameters (diloco), carries rank 0's steps since then.
        return "parameters and optimizer moments between syncs"
