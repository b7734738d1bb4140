import subprocess
import sys

import pytest

from support.launch import HVDLM
from hvdlm.cli import build_parser
from hvdlm.config import FIELDS, Config, config_from_args, load_config, model_shape, save_toml
from hvdlm.errors import HvdlmError


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_defaults_toml_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[model]\nn_layer = 3\n[optim]\nlr = 0.01\nbatch_size = 4\nmax_steps = 7\n')
    cfg = parse("--config", str(toml), "--lr", "0.02", "--bias", "true")
    assert cfg.model.n_layer == 3  # from the file
    assert cfg.optim.lr == 0.02  # the flag beats the file
    assert cfg.data.batch_size == 4 and cfg.train.max_steps == 7  # flat keys land in their section
    assert cfg.model.bias is True
    assert cfg.train.out_dir == Config().train.out_dir  # untouched default


def test_saved_config_reads_back_identically(tmp_path):
    cfg = parse("--n_embd", "48", "--precision", "bf16", "--out_dir", 'we"ird/dir')
    save_toml(cfg, tmp_path / "c.toml")
    assert load_config(str(tmp_path / "c.toml")) == cfg


@pytest.mark.parametrize("toml, message", [
    ("nonsense = 1\n", "unknown option 'nonsense'"),
    ("lr = -1.0\n", "lr must be positive"),
    ("lr = 'fast'\n", "option lr: expected float"),
    ("preset = 'huge'\n", "preset must be one of"),
    ("grad_accum = 0\n", "grad_accum must be >= 1"),
    ("vocab_multiple = 0\n", "vocab_multiple must be >= 1"),
    ("min_lr = 1.0\n", "min_lr must be between 0 and lr"),
    ("reduce_op = 'adasum'\n", "set grad_clip 0"),
    ("[model]\nn_layer = 2\n[", "not valid TOML"),
])
def test_bad_values_name_the_problem(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(HvdlmError, match=message):
        load_config(str(path))


def test_missing_config_file():
    with pytest.raises(HvdlmError, match="config file not found"):
        load_config("/nonexistent/run.toml")


def test_heads_must_divide_width():
    cfg = parse("--n_embd", "30", "--n_head", "4")
    with pytest.raises(HvdlmError, match="divisible by n_head"):
        model_shape(cfg.model, 256)


def test_help_documents_every_option():
    out = subprocess.run([HVDLM, "train", "--help"], capture_output=True, text=True, check=True).stdout
    for name in FIELDS:
        assert f"--{name}" in out, name


def test_bad_flag_value_exits_2_with_one_line():
    p = subprocess.run([HVDLM, "train", "--lr", "-3"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "hvdlm: error: lr must be positive, got -3.0"
