"""The RESULTS tables from results.jsonl (run.sh's output): python table.py [results.jsonl]"""

import json
import sys
from pathlib import Path

rows = [json.loads(line) for line in open(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.jsonl"))]


def gb(mb):
    return f"{mb / 1024:.2f}" if mb else "-"


def peaks(values):
    return "/".join(f"{v / 1024:.1f}" for v in values) if values else "-"


print("| model | ranks | sync | code | main file GB | rank file GB | save: step blocked, first / later (s) | "
      "save: total (s) | steps + saves, 1st invocation (s) | resume: rank 0 read / state on every rank (s) | "
      "floor: cold read + bare broadcast (s) | ready after start: fresh / resumed (s) | peak RSS GB per rank: "
      "training / save / resume | resumed | load |")
print("|" + "---|" * 15)
for r in rows:
    resumed = "yes" if r.get("resume_exit") == 0 else f"exit {r.get('resume_exit')}"
    code = {"after": "new, background", "after-sync": "new, waits", "before": "before (watchdog off)",
            "before-watchdog": "before (watchdog on)"}.get(r["label"], r["label"])
    on_root = max(r.get("resume_on_root_s") or [0]) or None
    ready = (f"{max(r.get('first_ready_s') or [0]):.1f} / {max(r.get('resume_ready_s') or [0]):.1f}"
             if r.get("resume_ready_s") else "-")
    print(f"| {r['preset']}{' ' + r['extra'] if r['extra'] else ''} | {r['np']} | {r['sync']} | {code} | "
          f"{gb(r['main_mb'])} | {gb(r['rank_file_mb'])} | "
          f"{r.get('save_blocked_s_first', '-')} / {r.get('save_blocked_s_later', '-')} | {r.get('save_total_s_later', '-')} | "
          f"{r.get('first_loop_s', '-')} | {r.get('resume_rank0_read_s', '-')} / {on_root if on_root else '-'} | "
          f"{r.get('cat_cold_s')} + {r.get('bare_broadcast_s')} | {ready} | "
          f"{peaks(r.get('train_peak_mb'))} / {peaks(r.get('save_peak_mb'))} / {peaks(r.get('resume_peak_mb'))} | "
          f"{resumed} | {' '.join(r.get('load', []))} |")
