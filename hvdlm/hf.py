"""The Hugging Face GPT-2 folder layout, both ways: config.json <-> hvdlm's model shape, and
``GPT2LMHeadModel``'s weight names and layouts <-> hvdlm's, from one name table.

hvdlm's GPT is GPT-2's architecture (pre-norm blocks, learned positions, tied head), so the
two compute the same logits once the weights are renamed and laid out the other's way:

* GPT-2 keeps its projections in ``Conv1D`` layers whose weight is the transpose of ``nn.Linear``'s;
* hvdlm without ``--bias`` has no biases: GPT-2 gets zeros there, which adds nothing; a folder
  whose biases are all zero (such an export) reads back as a bias-free model;
* the MLP's GELU is exact (``activation_function: "gelu"``) in models hvdlm trains from scratch,
  GPT-2's tanh approximation (``gelu_new``) in a model started from a GPT-2 folder;
* the output head is the token embedding (``tie_word_embeddings``), written once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hvdlm.errors import HvdlmError

# hvdlm name -> GPT-2 name, and whether the weight is a projection (transposed: Conv1D)
_BLOCK = (("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
          ("ln2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True))
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}


def name_table(n_layer: int) -> list[tuple[str, str, bool, bool]]:
    """(hvdlm module, GPT-2 module, is a Conv1D projection, has a weight-like bias) for every module."""
    rows = [("tok_emb", "transformer.wte", False, False), ("pos_emb", "transformer.wpe", False, False)]
    for i in range(n_layer):
        rows += [(f"blocks.{i}.{a}", f"transformer.h.{i}.{b}", conv, True) for a, b, conv in _BLOCK]
    return rows + [("ln_f", "transformer.ln_f", False, True)]


def hf_config(shape: dict) -> dict:
    c = shape["n_embd"]
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": shape["vocab_size"], "n_positions": shape["block_size"], "n_ctx": shape["block_size"],
        "n_embd": c, "n_layer": shape["n_layer"], "n_head": shape["n_head"], "n_inner": 4 * c,
        "activation_function": shape.get("activation", "gelu"),  # exact GELU unless started from GPT-2's
        "layer_norm_epsilon": shape.get("norm_eps", 1e-5),
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "tie_word_embeddings": True,
        # hvdlm's own vocabularies have no special tokens; GPT-2's default 50256 is outside them
        "bos_token_id": None, "eos_token_id": None,
        "torch_dtype": "float32",
    }


def shape_from_folder(path: Path, where: str) -> dict:
    """hvdlm's model shape from a GPT-2 folder's config.json (``shape_from_config``), or one error line."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HvdlmError(f"{path / 'config.json'} cannot be read as JSON ({e})") from None
    return shape_from_config(config if isinstance(config, dict) else {}, where)


def shape_from_config(config: dict, where: str) -> dict:
    """hvdlm's model shape (GPTConfig's fields, no dropout) from a GPT-2 config.json, or one error line
    naming what hvdlm's GPT cannot express."""
    if config.get("model_type") != "gpt2":
        raise HvdlmError(f"{where} holds a {config.get('model_type')!r} model; --init_from reads GPT-2 "
                         "(model_type gpt2) folders or an hvdlm out_dir")
    try:
        c, act = int(config["n_embd"]), config.get("activation_function", "gelu_new")
        shape = dict(vocab_size=int(config["vocab_size"]), block_size=int(config.get("n_positions", 1024)),
                     n_layer=int(config["n_layer"]), n_head=int(config["n_head"]), n_embd=c, bias=True,
                     activation=_ACTIVATIONS.get(act, act),
                     norm_eps=float(config.get("layer_norm_epsilon", 1e-5)))
    except (KeyError, TypeError, ValueError) as e:
        raise HvdlmError(f"{where} is not a complete GPT-2 config ({e!r} missing or not a number)") from None
    unsupported = [
        (act not in _ACTIVATIONS, f"activation_function {act!r} (hvdlm has gelu and gelu_new)"),
        (config.get("n_inner") not in (None, 4 * c), f"n_inner {config.get('n_inner')} (hvdlm's MLP is 4 x n_embd)"),
        (not config.get("tie_word_embeddings", True), "an output head apart from the token embedding"),
        (not config.get("scale_attn_weights", True), "unscaled attention"),
        (bool(config.get("scale_attn_by_inverse_layer_idx")), "scale_attn_by_inverse_layer_idx"),
        (bool(config.get("add_cross_attention")), "cross-attention"),
        (c % max(shape["n_head"], 1) != 0, f"n_embd {c} not divisible by n_head {shape['n_head']}"),
    ]
    bad = [what for cond, what in unsupported if cond]
    if bad:
        raise HvdlmError(f"{where}: hvdlm's GPT cannot express {', '.join(bad)}")
    return shape


