"""What to measure: the ``hvdlm bench allreduce`` flags as checked Settings (errors raised on every rank)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hvdlm.bench.allreduce.bandwidth import DTYPES, element_count, sweep_sizes
from hvdlm.units import parse_bytes
from hvdlm.errors import HvdlmError

BACKENDS = ("horovod", "torch-gloo", "torch-nccl", "mpi4py", "memcpy")
PLACEMENTS = {"in": "in-place", "out": "out-of-place"}


@dataclass
class Settings:
    backends: list[str] | None = None  # None: every backend this launch and device offer
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    placements: list[str] = field(default_factory=lambda: ["in"])
    min_bytes: int = 4
    max_bytes: int = 64 * 1024 ** 2
    factor: int = 2
    warmup: int = 5
    iters: int = 20
    device: str = "auto"
    threads: int = 0
    horovod_env: dict[str, str] = field(default_factory=dict)
    out_dir: Path = Path("out/bench/allreduce")
    plot: bool = True
    corrupt: bool = False  # tests only: perturb one element of each result before it is checked

    @property
    def sizes(self) -> list[int]:
        return sweep_sizes(self.min_bytes, self.max_bytes, self.factor)

    def validate(self) -> "Settings":
        sizes = self.sizes
        for d in self.dtypes:
            for s in sizes:
                element_count(s, d)
        if self.warmup < 0:
            raise HvdlmError(f"--warmup {self.warmup} is out of range: 0 or more", everywhere=True)
        if self.iters < 1:
            raise HvdlmError(f"--iters {self.iters} is out of range: at least 1", everywhere=True)
        if self.threads < 0:
            raise HvdlmError(f"--threads {self.threads} is out of range: 0 (automatic) or more", everywhere=True)
        if self.device not in ("auto", "cpu", "cuda"):
            raise HvdlmError(f"--device {self.device!r}: choose auto, cpu or cuda", everywhere=True)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise HvdlmError("--device cuda: no CUDA GPU is visible to torch here", everywhere=True)
        for key in self.horovod_env:
            if not key.startswith("HOROVOD_"):
                raise HvdlmError(f"--horovod_env {key}: only HOROVOD_* settings go here", everywhere=True)
        return self


def _choices(text: str, allowed: dict[str, list[str]], what: str) -> list[str] | None:
    """Split a comma list and map aliases; None for 'all'."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise HvdlmError(f"--{what} is empty: choose from {', '.join(allowed)}", everywhere=True)
    if "all" in names:
        if len(names) > 1:
            raise HvdlmError(f"--{what} {text}: 'all' cannot be combined with other names; give all, or list "
                             "the ones you want", everywhere=True)
        return None
    out: list[str] = []
    for name in names:
        if name not in allowed:
            raise HvdlmError(f"--{what}: unknown {what[:-1] if what.endswith('s') else what} {name!r}; "
                             f"choose from {', '.join(k for k in allowed)} or all", everywhere=True)
        out += [n for n in allowed[name] if n not in out]
    return out


def settings_from_args(args) -> Settings:
    """The CLI's flags, checked the same way on every rank (errors are raised everywhere)."""
    backend_names = {b: [b] for b in BACKENDS + ("mpi4py-hvd", "torch")}
    placement_names = {"in": ["in"], "out": ["out"], "both": ["in", "out"],
                       "in-place": ["in"], "out-of-place": ["out"]}

    def integer(value, flag):
        try:
            return int(str(value))
        except ValueError:
            raise HvdlmError(f"{flag} {value!r} is not a whole number", everywhere=True) from None

    env = {}
    if args.cycle_time_ms is not None:
        try:
            ms = float(args.cycle_time_ms)
        except ValueError:
            raise HvdlmError(f"--cycle_time_ms {args.cycle_time_ms!r} is not a number", everywhere=True) from None
        if not ms > 0:
            raise HvdlmError(f"--cycle_time_ms {ms} is out of range: more than 0", everywhere=True)
        env["HOROVOD_CYCLE_TIME"] = f"{ms:g}"
    if args.fusion_threshold is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(parse_bytes(args.fusion_threshold, "--fusion_threshold"))
    for item in args.horovod_env or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HvdlmError(f"--horovod_env {item!r}: expected HOROVOD_NAME=VALUE", everywhere=True)
        env[key.strip()] = value.strip()

    dtypes = _choices(args.dtypes, {d: [d] for d in DTYPES}, "dtypes") or list(DTYPES)
    placements = _choices(args.placement, placement_names, "placement") or ["in", "out"]
    return Settings(
        backends=_choices(args.backends, backend_names, "backends"),
        dtypes=dtypes,
        placements=placements,
        min_bytes=parse_bytes(args.min_bytes, "--min_bytes"),
        max_bytes=parse_bytes(args.max_bytes, "--max_bytes"),
        factor=integer(args.factor, "--factor"),
        warmup=integer(args.warmup, "--warmup"),
        iters=integer(args.iters, "--iters"),
        device=str(args.device).lower(),
        threads=integer(args.threads, "--threads"),
        horovod_env=env,
        out_dir=Path(args.out_dir),
        plot=not args.no_plot,
        corrupt=bool(getattr(args, "corrupt_for_test", False)),
    ).validate()
