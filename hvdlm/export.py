"""``hvdlm export --format hf DEST``: a checkpoint as a Hugging Face ``transformers`` GPT-2.

hvdlm's GPT is GPT-2's architecture (pre-norm blocks, learned positions, tied head), so
``GPT2LMHeadModel`` computes the same logits once the weights are renamed and laid out its way:

* GPT-2 keeps its projections in ``Conv1D`` layers whose weight is the transpose of ``nn.Linear``'s;
* hvdlm without ``--bias`` has no biases: GPT-2 gets zeros there, which adds nothing;
* hvdlm's MLP uses the exact (erf) GELU: the config says ``activation_function: "gelu"``, not
  GPT-2's default tanh approximation;
* the output head is the token embedding (``tie_word_embeddings``), written once.

The tokenizer goes along as ``tokenizer.json`` (``AutoTokenizer.from_pretrained(DEST)`` loads
it) where the ``tokenizers`` library expresses it exactly: bpe as trained; byte as a byte-level
BPE with the 256 bytes and no merges (ids = byte values); char as a BPE over the corpus's
characters with no merges (a character outside them is dropped, where hvdlm refuses it).

Writing needs ``safetensors`` (``pip install -e .[hf]``); loading needs ``transformers`` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hvdlm import checkpoint
from hvdlm.data import load_meta
from hvdlm.errors import HvdlmError


def hf_config(shape: dict) -> dict:
    c = shape["n_embd"]
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": shape["vocab_size"], "n_positions": shape["block_size"], "n_ctx": shape["block_size"],
        "n_embd": c, "n_layer": shape["n_layer"], "n_head": shape["n_head"], "n_inner": 4 * c,
        "activation_function": "gelu",  # exact GELU, as hvdlm's F.gelu
        "layer_norm_epsilon": 1e-5,  # torch.nn.LayerNorm's
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "tie_word_embeddings": True,
        # hvdlm's vocabularies have no special tokens; GPT-2's default 50256 is outside them
        "bos_token_id": None, "eos_token_id": None,
        "torch_dtype": "float32",
    }


def hf_state_dict(model_state: dict, shape: dict) -> dict[str, torch.Tensor]:
    """hvdlm's GPT weights under GPT2LMHeadModel's names and layouts (the head is tied, not stored)."""
    c = shape["n_embd"]
    out: dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        return model_state[name].detach().to(torch.float32).contiguous()

    def bias_or_zeros(name: str, size: int) -> torch.Tensor:
        return get(name) if name in model_state else torch.zeros(size)

    def linear(src: str, dst: str, out_features: int) -> None:
        out[f"{dst}.weight"] = get(f"{src}.weight").t().contiguous()  # Conv1D: (in, out)
        out[f"{dst}.bias"] = bias_or_zeros(f"{src}.bias", out_features)

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = get(f"{src}.weight")
        out[f"{dst}.bias"] = bias_or_zeros(f"{src}.bias", c)

    out["transformer.wte.weight"] = get("tok_emb.weight")
    out["transformer.wpe.weight"] = get("pos_emb.weight")
    for i in range(shape["n_layer"]):
        s, d = f"blocks.{i}", f"transformer.h.{i}"
        norm(f"{s}.ln1", f"{d}.ln_1")
        linear(f"{s}.attn.qkv", f"{d}.attn.c_attn", 3 * c)
        linear(f"{s}.attn.proj", f"{d}.attn.c_proj", c)
        norm(f"{s}.ln2", f"{d}.ln_2")
        linear(f"{s}.mlp.fc", f"{d}.mlp.c_fc", 4 * c)
        linear(f"{s}.mlp.proj", f"{d}.mlp.c_proj", c)
    norm("ln_f", "transformer.ln_f")
    return out


def hf_tokenizer(meta: dict, data_dir: Path):
    """A ``tokenizers.Tokenizer`` giving the same ids as hvdlm's, or None (then none is written)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    kind = meta["kind"]
    if kind == "bpe":
        return Tokenizer.from_file(str(data_dir / meta["file"]))
    if kind == "byte":
        # ByteLevel maps each byte to one printable character; a vocabulary of exactly those 256
        # characters, in byte order and with no merges, makes every id the byte's value.
        alphabet = _byte_level_chars()
        tk = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tk.decoder = decoders.ByteLevel()
        return tk
    if kind == "char":
        tk = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(meta["chars"])}, merges=[]))
        tk.decoder = decoders.Fuse()  # characters join without spaces
        return tk
    return None


def _byte_level_chars() -> list[str]:
    """GPT-2's byte-to-character table (the ByteLevel pre-tokenizer's): byte b -> chars[b]."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def export_hf(out_dir: str, dest: str, data_dir: str | None = None) -> list[str]:
    """Write ``dest``/config.json, model.safetensors and, where it can, the tokenizer; returns the
    names written."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise HvdlmError("hvdlm export needs safetensors (and transformers to load the result): "
                         "pip install -e .[hf]") from None
    state = checkpoint.load(checkpoint.path_in(out_dir))
    shape = state["model_shape"]
    data_dir = Path(data_dir or state["config"]["data"]["data_dir"])
    dest_path = Path(dest)
    if dest_path.exists() and not dest_path.is_dir():
        raise HvdlmError(f"{dest} exists and is not a folder")
    try:
        dest_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HvdlmError(f"cannot create {dest}: {e.strerror or e}") from None
    written = ["config.json", "model.safetensors"]
    (dest_path / "config.json").write_text(json.dumps(hf_config(shape), indent=2) + "\n")
    save_file(hf_state_dict(state["model"], shape), str(dest_path / "model.safetensors"), metadata={"format": "pt"})

    tokenizer = None
    try:
        if load_meta(data_dir)["tokenizer"] == state["tokenizer"]:
            tokenizer = hf_tokenizer(state["tokenizer"], data_dir)
    except HvdlmError:
        pass  # the data folder is gone: the weights alone are still useful
    if tokenizer is None and state["tokenizer"]["kind"] == "byte":
        tokenizer = hf_tokenizer(state["tokenizer"], data_dir)  # needs nothing from the data folder
    if tokenizer is not None:
        tokenizer.save(str(dest_path / "tokenizer.json"))
        (dest_path / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": shape["block_size"],
            "clean_up_tokenization_spaces": False,  # keep " ." as it was: the text is code and prose
        }, indent=2) + "\n")
        written += ["tokenizer.json", "tokenizer_config.json"]
    else:
        print(f"hvdlm: no tokenizer written: {data_dir} is not the {state['tokenizer']['kind']} data the run "
              "trained on (pass --data_dir)")
    return written