def to_hf(model_state: dict, shape: dict) -> dict[str, torch.Tensor]:
    """hvdlm's GPT weights under GPT2LMHeadModel's names and layouts (the head is tied, not stored);
    the embedding without its padding rows: GPT-2's config.json has the real vocabulary."""
    out: dict[str, torch.Tensor] = {}
    for src, dst, conv, has_bias in name_table(shape["n_layer"]):
        w = model_state[f"{src}.weight"].detach().to(torch.float32)
        if src == "tok_emb":
            w = w[:shape["vocab_size"]]
        out[f"{dst}.weight"] = (w.t() if conv else w).contiguous()
        if has_bias:
            b = model_state.get(f"{src}.bias")
            out[f"{dst}.bias"] = b.detach().to(torch.float32).contiguous() if b is not None else torch.zeros(w.shape[0])
    return out


def from_hf(hf_state: dict, shape: dict, positions: int, where: str) -> dict[str, torch.Tensor]:
    """GPT-2's weights (``positions`` of them) as hvdlm's state dict for ``shape`` (biases only when
    ``shape["bias"]``), or one error line naming the first weight missing or of another shape."""
    state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}  # saved from GPT2Model: no prefix
    out: dict[str, torch.Tensor] = {}

    def take(name: str, want: tuple[int, ...]) -> torch.Tensor:
        t = state.get(name.removeprefix("transformer."))
        if t is None:
            raise HvdlmError(f"{where}: the weights have no {name}: they do not match its config.json")
        if tuple(t.shape) != want:
            raise HvdlmError(f"{where}: {name} is {tuple(t.shape)} but config.json makes it {want}; "
                             "the weights do not match the config")
        return t.to(torch.float32)

    c, v, p = shape["n_embd"], shape["vocab_size"], positions
    sizes = {"tok_emb": (v, c), "pos_emb": (p, c), "qkv": (c, 3 * c), "fc": (c, 4 * c), "mlp.proj": (4 * c, c)}
    for src, dst, conv, has_bias in name_table(shape["n_layer"]):
        key = next((k for k in sizes if src.endswith(k)), None)
        want = sizes[key] if key else ((c, c) if conv else (c,))
        w = take(f"{dst}.weight", want)
        out[f"{src}.weight"] = (w.t() if conv else w).contiguous()
        if has_bias and shape["bias"]:
            out[f"{src}.bias"] = take(f"{dst}.bias", (want[1] if conv else c,)).contiguous()
    head = state.get("lm_head.weight")
    if head is not None and not torch.equal(head.to(torch.float32), out["tok_emb.weight"]):
        raise HvdlmError(f"{where}: lm_head.weight differs from the token embedding; hvdlm's head is tied to it")
    out["pos_emb.weight"] = out["pos_emb.weight"][:shape["block_size"]].contiguous()  # a shorter context
    out["head.weight"] = out["tok_emb.weight"]  # tied: the same tensor under both names, as hvdlm's GPT has it
    return out


def biases_all_zero(hf_state: dict) -> bool:
    """True for hvdlm's export of a bias-free model (and GPT-2 never trained so)."""
    biases = [t for k, t in hf_state.items() if k.endswith(".bias") and t.is_floating_point() and t.dim() == 1]
    return bool(biases) and all(not t.any() for t in biases)


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
