"""A process no launcher started (plain `hvdlm train`, `hvdlm eval`) trains alone: Horovod starts
over Gloo with a slow cycle, and hvdlm's collectives return without reaching Horovod."""

from __future__ import annotations

import subprocess
import sys

from hvdlm.distributed import LAUNCHER_VARS, solo_engine

# What the README promises a process no launcher started: Horovod over Gloo, with a 50 ms cycle.
DOCUMENTED_SOLO = {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_CYCLE_TIME": "50"}


SOLO_PROBE = r'''
import os, sys
import horovod.torch as hvd
import torch
from hvdlm import distributed as d

d.init(1)
print("gloo", hvd.gloo_enabled(), "mpi", hvd.mpi_enabled(), "size", hvd.size())
from hvdlm.launcher import SOLO
print("left", sorted(k for k in SOLO if k in os.environ), os.environ.get("HOROVOD_CYCLE_TIME"))

def engine(*args, **kwargs):
    raise AssertionError("a Horovod collective was called by a process alone")

for name in ("allreduce", "allreduce_async", "allgather", "allgather_object", "broadcast_object", "broadcast_parameters"):
    setattr(hvd, name, engine)
d.barrier("hvdlm.test")
d.broadcast_parameters(torch.nn.Linear(2, 2))
stop = d.StopSignals()
stop.start()
print("answers", d.agree(lambda: 3), d.on_root(lambda: 4), d.allgather("h"), d.average([1.5], "a"),
      d.sum_all([2.5], "s"), d.broadcast_object(5), d.gather_objects(6, "g"), stop.after_step(1, 0.1))
'''


def test_a_process_no_launcher_started_runs_horovod_over_gloo_and_its_collectives_return_at_once():
    """`hvdlm train` without a launcher: Horovod's Gloo controller (MPI's singleton start costs
    ~0.35 s and an orted daemon), a slow cycle, none of it inherited by processes it starts; hvdlm's
    collectives never reach Horovod, so they never wait for its cycle."""
    from support.launch import launch_env

    env = {k: v for k, v in launch_env().items() if k not in LAUNCHER_VARS and k != "HOROVOD_CYCLE_TIME"}
    run = subprocess.run([sys.executable, "-c", SOLO_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gloo True mpi False size 1" in run.stdout, run.stdout
    assert "left [] None" in run.stdout, run.stdout  # read at hvd.init, then removed again
    assert "answers 3 4 ['h'] [1.5] [2.5] 5 [6] None" in run.stdout, run.stdout
    mine = subprocess.run([sys.executable, "-c", SOLO_PROBE], capture_output=True, text=True, timeout=120,
                          env=dict(env, HOROVOD_CYCLE_TIME="7"))
    # the user's cycle wins
    assert mine.returncode == 0 and "left ['HOROVOD_CYCLE_TIME'] 7" in mine.stdout, mine.stdout + mine.stderr[-2000:]


def test_always_exchange_sends_a_lone_ranks_collectives_through_horovod():
    """HVDLM_ALWAYS_EXCHANGE=1 (gpu_check's switch: every exchange path through NCCL on one GPU):
    the same process's first collective reaches Horovod instead of the alone shortcut."""
    from support.launch import launch_env

    env = {k: v for k, v in launch_env().items() if k not in LAUNCHER_VARS and k != "HOROVOD_CYCLE_TIME"}
    run = subprocess.run([sys.executable, "-c", SOLO_PROBE], capture_output=True, text=True, timeout=120,
                         env=dict(env, HVDLM_ALWAYS_EXCHANGE="1"))
    assert run.returncode != 0 and "a Horovod collective was called by a process alone" in run.stderr, run.stderr[-2000:]


def test_the_solo_engine_is_only_for_processes_no_launcher_started():
    alone = {}
    assert solo_engine(alone) == DOCUMENTED_SOLO and alone == DOCUMENTED_SOLO
    for launched in ({"OMPI_COMM_WORLD_SIZE": "1"}, {"HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1"},
                     {"PMI_SIZE": "2"}, {"HOROVOD_ELASTIC": "1"}, {"HOROVOD_CONTROLLER": "mpi"}):
        env = dict(launched)
        assert solo_engine(env) == {} and env == launched
