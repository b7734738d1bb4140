"""``hvdlm train --init_from DIR``: start from a model, a Hugging Face GPT-2 folder or an hvdlm out_dir.

Rank 0 reads the folder and checks everything before training (``inspect``, under
``distributed.on_root``: one error line on every rank, nothing written): the model's shape
against the flags given, its weights against its config, the data's tokenizer against the
model's; it keeps the weights it read. After the model is built, rank 0 copies them in
(``start_from``: the file is read once) and the usual broadcast of step 4 gives them to every rank. The optimizer is fresh and the run starts at step 0;
a resumed run continues from its own checkpoint instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hvdlm import checkpoint, hf
from hvdlm.config import Config
from hvdlm.console import say
from hvdlm.data.tokenizers import digest, folder_tokenizer
from hvdlm.errors import HvdlmError
from hvdlm.model import fit_vocab

WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Start:
    """What rank 0 found in ``--init_from`` (small: it is broadcast to every rank)."""
    folder: str
    kind: str  # "hf": a GPT-2 folder; "hvdlm": an out_dir's checkpoint
    shape: dict  # GPTConfig's fields for this run
    positions: int  # the folder's positions (the run may use fewer: a shorter block_size)
    note: str  # the line rank 0 prints when the weights are in
    weights: dict | None = None  # rank 0's, in hvdlm's names, read once by inspect; never sent to other ranks

    def __getstate__(self) -> dict:  # what the broadcast to the other ranks carries: no weights
        return {**self.__dict__, "weights": None}


def inspect(cfg: Config, meta: dict) -> Start | None:
    """Read and check ``cfg.train.init_from`` against the flags and the data (``meta``); None without it."""
    folder = cfg.train.init_from
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise HvdlmError(f"--init_from {folder}: no such folder")
    if (path / "config.json").is_file():
        shape, positions, weights = _hf_folder(path)
        _check_hf_tokenizer(path, meta, cfg.data.data_dir)
        kind = "hf"
    elif checkpoint.path_in(folder).is_file():
        state = _checkpoint(folder)
        shape = {k: v for k, v in state["model_shape"].items() if k != "dropout"}
        positions, weights = shape["block_size"], state["model"]
        if state.get("tokenizer") != meta["tokenizer"]:
            raise HvdlmError(f"--init_from {folder} was trained on {_tokens(state.get('tokenizer', {}))} but "
                             f"{cfg.data.data_dir} holds {_tokens(meta['tokenizer'])}; prepare the data with the "
                             "tokenizer the model was trained with")
        kind = "hvdlm"
    else:
        raise HvdlmError(f"--init_from {folder} is neither a Hugging Face GPT-2 folder (config.json) nor an hvdlm "
                         "out_dir (checkpoint.pt)")
    shape = _with_flags(shape, positions, cfg, folder)
    if meta["vocab_size"] > shape["vocab_size"]:
        raise HvdlmError(f"{cfg.data.data_dir} has {meta['vocab_size']} token ids but the model in {folder} has "
                         f"{shape['vocab_size']}; prepare the data with its tokenizer (hvdlm prepare --tokenizer "
                         f"{folder})")
    if kind == "hf":
        weights = hf.from_hf(weights, shape, positions, folder)  # every weight there and of its shape, before training
    else:
        weights = dict(weights, **{"pos_emb.weight": weights["pos_emb.weight"][:shape["block_size"]]})
    weights = fit_vocab(weights, shape)  # the real vocabulary's rows, padded as this run pads (zero rows)
    crop = f", context {shape['block_size']} of its {positions} positions" if shape["block_size"] < positions else ""
    note = (f"hvdlm: started from {folder} ({'GPT-2 folder' if kind == 'hf' else 'hvdlm checkpoint'}: "
            f"{shape['n_layer']} layers x {shape['n_embd']}, vocab {shape['vocab_size']}, "
            f"{shape.get('activation', 'gelu')}{', biases' if shape['bias'] else ''}{crop}); fresh optimizer, step 0")
    return Start(folder, kind, shape, positions, note, weights)


def start_from(start: Start | None, model: torch.nn.Module, resume: dict | None, is_root: bool) -> None:
    """Rank 0 copies the weights into ``model`` (the broadcast that follows gives them to every rank);
    a resumed run keeps its own."""
    if start is None or not is_root:
        return
    if resume is not None:
        say(f"hvdlm: resuming from {resume['resumed_from']['path']}; --init_from {start.folder} applies only to "
            "the run's first start")
        return
    with torch.no_grad():
        model.load_state_dict(start.weights)  # copies onto each parameter's own device
    start.weights = None  # read once (by inspect), copied once: not held beside the model
    say(start.note)


def _checkpoint(folder: str) -> dict:
    return checkpoint.upgrade(checkpoint.load(checkpoint.path_in(folder)))  # older formats read as today's


def _hf_folder(path: Path) -> tuple[dict, int, dict]:
    shape = hf.shape_from_folder(path, str(path))
    weights = _hf_weights(path)
    # hvdlm's export of a bias-free model writes zero biases: read it back as the model it was
    shape["bias"] = not hf.biases_all_zero(weights)
    return shape, shape["block_size"], weights


def _hf_weights(path: Path) -> dict:
    found = next((path / name for name in WEIGHTS if (path / name).is_file()), None)
    if found is None:
        raise HvdlmError(f"{path} has no weights: neither {' nor '.join(WEIGHTS)} (sharded checkpoints are not read)")
    try:
        if found.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(found))
        return torch.load(found, map_location="cpu", weights_only=True, mmap=True)
    except ImportError:
        raise HvdlmError("reading model.safetensors needs safetensors: pip install -e .[hf]") from None
    except Exception as e:  # a damaged or foreign file: safetensors and torch raise their own types
        raise HvdlmError(f"{found} cannot be read ({type(e).__name__}: {e})") from None


def _with_flags(shape: dict, positions: int, cfg: Config, folder: str) -> dict:
    """The folder's shape; a model flag given that contradicts it is an error naming both values."""
    m = cfg.model
    for name in ("n_layer", "n_head", "n_embd"):
        given = getattr(m, name)
        if given is not None and given != shape[name]:
            raise HvdlmError(f"--{name} {given} contradicts {folder}, whose model has {name} {shape[name]}; "
                             f"leave --{name} out to take the model's")
    if m.block_size is not None and m.block_size > positions:
        raise HvdlmError(f"--block_size {m.block_size} is longer than the {positions} positions of the model in "
                         f"{folder}; use at most {positions}")
    return dict(shape, block_size=m.block_size or positions, dropout=m.dropout, vocab_multiple=m.vocab_multiple)


