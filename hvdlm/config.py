"""Configuration: one dataclass per concern, read from a TOML file, then ``--key value`` flags.

Every field below is a command-line option of ``hvdlm train`` (``--n_layer 6``); its ``help``
is what ``hvdlm train --help`` prints. A TOML file may put keys at the top level or under a
table named after the concern (``[model]``, ``[data]``, ``[optim]``, ``[distributed]``,
``[train]``). Precedence: defaults < TOML file < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from hvdlm.errors import HvdlmError
from hvdlm.model import PRESETS


def opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ModelConfig:
    preset: str = opt("tiny", "model size; the fields below override it", list(PRESETS))
    n_layer: int | None = opt(None, "transformer blocks (default: from preset)")
    n_head: int | None = opt(None, "attention heads (default: from preset)")
    n_embd: int | None = opt(None, "embedding width (default: from preset)")
    block_size: int | None = opt(None, "context length in tokens (default: from preset)")
    dropout: float = opt(0.0, "dropout probability")
    bias: bool = opt(False, "biases in Linear and LayerNorm layers")
    vocab_multiple: int = opt(64, "pad the embedding's rows to a multiple of this, for faster matmuls (1: no "
                                  "padding); the padding rows are no tokens. A resumed run keeps the padding it "
                                  "started with")


@dataclass
class DataConfig:
    data_dir: str = opt("data/default", "folder written by `hvdlm prepare`")
    batch_size: int = opt(16, "sequences per rank per micro-step (at most, with global_batch_size)")
    global_batch_size: int = opt(0, "sequences per optimizer step over all ranks; 0 = ranks x batch_size x "
                                    "grad_accum. A resumed run keeps its own, on any number of ranks")


@dataclass
class OptimConfig:
    optimizer: str = opt("adamw", "optimizer", ["adamw", "sgd"])
    lr: float = opt(1e-3, "peak learning rate for one rank's batch_size x grad_accum (scaled by lr_scaling "
                                "under every-step sync; local_sgd/diloco's inner lr, used as given)")
    min_lr: float = opt(1e-4, "learning rate at the end of the cosine decay (scaled too)")
    lr_scaling: str = opt("linear", "scale lr with the global batch (by the number of ranks, or global_batch_size "
                                    "/ (batch_size x grad_accum)) under every-step sync: linearly, by the square root, or not; "
                                    "local_sgd and diloco never scale it",
                          ["linear", "sqrt", "none"])
    warmup_steps: int = opt(50, "linear warmup steps")
    weight_decay: float = opt(0.1, "decoupled weight decay (matrices only, not norms or biases)")
    beta1: float = opt(0.9, "AdamW beta1 (SGD momentum when optimizer=sgd)")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this after allreduce; 0 = off")


@dataclass
class DistributedConfig:
    compression: str = opt("none", "what ranks send: fp32 (none); fp16 or bf16 (half the bytes; bf16 keeps fp32's "
                                   "range); powersgd (a low-rank approximation of each large matrix gradient, with "
                                   "error feedback). Under --sync diloco: the outer allreduce's wire type (none, fp16, "
                                   "bf16, or int8: a quarter of fp32's bytes, diloco only)",
                           ["none", "fp16", "bf16", "powersgd", "int8"])
    powersgd_rank: int = opt(4, "powersgd: the rank of each matrix's approximation")
    powersgd_start: int = opt(0, "powersgd: plain allreduce for the first this many steps (at least warmup_steps; "
                                 "0 = warmup_steps)")
    powersgd_min_compression: float = opt(2.0, "powersgd: compress a matrix only when its rank-r factors are this "
                                               "many times smaller than it; 0 = every matrix")
    sync: str = opt("every_step", "when ranks synchronize: average the gradients every step; local_sgd (each rank "
                                  "steps alone, the parameters are averaged every sync_every steps); diloco (sync_every "
                                  "inner steps, then an outer Nesterov step on the averaged parameter change)",
                    ["every_step", "local_sgd", "diloco"])
    sync_every: int = opt(50, "local_sgd and diloco: optimizer steps between synchronizations (H)")
    outer_lr: float = opt(0.7, "diloco: the outer SGD's learning rate")
    outer_momentum: float = opt(0.9, "diloco: the outer SGD's Nesterov momentum")
    overlap_steps: int = opt(0, "local_sgd and diloco: the exchange runs behind this many inner steps (at most "
                                "sync_every) and is then applied, with the steps taken meanwhile kept on top "
                                "(Streaming DiLoCo's overlap); 0 = every rank waits for it at the sync")
    reduce_op: str = opt("average", "how ranks' gradients combine: average, or Adasum (needs grad_clip 0)",
                         ["average", "adasum"])
    grad_accum: int = opt(1, "micro-steps per optimizer step (Horovod backward_passes_per_step)")
    threads: int = opt(0, "torch threads per rank on CPU; 0 = the usable cores / ranks on this host")
    watchdog: bool = opt(True, "end the job, with one line naming the cause, when a rank makes no progress or a "
                               "peer is stopped, dead or cut off (docs/faults.md)")
    step_timeout: float | None = opt(None, "seconds without progress before the watchdog ends the job (default: "
                                           "max(60, 10 x the median step time); 300 while starting and checkpointing)")
    peer_timeout: float = opt(20.0, "seconds a peer may send no heartbeat (stopped, hung, cut off) before the "
                                    "watchdog ends the job")
    elastic: bool = opt(False, "train under Horovod elastic: ranks may leave and join (launch with `hvdlm elastic`)")
    min_ranks: int = opt(1, "elastic: the fewest ranks the job trains on")
    max_ranks: int = opt(0, "elastic: the most ranks the job trains on; 0 = the ranks it starts with")
    discovery_script: str = opt("", "elastic: executable that prints the available hosts, one `host:slots` a line")
    commit_interval: int = opt(10, "elastic: commit the state in memory every this many steps; a lost rank costs "
                                   "at most this many steps")


@dataclass
class TrainConfig:
    out_dir: str = opt("out/default", "where checkpoints, metrics.jsonl and the log go")
    max_steps: int = opt(500, "optimizer steps of the whole run (sets the lr schedule)")
    stop_after: int = opt(0, "stop this invocation after this many steps, checkpointed; 0 = run to max_steps")
    eval_interval: int = opt(100, "evaluate every this many steps (and at the end); 0 = only at the end")
    eval_sequences: int = opt(64, "validation sequences per evaluation, split across ranks")
    log_interval: int = opt(10, "write a metrics line every this many steps")
    checkpoint_interval: int = opt(0, "checkpoint every this many steps (and at the end); 0 = only at the end")
    resume: bool = opt(True, "continue from the newest valid checkpoint in out_dir when there is one")
    init_from: str = opt("", "start from a model: a Hugging Face GPT-2 folder (config.json + model.safetensors or "
                             "pytorch_model.bin) or an hvdlm out_dir; its shape and weights, a fresh optimizer, "
                             "step 0. Only a run's first start: a resumed run continues from its own checkpoint")
    keep_checkpoints: int = opt(3, "checkpoints kept in out_dir (the newest is also checkpoint.pt); a resume skips "
                                   "damaged ones and takes the newest that verifies")
    background_save: bool = opt(True, "write checkpoints on a thread while training goes on (host memory for one "
                                      "copy of the state); false: each save stops training until it is on disk. "
                                      "Elastic runs always wait")
    verify_data: bool = opt(True, "check the shards against their sha256 in meta.json before training (reads them once)")
    precision: str = opt("auto", "fp32, or bf16 autocast; auto = bf16 on GPUs with bf16, and on CPUs whose "
                                 "measured bf16 matmuls are 1.5x their fp32 for models 384 wide and up",
                         ["auto", "fp32", "bf16"])
    compile: str = opt("auto", "torch.compile the model; auto = on GPUs (on a 2-core CPU it was slower)",
                       ["auto", "true", "false"])
    seed: int = opt(1337, "seed for initialisation and data order (same on every rank)")
    sample_tokens: int = opt(200, "tokens of text to sample at the end; 0 = none")
    progress: bool = opt(True, "progress on rank 0: a bar on a terminal, else a line per log_interval")
    tensorboard: bool = opt(True, "write TensorBoard scalars to out_dir/tensorboard (tensorboard --logdir out_dir)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in fields(Config)]


def _field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat option name -> (section, field); names are unique across sections."""
    index = {}
    for sec in fields(Config):
        for f in fields(sec.default_factory()):
            assert f.name not in index, f"duplicate option {f.name}"
            index[f.name] = (sec.name, f)
    return index


