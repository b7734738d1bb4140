"""What a run reports: a progress bar and one-line messages on rank 0, ``metrics.jsonl``.

Only rank 0 prints or writes; on other ranks every method does nothing, so the training loop
calls them unconditionally.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from hvdlm.console import say


class Metrics:
    def __init__(self, out_dir: str | Path, enabled: bool, total_steps: int, start_step: int,
                 progress: bool = True, log_interval: int = 1):
        self.enabled, self.log_interval = enabled, log_interval
        self.start = time.time()
        self.file = open(Path(out_dir) / "metrics.jsonl", "a") if enabled else None
        self.bar = None
        # A bar only on a terminal: launchers pipe each rank's output and prefix every line, which
        # turns a bar's carriage returns into noise. Elsewhere each train record prints one line.
        if enabled and progress and sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)
        self.print_records = enabled and self.bar is None and progress

    def due(self, step: int, last_step: int, stopped: object = None) -> bool:
        """Whether the loop should record a train row after ``step`` (a collective: every rank asks)."""
        return step % self.log_interval == 0 or step == last_step or bool(stopped)

    def info(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar else say)(message)

    def record(self, kind: str, **values) -> None:
        """One JSON line: ``{"kind": "train"|"eval"|"summary", "time": seconds since start, ...}``."""
        if not self.enabled:
            return
        line = {"kind": kind, "time": round(time.time() - self.start, 3), **values}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        if kind != "train":
            return
        if self.bar:
            self.bar.set_postfix(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}")
        elif self.print_records:
            say(f"step {values['step']}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                f"{values['tokens_per_s']:.0f} tokens/s, allreduce wait {1e3 * values['allreduce_wait']:.1f} ms")

    def advance(self, steps: int = 1) -> None:
        if self.bar:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.file:
            self.file.close()


def read_jsonl(path: str | Path, kind: str | None = None) -> list[dict]:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]
