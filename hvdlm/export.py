"""``hvdlm export --format hf DEST``: a checkpoint as a Hugging Face ``transformers`` GPT-2.

The layout both ways (names, Conv1D transposes, biases, the tied head, the GELU) is ``hf.py``'s;
``--init_from DEST`` reads the folder back to the same weights (``pretrained.py``).

The tokenizer goes along as ``tokenizer.json`` (``AutoTokenizer.from_pretrained(DEST)`` loads
it) where the ``tokenizers`` library expresses it exactly: bpe as trained; byte as a byte-level
BPE with the 256 bytes and no merges (ids = byte values); char as a BPE over the corpus's
characters with no merges (a character outside them is dropped, where hvdlm refuses it).

Writing needs ``safetensors`` (``pip install -e .[hf]``); loading needs ``transformers`` too.
"""

from __future__ import annotations

import json
from pathlib import Path

from hvdlm import checkpoint
from hvdlm.data import load_meta
from hvdlm.errors import HvdlmError
from hvdlm.hf import hf_config, hf_tokenizer, to_hf


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
    save_file(to_hf(state["model"], shape), str(dest_path / "model.safetensors"), metadata={"format": "pt"})

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
