"""The extrapolated tables of `hvdlm plan` (pure computation; nothing is measured): gpt2 and a 1.3B
shape at 8, 64 and 1,024 ranks, 8 a host, on three links. Writes one Markdown file per case (the
command, then its output) and summary.md. Run from the repository root:
    python benchmarks/results/plan/extrapolate.py
"""

import contextlib
import io
import json
import shlex
import sys
import tempfile
from pathlib import Path

from hvdlm.cli import main

HERE = Path(__file__).parent
MODELS = {  # name -> flags; vocab 50304 (GPT-2's BPE padded to a multiple of 64)
    "gpt2": ["--preset", "gpt2", "--vocab_size", "50304", "--global_batch_size", "1024", "--batch_size", "16"],
    "1.3b": ["--preset", "gpt2", "--n_layer", "24", "--n_embd", "2048", "--n_head", "16", "--block_size", "2048",
             "--vocab_size", "50304", "--global_batch_size", "1024", "--batch_size", "4"],
}
LINKS = {  # name -> flags
    "ib400": ["--link", "400gbit,3us"],
    "ib400-hier": ["--link", "400gbit,3us", "--hierarchical"],
    "eth25": ["--link", "25gbit,20us"],
    "sites1": ["--link", "1gbit,10ms"],
    "sites1-hier": ["--link", "1gbit,10ms", "--hierarchical"],
}
RANKS = [8, 64, 1024]
COMMON = ["--gpu", "H100", "--mfu", "0.4", "--precision", "bf16", "--ranks_per_host", "8"]


def eff(row: dict) -> str:
    """'75% (46.9 ms, 22.4M tok/s)': scaling efficiency, step time, tokens/s."""
    ms = row["step_ms"]
    return (f"{row['efficiency']:.0%} ({ms:,.0f} ms" if ms >= 100 else f"{row['efficiency']:.0%} ({ms:.3g} ms") + \
        f", {row['tokens_per_s'] / 1e6:.3g}M tok/s)"


def seconds(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms / 1e3:,.3g} s" if ms < 1e5 else f"{ms / 1e3:,.0f} s"


def run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    return out.getvalue()


def main_() -> None:
    compact = ["| model | ranks | link | none (fp32) | fp16 | fastest within 3% | fp32 bound by |", "|" + "---|" * 7]
    summary = ["| model | ranks | link | none (fp32) | fp16 | fastest within 3% | fastest of all | "
               "none is bound by | fp16 is bound by |", "|" + "---|" * 9]
    for model, flags in MODELS.items():
        for link_name, link in LINKS.items():
            for ranks in RANKS:
                with tempfile.TemporaryDirectory() as tmp:
                    if ranks == 8 and link_name.endswith("-hier"):
                        continue  # one host: nothing hierarchical
                    argv = ["plan", *flags, *COMMON, "--ranks", str(ranks), *link,
                            "--json", f"{tmp}/plan.json"]
                    text = run(argv)
                    doc = json.loads(Path(f"{tmp}/plan.json").read_text())
                shown = " ".join(shlex.quote(a) for a in argv if not a.startswith(tmp) and a != "--json")
                (HERE / f"{model}-{link_name}-{ranks}.md").write_text(f"```\nhvdlm {shown}\n```\n\n{text}")
                rows = {r["method"]: r for r in doc["rows"]}
                best = rows[doc["choice"]]
                top = max(doc["rows"], key=lambda r: r["tokens_per_s"])
                loss = "not measured" if top["loss_penalty_pct"] is None else f"+{top['loss_penalty_pct']:g}%"
                summary.append(f"| {model} | {ranks} | {' '.join(link[1:])} | {eff(rows['none'])} | "
                               f"{eff(rows['fp16'])} | {doc['choice']}: {eff(best)} | {top['method']}: {eff(top)}, "
                               f"loss {loss} | {rows['none']['bound_by']} | {rows['fp16']['bound_by']} |")
                short = lambda r: f"{r['efficiency']:.0%} ({seconds(r['step_ms'])})"  # noqa: E731
                compact.append(f"| {model} | {ranks} | {' '.join(link[1:])} | {short(rows['none'])} | "
                               f"{short(rows['fp16'])} | {doc['choice']} {short(best)} | {rows['none']['bound_by']} |")
                print(summary[-1], file=sys.stderr, flush=True)
    (HERE / "summary.md").write_text("\n".join(summary) + "\n")
    (HERE / "compact.md").write_text("\n".join(compact) + "\n")


if __name__ == "__main__":
    main_()
