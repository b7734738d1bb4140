"""Val loss at each evaluated step of the runs, as a Markdown table: python summarize.py RUN_DIR..."""
import json
import sys
from pathlib import Path


def evals(run: Path) -> dict[int, float]:
    rows = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["val_loss"] for r in rows if r["kind"] == "eval"}


runs = {Path(p).name: evals(Path(p)) for p in sys.argv[1:]}
steps = sorted(set().union(*runs.values()))
print("| run | " + " | ".join(str(s) for s in steps) + " |")
print("|---" * (len(steps) + 1) + "|")
for name, losses in runs.items():
    print(f"| {name} | " + " | ".join(f"{losses[s]:.4f}" if s in losses else "" for s in steps) + " |")
