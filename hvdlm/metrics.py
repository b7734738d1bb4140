"""What a run reports: a progress bar and one-line messages on rank 0, ``metrics.jsonl``, and
TensorBoard scalars in ``<out_dir>/tensorboard`` (``tensorboard --logdir <out_dir>``).

Only rank 0 prints or writes; on other ranks every method does nothing, so the training loop
calls them unconditionally.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from hvdlm.console import say
# TensorBoard tag of each record value; "loss/train" beside "loss/val" puts them on one page.
# Other numbers a record carries go under "<kind>/<name>".
TB_TAGS = {
    "loss": "loss/train", "val_loss": "loss/val", "val_ppl": "perplexity/val",
    "lr": "optim/lr", "grad_norm": "optim/grad_norm",
    "tokens_per_s": "speed/tokens_per_s", "step_time": "speed/step_time_s", "mfu": "speed/mfu",
    "allreduce_wait": "comm/allreduce_wait_s", "bytes_per_step": "comm/bytes_sent_per_step",
}


class Metrics:
    def __init__(self, out_dir: str | Path, enabled: bool, total_steps: int, start_step: int,
                 progress: bool = True, tensorboard: bool = False, log_interval: int = 1):
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
        self.tb = TensorBoard(Path(out_dir) / "tensorboard") if enabled and tensorboard else None

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
        if self.tb and kind != "summary":
            self._scalars(kind, values)
        if kind != "train":
            return
        mfu = values.get("mfu")
        if self.bar:
            self.bar.set_postfix(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}",
                                 **({"mfu": f"{100 * mfu:.1f}%"} if mfu is not None else {}))
        elif self.print_records:
            say(f"step {values['step']}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                f"{values['tokens_per_s']:.0f} tokens/s" + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
                + f", allreduce wait {1e3 * values['allreduce_wait']:.1f} ms")

    def _scalars(self, kind: str, values: dict) -> None:
        step = values.get("step", 0)
        for name, value in values.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                continue  # not a number, or nan (a figure the run does not know)
            self.tb.add(TB_TAGS.get(name, f"{kind}/{name}"), value, step)

    def advance(self, steps: int = 1) -> None:
        if self.bar:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


class TensorBoard:
    """Scalars to a TensorBoard event file, written by a thread of its own: importing TensorBoard
    (protobuf) is slow and each scalar is serialized and written, none of which the training
    loop should wait for. ``add`` only queues; ``close`` writes what is queued and the file."""

    def __init__(self, log_dir: Path):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(log_dir,), name="hvdlm-tensorboard", daemon=True)
        self.thread.start()

    def add(self, tag: str, value: float, step: int) -> None:
        self.queue.put((tag, float(value), step, time.time()))

    def _run(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("hvdlm: tensorboard is not installed (pip install tensorboard): no TensorBoard scalars; "
                  "metrics.jsonl has them all", flush=True)
            while self.queue.get() is not None:
                pass
            return
        writer = SummaryWriter(str(log_dir))
        while (item := self.queue.get()) is not None:
            tag, value, step, wall = item
            writer.add_scalar(tag, value, step, walltime=wall)
        writer.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def read_jsonl(path: str | Path, kind: str | None = None) -> list[dict]:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]
