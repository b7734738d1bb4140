"""Building elastic jobs: what `hvdlm elastic` starts (hvdlm.elastic.launch_command), 2 ranks at
most and 1 at least, hosts from a discovery script that prints a file the test rewrites, and each
rank run through tests/rank_probe.py, which slows every batch a little (HVDLM_PROBE_STEP_SLEEP;
horovodrun passes the environment on, to other hosts too) so that changes land mid-training."""

from __future__ import annotations

from pathlib import Path

from hvdlm.config import FIELDS, _base_type, load_config
from hvdlm.elastic import launch_command
from hvdlm.metrics import read_jsonl

from .faults import Job
from .launch import PROBE, launch_env

STEP_SLEEP = "0.03"


def flag_dict(flags: list[str]) -> dict:
    return {k.lstrip("-"): v for k, v in zip(flags[::2], flags[1::2])}


def elastic_command(flags: list[str], data_dir: Path, out_dir: Path, discovery_script: Path,
                    **launcher) -> list[str]:
    """horovodrun's elastic command for `hvdlm elastic` with ``flags``, each rank the probe."""
    given = dict(flag_dict(flags), data_dir=str(data_dir), out_dir=str(out_dir), min_ranks=1, max_ranks=2,
                 discovery_script=str(discovery_script))
    cfg = load_config(None, {k: _base_type(FIELDS[k][1])(v) for k, v in given.items()})
    cmd = launch_command(cfg, given, np=2, config_file=None, **launcher)
    at = cmd.index("-m")  # `python -m hvdlm` -> the probe, with the same train options
    return cmd[:at] + [PROBE, "fault", "unused", "--"] + cmd[at + 3:]


def discovery_script(workdir: Path, hosts: str) -> tuple[Path, Path]:
    """A discovery script in ``workdir`` that prints a hosts file, and that file, holding ``hosts``
    ("localhost:2\n"; rewrite it to move hosts in and out)."""
    workdir.mkdir(parents=True, exist_ok=True)
    hosts_file, script = workdir / "hosts.txt", workdir / "discover.sh"
    hosts_file.write_text(hosts)
    script.write_text(f"#!/bin/sh\ncat {hosts_file}\n")
    script.chmod(0o755)
    return script, hosts_file


def start_elastic(flags: list[str], data_dir: Path, workdir: Path, hosts: str, prefix: list[str] = (),
                  marker: bool = False, **launcher) -> tuple[Job, Path, Path]:
    """Start it (after ``prefix``, e.g. `cluster.sh exec hvdnode1`); returns the job, its out_dir
    and the hosts file the discovery script prints (rewrite it to move hosts in and out).
    ``marker``: find the ranks by the out_dir on their command line (ranks started over ssh)."""
    script, hosts_file = discovery_script(workdir, hosts)
    out = workdir / "run"
    cmd = elastic_command(flags, data_dir, out, script, **launcher)
    env = dict(launch_env(), HVDLM_PROBE_STEP_SLEEP=STEP_SLEEP)
    job = Job([*prefix, *cmd], workdir, env=env, marker=str(out) if marker else None).start()
    return job, out, hosts_file


def train_rows(out: Path) -> list[dict]:
    """Rank 0's train records so far (none before the file exists)."""
    path = out / "metrics.jsonl"
    return read_jsonl(path, "train") if path.exists() else []
