"""Elastic training's Horovod side (``hvdlm/elastic.py`` is the rest: the launcher and the loop's session): ranks leave and join while the job
runs; the state is committed in memory and synced from rank 0 after every reset."""

from __future__ import annotations

import copy
import os
from typing import Callable, TypeVar

import horovod.torch as hvd
import torch

from hvdlm.distributed.collectives import broadcast_object

T = TypeVar("T")


def elastic_launched() -> bool:
    """Whether this process was started by Horovod's elastic launcher."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


class ElasticState:
    """What Horovod elastic restores after a rank is lost and sends to a rank that joins: the
    model, the optimizer and every other ``stateful`` object (the run's ``TrainState``, the sync
    strategy), as of the last ``commit()``.

    Horovod's own ``TorchState`` syncs the optimizer with ``broadcast_optimizer_state``, which on
    a fresh optimizer (every rank at the start, a joining rank later) runs a zero-gradient
    ``step()``: with AdamW that moves the weights by their weight decay and sets the step count to
    1, so a joining rank's weights would no longer match the others'. Here rank 0's optimizer
    state dict is broadcast and loaded instead (``tests/test_elastic.py`` checks both).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *stateful):
        from horovod.common.elastic import State

        def snapshot():
            return model.state_dict(), optimizer.state_dict(), [s.state_dict() for s in stateful]

        def load(model_state, optimizer_state, others):
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
            for obj, obj_state in zip(stateful, others):
                obj.load_state_dict(obj_state)

        class _State(State):  # Horovod's protocol: save / restore / sync / commit
            def save(inner):
                self._saved = copy.deepcopy(snapshot())

            def restore(inner):
                load(*copy.deepcopy(self._saved))

            def sync(inner):
                hvd.broadcast_parameters(model.state_dict(), root_rank=0)
                _, optimizer_state, others = snapshot()
                # tensors as tensors, each landing on this rank's own device (not rank 0's GPU index)
                optimizer_state, others = broadcast_object((optimizer_state, others), name="hvdlm.elastic.sync")
                load(model.state_dict(), optimizer_state, others)
                inner.save()  # a rank lost before the first commit goes back to the synced state

        self.horovod = _State(bcast_object=broadcast_object, get_rank=hvd.rank)
        self.horovod.save()

    def commit(self) -> None:
        """Keep the current state in memory; raises HostsUpdatedInterrupt when ranks are to join
        or leave (Horovod then restarts the training function at the new size)."""
        self.horovod.commit()


def elastic_run(fn: Callable[[ElasticState], T], log: str) -> Callable[[ElasticState], T]:
    """``hvd.elastic.run``: run ``fn(state)``; when a rank fails (HorovodInternalError) restore the
    last commit, when hosts change keep the current state; then re-initialise Horovod at the new
    size, sync the state from rank 0 and call ``fn`` again.

    A rank the launcher removes learns it inside ``hvd.init()``, where Horovod aborts the process
    with a C++ message on stderr; that message goes to the file ``log`` instead of the terminal
    (the launcher already says that the rank left).
    """
    from horovod.common.elastic import run_fn

    def reset():
        hvd.shutdown()
        saved = os.dup(2)
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            fd = None
        if fd is not None:
            os.dup2(fd, 2)
        try:
            hvd.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if fd is not None:
                os.close(fd)

    wrapped = run_fn(lambda horovod_state, state: fn(state), reset)
    return lambda state: wrapped(state.horovod, state)