def _check_hf_tokenizer(path: Path, meta: dict, data_dir: str) -> None:
    """The data's ids must be the model's: the same tokenizer, where the folder has one."""
    model_tk = folder_tokenizer(path)
    data = meta["tokenizer"]
    if model_tk is None:
        return  # weights alone: the vocabulary size is all there is to check
    if data.get("kind") == "tiktoken":  # GPT-2's encoding without its file: same size and end-of-text id
        same = (model_tk.get_vocab_size() == data["vocab_size"]
                and model_tk.token_to_id("<|endoftext|>") == data.get("end_of_text"))
    elif data.get("kind") == "bpe":
        same = data.get("sha256") == digest(model_tk)
    else:  # byte or char data: the same tokenizer as hvdlm's export writes it
        data_tk = hf.hf_tokenizer(data, Path(data_dir))
        same = data_tk is not None and digest(data_tk) == digest(model_tk)
    if not same:
        raise HvdlmError(f"{data_dir} was prepared with {_tokens(data)}, not the tokenizer of {path} "
                         f"({model_tk.get_vocab_size()} tokens); prepare it with `hvdlm prepare --tokenizer {path}`")


def _tokens(tok: dict) -> str:
    return f"{tok.get('kind')} tokens (vocab {tok.get('vocab_size')})"
