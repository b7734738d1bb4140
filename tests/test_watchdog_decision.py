"""The watchdog's decision as a pure function: what a rank knows in, a verdict out. No threads,
sockets or /proc: every case is a Knowledge built by hand and a clock value."""

from __future__ import annotations

import pytest

from hvdlm.watchdog import (EXIT_STALLED, FLOOR_SECONDS, INTERVAL, STARTUP_SECONDS, Knowledge, Peer, decide, explain,
                            limit)

NOW = 1000.0


def peer(rank, seen_ago=0.1, heard=5, phase="forward/backward", step=7, left=None, host=None):
    return Peer(rank, host or f"node{rank}", 4000 + rank, "m", [], 0, last_seen=NOW - seen_ago, heard=heard,
                step=step, phase=phase, left=left)


def knows(rank=0, size=2, peers=(), phase="forward/backward", idle=0.0, **kw):
    """Rank ``rank`` of ``size``, last progress ``idle`` seconds ago, with 10 ms steps measured."""
    fields = dict(rank=rank, size=size, host=f"node{rank}", phase=phase, step=7, progress_at=NOW - idle,
                  step_times=(0.01,) * 10, step_timeout=None, peer_timeout=20.0, watch_peers=bool(peers),
                  peers=tuple(peers), connected_at=NOW - 100, log=f"out/error-rank{rank}.log")
    fields.update(kw)
    return Knowledge(**fields)


def test_all_well_keeps_waiting():
    d = decide(knows(peers=[peer(1)]), NOW)
    assert d.status is None and d.line is None and d.warning is None


def test_a_peer_silent_past_the_peer_timeout_ends_the_job_and_rank_0_names_it():
    d = decide(knows(peers=[peer(1, seen_ago=21, phase="data loading", step=12)]), NOW)
    assert d.status == EXIT_STALLED and d.blamed == (1,) and d.speaks
    assert d.line == ("hvdlm: rank 1 on node1 has sent no heartbeat for 21s (the last one from data loading at "
                      "step 12): it is stopped, hung or cut off from rank 0 on node0; ending the job (details in "
                      "out/error-rank0.log)")
    assert decide(knows(peers=[peer(1, seen_ago=19)]), NOW).status is None


def test_without_rank_0_a_rank_blames_rank_0_alone_and_another_rank_speaks():
    d = decide(knows(rank=2, size=3, peers=[peer(0, seen_ago=30), peer(1, seen_ago=30)]), NOW)
    assert d.blamed == (0,) and "rank 0 on node0 has sent no heartbeat" in d.line
    assert not d.speaks  # rank 1, the lowest rank not at fault, says it
    assert decide(knows(rank=1, size=3, peers=[peer(0, seen_ago=30), peer(2, seen_ago=30)]), NOW).speaks


def test_a_peer_never_heard_from_is_not_dead_but_warned_about_once():
    k = knows(peers=[peer(1, seen_ago=50, heard=0)])
    d = decide(k, NOW)
    assert d.status is None and "has had no heartbeat from rank 1 on node1 in 20s" in d.warning
    assert decide(knows(peers=[peer(1, seen_ago=50, heard=0)], warned=True), NOW).warning is None
    assert decide(knows(peers=[peer(1, seen_ago=5, heard=0)], connected_at=NOW - 5), NOW).warning is None


def test_a_stall_in_its_own_work_names_this_rank_and_its_phase():
    d = decide(knows(peers=[peer(1, phase="allreduce")], phase="data loading", idle=61), NOW)
    assert d.status == EXIT_STALLED and d.blamed == (0,) and d.speaks
    assert d.line.startswith("hvdlm: rank 0 on node0: no progress for 61s while data loading at step 7 (limit 60s)")
    assert decide(knows(peers=[peer(1)], phase="data loading", idle=59), NOW).status is None
    # The stuck rank speaks even when it is not rank 0.
    assert decide(knows(rank=1, peers=[peer(0, phase="allreduce")], phase="data loading", idle=61), NOW).speaks


