"""``hvdlm plot RUN_DIR... --out FILE.png``: loss curves of one or more runs, overlaid.

Three panels share the loss axis: against optimizer steps, against tokens seen, and against wall
time. Each run is one colour: train loss as a line, validation loss as dots joined by a dashed
line. Everything comes from the runs' ``metrics.jsonl``; a run that was resumed appends to the
same file, and its clock (seconds since that invocation started) is continued from the last
record before the resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hvdlm.errors import HvdlmError
from hvdlm.metrics import read_jsonl

AXES = [("step", "optimizer step"), ("tokens", "tokens seen"), ("seconds", "wall time (s)")]


@dataclass
class Curve:
    step: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def add(self, step: int, tokens: float, seconds: float, loss: float) -> None:
        self.step.append(step)
        self.tokens.append(tokens)
        self.seconds.append(seconds)
        self.loss.append(loss)


def read_run(run_dir: str | Path) -> tuple[Curve, Curve]:
    """(train, val) curves of one run folder."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise HvdlmError(f"{run_dir} holds no metrics.jsonl: pass the out_dir of a training run")
    try:
        rows = read_jsonl(path)
    except (ValueError, KeyError) as e:
        raise HvdlmError(f"{path} is not an hvdlm metrics file: {e}") from None
    train_rows = [r for r in rows if r.get("kind") == "train"]
    # tokens per optimizer step is fixed for a run (a resume keeps the global batch)
    per_step = next((r["tokens_per_s"] * r["step_time"] for r in train_rows if r.get("step_time")), 0.0)
    train, val = Curve(), Curve()
    offset, last_time = 0.0, 0.0
    for r in rows:
        if r.get("time", 0.0) < last_time - offset:  # a new invocation: its clock starts again at 0
            offset = last_time
        last_time = r.get("time", 0.0) + offset
        if r.get("kind") == "train":
            train.add(r["step"], r["step"] * per_step, last_time, r["loss"])
        elif r.get("kind") == "eval":
            val.add(r["step"], r["step"] * per_step, last_time, r["val_loss"])
    if not train.step and not val.step:
        raise HvdlmError(f"{path} has no train or eval records yet")
    return train, val


def plot_runs(run_dirs: list[str], out: str | Path, labels: list[str] | None = None, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels and len(labels) != len(run_dirs):
        raise HvdlmError(f"--labels gives {len(labels)} names for {len(run_dirs)} runs")
    runs = [read_run(d) for d in run_dirs]
    names = labels or _short_names(run_dirs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for i, ((train, val), name) in enumerate(zip(runs, names)):
        color = f"C{i % 10}"
        for ax, (key, _) in zip(axes, AXES):
            ax.plot(getattr(train, key), train.loss, color=color, lw=1.2, label=f"{name} train")
            ax.plot(getattr(val, key), val.loss, color=color, ls="--", marker="o", ms=3, label=f"{name} val")
    for ax, (key, xlabel) in zip(axes, AXES):
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if key == "tokens":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    axes[0].set_ylabel("loss (nats per token)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "hvdlm: train and validation loss", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as e:
        raise HvdlmError(f"cannot write {out}: {e}") from None
    finally:
        plt.close(fig)
    return out


def _short_names(run_dirs: list[str]) -> list[str]:
    """The folder names, or the whole paths when two runs share a folder name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]
