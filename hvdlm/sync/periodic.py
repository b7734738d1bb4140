"""Each rank steps its own optimizer on its own data; every H steps (``--sync_every``) the ranks meet.

``local_sgd``: at a sync the parameters are averaged in one fused fp32 allreduce (the periodic
parameter averaging of classic local SGD). With H = 1 and SGD this is synchronous training.

``diloco`` (Douillard et al. 2023, arXiv 2311.08105): the H steps are the inner AdamW steps; at a
sync the pseudo-gradient (the parameters at the last sync minus now) is averaged across ranks (fp32,
fp16 or bf16 on the wire) and an outer SGD with Nesterov momentum (``--outer_lr``,
``--outer_momentum``) applies it to the parameters at the last sync; every rank continues from
the result. With outer lr 1 and momentum 0 this is local SGD.

The ranks also meet at the run's last step (``max_steps``), so the final model is one model.
Between syncs each rank's parameters and optimizer moments are its own (``rank_state``); the
parameters at the last sync and the outer momentum are the same on every rank (``state_dict``).
Gradients are clipped per rank: there is no averaged gradient.
"""

from __future__ import annotations

import time

import torch

from hvdlm import distributed as dist
from hvdlm.sync.base import OwnCollectives, StepStats, flatten, ring_bytes, unflatten_into


class Periodic(OwnCollectives):
    def __init__(self, every: int, max_steps: int, outer: tuple[float, float] | None, wire: str):
        self.every, self.max_steps, self.outer, self.wire = every, max_steps, outer, wire
        self.anchor: torch.Tensor | None = None  # diloco: the parameters at the last sync (flat)
        self.outer_opt: torch.optim.SGD | None = None
        self.outer_state: dict | None = None  # the outer optimizer's state, loaded before start()
        self.own: dict | None = None  # this rank's parameters and moments, from a checkpoint

    def describe(self) -> str:
        if self.outer is None:
            return f"local SGD, parameters averaged every {self.every} steps"
        lr, momentum = self.outer
        wire = "" if self.wire == "none" else f", {self.wire} on the wire"
        return f"DiLoCo, outer Nesterov SGD (lr {lr:g}, momentum {momentum:g}) every {self.every} steps{wire}"

    def start(self, model):
        dist.broadcast_parameters(model)
        if self.own is not None:  # resuming on the same rank count: this rank's own state between syncs
            with torch.no_grad():
                unflatten_into(self.own["params"], self.params)
            self.optimizer.load_state_dict(self.own["optimizer"])
        if self.outer is not None:
            if self.anchor is None:
                self.anchor = flatten([p.detach() for p in self.params]).clone()
            lr, momentum = self.outer
            self.outer_opt = torch.optim.SGD([self.anchor], lr=lr, momentum=momentum, nesterov=momentum > 0)
            if self.outer_state is not None:
                self.outer_opt.load_state_dict(self.outer_state)

    def step(self, optimizer, model, grad_clip):
        return StepStats(0.0, self.clip_and_step(optimizer, model, grad_clip))

    def after_step(self, step, model):
        if step % self.every and step != self.max_steps:
            return 0.0
        t0 = time.perf_counter()
        with torch.no_grad():
            now = flatten([p.detach() for p in self.params])
            if self.outer is None:
                unflatten_into(dist.allreduce_average(now, "hvdlm.local_sgd"), self.params)
            else:
                self.outer_step(now)
        self.sent_bytes += ring_bytes(now.numel(), 4 if self.wire == "none" else 2)
        return time.perf_counter() - t0

    def outer_step(self, now: torch.Tensor) -> None:
        delta = self.anchor - now  # the pseudo-gradient: where this rank's inner steps went, negated
        if self.wire == "bf16":
            delta = dist.bf16_average(delta, "hvdlm.diloco.bf16")
        else:
            delta = dist.allreduce_average(delta, "hvdlm.diloco", self.wire)
        self.anchor.grad = delta
        self.outer_opt.step()
        self.anchor.grad = None
        unflatten_into(self.anchor, self.params)

    def state_dict(self) -> dict:
        if self.anchor is None:
            return {}
        return {"anchor": self.anchor.clone(), "outer": self.outer_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state and self.outer is not None and "anchor" in state:
            self.anchor, self.outer_state = state["anchor"].clone(), state["outer"]

    def rank_state(self) -> dict | None:
        return {"params": flatten([p.detach() for p in self.params]).clone(),
                "optimizer": self.optimizer.state_dict()}

    def load_rank_states(self, states: list[dict] | None) -> str:
        if not states or "params" not in states[0]:  # none, or another strategy's
            return ""
        if len(states) != dist.size():
            return (f"hvdlm: the checkpoint holds the parameters and moments of {len(states)} rank(s) between syncs, "
                    f"this run has {dist.size()}: every rank continues from rank 0's (the last sync's are kept)")
        self.own = states[dist.rank()]
        return ""
