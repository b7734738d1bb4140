"""Telling a full disk from other write errors, so a checkpoint that does not fit is one line."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch


def state_bytes(obj) -> int:
    """Bytes of the tensors in a state: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def is_disk_full(e: BaseException, out: Path, state: dict) -> bool:
    """ENOSPC/EDQUOT, or torch.save's own write error (``[enforce fail at inline_container.cc]
    ... unexpected pos``, which drops the errno) with less room left than a checkpoint needs."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        return "inline_container" in str(e) and shutil.disk_usage(out).free < state_bytes(state) + (1 << 20)
    except OSError:
        return False