FIELDS = _field_index()


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base_type(f: dataclasses.Field):
    # annotations are strings here (``from __future__ import annotations``): "int | None" -> int
    return {"int": int, "float": float, "str": str, "bool": _parse_bool}[f.type.split(" ")[0]]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` option per config field, grouped by concern, defaulting to 'not given'."""
    parser.add_argument("--config", metavar="TOML", help="TOML file with any of the options below")
    defaults = Config()
    for sec in SECTIONS:
        group = parser.add_argument_group(f"{sec} options")
        for f in fields(getattr(defaults, sec)):
            default = getattr(getattr(defaults, sec), f.name)
            choices = f.metadata["choices"]
            group.add_argument(
                f"--{f.name}", type=_base_type(f), default=argparse.SUPPRESS, choices=choices,
                metavar=None if choices else f.type.split(" ")[0].upper(),
                help=f.metadata["help"] + ("" if default is None else f" (default: {default})"),
            )


def _coerce(name: str, value, f: dataclasses.Field):
    base = _base_type(f)
    if value is None and "None" in str(f.type):
        return None
    if base is _parse_bool:
        if isinstance(value, bool):
            return value
        try:
            return _parse_bool(value)
        except argparse.ArgumentTypeError as e:
            raise HvdlmError(f"option {name}: {e}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or isinstance(value, bool):
        raise HvdlmError(f"option {name}: expected {base.__name__}, got {value!r}")
    return value


def load_config(toml_path: str | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then the TOML file, then ``overrides`` (flat name -> value); validated."""
    cfg = Config()
    settings: dict = {}
    if toml_path:
        try:
            with open(toml_path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise HvdlmError(f"config file not found: {toml_path}") from None
        except tomllib.TOMLDecodeError as e:
            raise HvdlmError(f"config file {toml_path} is not valid TOML: {e}") from None
        for key, value in doc.items():
            if key in SECTIONS and isinstance(value, dict):
                settings.update(value)
            else:
                settings[key] = value
    settings.update(overrides or {})
    for name, value in settings.items():
        if name not in FIELDS:
            raise HvdlmError(f"unknown option {name!r} (see `hvdlm train --help`)")
        sec, f = FIELDS[name]
        setattr(getattr(cfg, sec), name, _coerce(name, value, f))
    validate(cfg)
    return cfg


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    return load_config(getattr(args, "config", None), overrides)


def validate(cfg: Config) -> None:
    """Reject values that would fail later, or silently do the wrong thing, with one clear line."""
    def need(ok: bool, msg: str):
        if not ok:
            raise HvdlmError(msg)

    for name, (sec, f) in FIELDS.items():
        choices = f.metadata["choices"]
        value = getattr(getattr(cfg, sec), name)
        need(choices is None or value in choices, f"{name} must be one of {', '.join(choices or [])}, got {value!r}")
    m, d, o, dist, t = cfg.model, cfg.data, cfg.optim, cfg.distributed, cfg.train
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        v = getattr(m, name)
        need(v is None or v > 0, f"{name} must be positive, got {v}")
    need(0.0 <= m.dropout < 1.0, f"dropout must be in [0, 1), got {m.dropout}")
    need(m.vocab_multiple >= 1, f"vocab_multiple must be >= 1, got {m.vocab_multiple}")
    need(d.batch_size > 0, f"batch_size must be positive, got {d.batch_size}")
    need(d.global_batch_size >= 0, f"global_batch_size must be >= 0, got {d.global_batch_size}")
    need(o.lr > 0, f"lr must be positive, got {o.lr}")
    need(0 <= o.min_lr <= o.lr, f"min_lr must be between 0 and lr ({o.lr}), got {o.min_lr}")
    need(o.warmup_steps >= 0, f"warmup_steps must be >= 0, got {o.warmup_steps}")
    need(o.weight_decay >= 0, f"weight_decay must be >= 0, got {o.weight_decay}")
    need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
    need(o.grad_clip >= 0, f"grad_clip must be >= 0, got {o.grad_clip}")
    need(dist.reduce_op != "adasum" or o.grad_clip == 0,
         "reduce_op adasum combines each rank's optimizer update, not gradients: set grad_clip 0")
    validate_sync(dist, o, need)
    need(dist.grad_accum >= 1, f"grad_accum must be >= 1, got {dist.grad_accum}")
    need(dist.threads >= 0, f"threads must be >= 0, got {dist.threads}")
    need(dist.step_timeout is None or dist.step_timeout > 0,
         f"step_timeout must be positive, got {dist.step_timeout} (leave it out for the automatic limit, "
         "or set --watchdog false to turn the watchdog off)")
    need(dist.peer_timeout > 0, f"peer_timeout must be positive, got {dist.peer_timeout} "
                                "(or set --watchdog false to turn the watchdog off)")
    need(dist.min_ranks >= 1, f"min_ranks must be >= 1, got {dist.min_ranks}")
    need(dist.max_ranks >= 0, f"max_ranks must be >= 0, got {dist.max_ranks}")
    need(not dist.max_ranks or dist.min_ranks <= dist.max_ranks,
         f"the elastic range is empty: min_ranks {dist.min_ranks} is above max_ranks {dist.max_ranks}")
    need(dist.commit_interval >= 1, f"commit_interval must be >= 1, got {dist.commit_interval}")
    need(t.max_steps > 0, f"max_steps must be positive, got {t.max_steps}")
    for name in ("stop_after", "eval_interval", "checkpoint_interval", "sample_tokens"):
        need(getattr(t, name) >= 0, f"{name} must be >= 0, got {getattr(t, name)}")
    need(t.eval_sequences > 0, f"eval_sequences must be positive, got {t.eval_sequences}")
    need(t.log_interval > 0, f"log_interval must be positive, got {t.log_interval}")
    need(t.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    need(bool(d.data_dir), "data_dir must not be empty")
    need(bool(t.out_dir), "out_dir must not be empty")
    need(not (t.init_from and dist.elastic), "init_from starts a plain run; resume its checkpoint with --elastic true")


def validate_sync(dist: DistributedConfig, o: OptimConfig, need) -> None:
    """The combinations of --compression and --sync that make sense (docs/communication.md)."""
    need(dist.sync_every >= 1, f"sync_every must be >= 1, got {dist.sync_every}")
    need(dist.powersgd_rank >= 1, f"powersgd_rank must be >= 1, got {dist.powersgd_rank}")
    need(dist.powersgd_start >= 0, f"powersgd_start must be >= 0, got {dist.powersgd_start}")
    need(dist.powersgd_min_compression >= 0,
         f"powersgd_min_compression must be >= 0, got {dist.powersgd_min_compression}")
    need(0 <= dist.overlap_steps <= dist.sync_every,
         f"overlap_steps must be in [0, sync_every={dist.sync_every}], got {dist.overlap_steps}")
    need(not dist.overlap_steps or dist.sync != "every_step",
         "overlap_steps delays the exchange of --sync local_sgd or diloco; --sync every_step exchanges gradients "
         "that the step needs now")
    need(dist.outer_lr > 0, f"outer_lr must be positive, got {dist.outer_lr}")
    need(0 <= dist.outer_momentum < 1, f"outer_momentum must be in [0, 1), got {dist.outer_momentum}")
    need(dist.compression != "powersgd" or not dist.powersgd_start or dist.powersgd_start >= o.warmup_steps,
         f"powersgd_start ({dist.powersgd_start}) must be at least warmup_steps ({o.warmup_steps}): PowerSGD "
         "from the first steps of the warmup loses the run (or 0 to start when the warmup ends)")
    need(dist.reduce_op != "adasum" or (dist.compression in ("none", "fp16") and dist.sync == "every_step"),
         f"reduce_op adasum combines full updates every step: it cannot run with --compression {dist.compression} "
         f"or --sync {dist.sync}")
    need(dist.compression != "powersgd" or dist.sync == "every_step",
         f"compression powersgd compresses gradients every step; --sync {dist.sync} exchanges parameters "
         "(use --compression none, or bf16/fp16 with diloco)")
    need(dist.compression != "int8" or dist.sync == "diloco",
         f"compression int8 rounds diloco's outer exchange only (the parameters' change over H steps), not what "
         f"--sync {dist.sync} exchanges: use --sync diloco, or fp16/bf16 for every step's gradients")
    need(dist.sync != "local_sgd" or dist.compression == "none",
         f"sync local_sgd averages the parameters themselves, in fp32: --compression {dist.compression} would round "
         "them (use --sync diloco, whose outer allreduce of parameter changes takes fp16 or bf16)")
    new = dist.compression in ("bf16", "powersgd") or dist.sync != "every_step"
    need(not (dist.elastic and new),
         f"--compression {dist.compression} --sync {dist.sync} keeps per-rank state that Horovod elastic cannot "
         "restore after a lost rank; use --elastic false (or --compression none|fp16 --sync every_step)")


def model_shape(cfg: ModelConfig, vocab_size: int) -> dict:
    """The GPTConfig keyword arguments: the preset, overridden by explicit fields."""
    shape = dict(PRESETS[cfg.preset])
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(cfg, name) is not None:
            shape[name] = getattr(cfg, name)
    if shape["n_embd"] % shape["n_head"]:
        raise HvdlmError(f"n_embd ({shape['n_embd']}) must be divisible by n_head ({shape['n_head']})")
    return dict(shape, vocab_size=vocab_size, dropout=cfg.dropout, bias=cfg.bias, vocab_multiple=cfg.vocab_multiple)


def saved_vocab_multiple(out_dir: str | Path) -> int | None:
    """The vocabulary padding of the run in ``out_dir`` as its config.toml records it: 1 where the
    file is older than the option (those runs were not padded); None without a readable file.
    Read on every rank (out_dir is shared), so every rank builds the model the checkpoint holds."""
    try:
        with open(Path(out_dir) / "config.toml", "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = doc.get("model", {}).get("vocab_multiple", doc.get("vocab_multiple", 1))
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def save_toml(cfg: Config, path: Path) -> None:
    """Write the effective config so a run can be repeated (`--config out/run/config.toml`)."""
    lines = []
    for sec in SECTIONS:
        lines.append(f"[{sec}]")
        for k, v in dataclasses.asdict(getattr(cfg, sec)).items():
            if v is None:
                continue
            lines.append(f"{k} = {json.dumps(v)}")  # JSON scalars are valid TOML values
        lines.append("")
    path.write_text("\n".join(lines))
