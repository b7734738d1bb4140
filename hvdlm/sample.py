"""Generate text from a checkpoint (``hvdlm sample``), or from a model in memory."""

from __future__ import annotations

import torch

from hvdlm import checkpoint
from hvdlm.data import load_meta, load_tokenizer
from hvdlm.errors import HvdlmError
from hvdlm.model import GPT, GPTConfig


def generate_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int, device, seed: int,
                  temperature: float = 0.8, top_k: int | None = 200) -> str:
    """``device``: where the model is; the prompt and the sampling generator are made there too."""
    # no prompt: start from the end-of-text token where there is one (a document's start, to GPT-2)
    ids = tokenizer.encode(prompt) if prompt else [getattr(tokenizer, "end_of_text", None) or 0]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    model.train(was_training)
    start = len(ids) if prompt else 1  # the placeholder start token is not text
    return prompt + tokenizer.decode(out[0, start:].tolist())


def check_options(max_new_tokens: int, num_samples: int, temperature: float, top_k: int) -> None:
    """Refuse values that would print nothing or fail deep inside sampling, before loading anything."""
    for name, value, ok, want in (("sample_tokens", max_new_tokens, max_new_tokens >= 1, "at least 1"),
                                  ("num_samples", num_samples, num_samples >= 1, "at least 1"),
                                  ("temperature", temperature, temperature >= 0, "0 (the likeliest token) or more"),
                                  ("top_k", top_k, top_k >= 0, "0 (all tokens) or more")):
        if not ok:
            raise HvdlmError(f"--{name} must be {want}, got {value}")


def sample_from_checkpoint(out_dir: str, prompt: str, max_new_tokens: int, num_samples: int,
                           temperature: float, top_k: int, seed: int, data_dir: str | None = None) -> list[str]:
    check_options(max_new_tokens, num_samples, temperature, top_k)
    state = checkpoint.load(checkpoint.path_in(out_dir))
    data_dir = data_dir or state["config"]["data"]["data_dir"]
    tokenizer = load_tokenizer(data_dir)
    if load_meta(data_dir)["tokenizer"] != state["tokenizer"]:
        raise HvdlmError(f"{data_dir} holds another tokenizer than the one {out_dir} was trained with")
    model = GPT(GPTConfig(**state["model_shape"]))
    model.load_state_dict(state["model"])  # the checkpoint is read onto the CPU; the model then moves
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    return [generate_text(model, tokenizer, prompt, max_new_tokens, device, seed + i,
                          temperature, top_k or None) for i in range(num_samples)]