def test_waiting_on_a_busy_peer_leaves_the_line_to_it_for_a_while():
    """Rank 0 waits in the allreduce; rank 1, alive, is in its own long work (checkpointing)."""
    busy = peer(1, phase="checkpointing")
    assert decide(knows(peers=[busy], phase="allreduce", idle=200), NOW).status is None
    d = decide(knows(peers=[busy], phase="allreduce", idle=FLOOR_SECONDS + STARTUP_SECONDS + 16), NOW)
    assert d.blamed == (1,) and "; rank 1 on node1 is stuck while checkpointing at step 7" in d.line
    assert d.speaks  # rank 0 is the lowest rank not at fault


def test_a_hung_collective_is_said_by_rank_0_alone():
    for rank, speaks in ((0, True), (1, False)):
        other = peer(1 - rank, phase="allreduce")
        d = decide(knows(rank=rank, peers=[other], phase="allreduce", idle=61), NOW)
        assert d.status == EXIT_STALLED and d.blamed == () and d.speaks is speaks
        assert "every peer is alive and waiting too (a collective hung)" in d.line


def test_a_peer_that_said_why_it_failed_keeps_this_rank_quiet():
    failed = peer(1, seen_ago=30, left="failed: RuntimeError: boom")
    d = decide(knows(peers=[failed], phase="data loading", idle=61), NOW)
    assert d.status == EXIT_STALLED and not d.speaks  # the failed peer said it already
    v = explain(knows(peers=[failed]), NOW)
    assert v.line is None and "boom" in v.cause and v.blamed == [1]


def test_a_signal_while_a_local_peer_is_gone_names_it():
    """The launcher ends the job (a signal) after a peer's process ended on this machine."""
    k = knows(peers=[peer(1)], phase="allreduce", idle=5, local=frozenset({1}), ended=frozenset({1}),
              signal_at=NOW - 1)
    d = decide(k, NOW)
    assert d.blamed == (1,) and d.speaks
    assert d.line.startswith("hvdlm: rank 1 on node1 is gone (its process ended) while rank 0 was in allreduce")
    # Progress since the signal: not the launcher ending us; a live local peer: not gone.
    assert decide(knows(peers=[peer(1)], local=frozenset({1}), ended=frozenset({1}), signal_at=NOW - 1,
                        idle=0), NOW).status is None
    assert decide(knows(peers=[peer(1)], phase="allreduce", idle=5, local=frozenset({1}), signal_at=NOW - 1),
                  NOW).status is None


def test_explain_names_a_remote_peer_silent_for_three_heartbeats():
    v = explain(knows(rank=1, peers=[peer(0, seen_ago=3 * INTERVAL + 1)]), NOW)
    assert v.blamed == [0] and "no heartbeat for 2.5s" in v.cause and v.line == v.cause
    assert explain(knows(peers=[peer(1)]), NOW) is None


def test_elastic_watches_only_its_own_progress():
    """No peers watched: a silent peer record changes nothing, the progress limit still holds."""
    k = knows(peers=[peer(1, seen_ago=100)], watch_peers=False)
    assert decide(k, NOW).status is None
    assert decide(knows(size=1, phase="evaluation", idle=FLOOR_SECONDS + 1), NOW).blamed == (0,)


@pytest.mark.parametrize("phase, times, option, expected", [
    ("forward/backward", (), None, STARTUP_SECONDS),  # nothing measured yet
    ("forward/backward", (0.01,) * 9, None, FLOOR_SECONDS),
    ("forward/backward", (20.0,) * 50, None, 200.0),
    ("checkpointing", (20.0,) * 50, None, STARTUP_SECONDS),
    ("starting up", (), 7.5, STARTUP_SECONDS),  # at least that, whatever the option says
    ("allreduce", (), 7.5, 7.5),
])
def test_the_limit_follows_the_step_time_and_the_phase(phase, times, option, expected):
    assert limit(phase, times, option) == pytest.approx(expected)
