"""A training run's outputs as the tests read them (its checkpoint, final parameters and losses),
the 2-rank reference run that fault and elastic tests compare against, and the short runs of the
sync tests (test_sync, test_nranks, test_cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hvdlm.metrics import read_jsonl

from .launch import HVDLM, TESTS, TINY, check, launch

SYNC_PROBE = str(TESTS / "sync_probe.py")
G12 = ["--global_batch_size", "12", "--batch_size", "4"]  # splits over 2, 3 and 4 ranks


def saved(out_dir) -> dict:
    """The run's checkpoint.pt, as torch reads it (tensors only, nothing unpickled)."""
    return torch.load(Path(out_dir) / "checkpoint.pt", weights_only=True)


def final_params(out_dir) -> dict:
    return saved(out_dir)["model"]


def losses(out_dir) -> dict[int, float]:
    """Step -> training loss, from rank 0's metrics.jsonl."""
    return {r["step"]: r["loss"] for r in read_jsonl(Path(out_dir) / "metrics.jsonl", "train")}


def assert_same_params(got_dir, want_dir, rtol: float, atol: float) -> None:
    want = final_params(want_dir)
    for name, got in final_params(got_dir).items():
        torch.testing.assert_close(got, want[name], rtol=rtol, atol=atol, msg=name)


def reference_params(tmp_path_factory, train_flags: Callable[[Path], list], timeout: float = 240) -> dict:
    """The parameters of a 2-rank run (Gloo) of `hvdlm train` with ``train_flags(out_dir)``, without a
    fault: what an interrupted or elastic run of the same flags must reach."""
    out = tmp_path_factory.mktemp("whole")
    check(launch("horovodrun-gloo", [HVDLM, "train", *map(str, train_flags(out))], timeout=timeout))
    return final_params(out)


def flags(corpus, out_dir, *extra) -> list[str]:
    """8 steps of the tiny model, a loss logged every step."""
    where = ["--out_dir", str(out_dir)] if out_dir else []
    return ["--data_dir", str(corpus), *where, *TINY, "--max_steps", "8", "--log_interval", "1",
            "--eval_interval", "0", *extra]
