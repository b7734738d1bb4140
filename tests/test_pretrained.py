"""``--init_from`` a Hugging Face GPT-2 folder (and an hvdlm out_dir), its tokenizer for prepare and
sample, and the export round trip. The GPT-2 is a tiny one built here with ``transformers``
(biases, tanh GELU) and a byte-level BPE trained here: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support.launch import HVDLM, check, launch
from support.text import words
from test_bad_input import assert_one_clear_error
from hvdlm import hf, pretrained
from hvdlm.config import load_config
from hvdlm.data import load_meta, open_tokens, prepare
from hvdlm.data.sampler import get_batch, num_sequences
from hvdlm.data.tokenizers import pretrained_tokenizer
from hvdlm.errors import HvdlmError
from hvdlm.export import export_hf
from hvdlm.model import GPT, GPTConfig, fit_vocab
from hvdlm.sample import sample_from_checkpoint

import transformers  # noqa: E402  (install.sh installs it: missing, the tests must fail, not skip)
from safetensors.torch import load_file  # noqa: E402  (after transformers: the same [hf] extra)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

CONTEXT = 32
FLAGS = ["--batch_size", "4", "--eval_sequences", "8", "--progress", "false", "--tensorboard", "false",
         "--warmup_steps", "1", "--eval_interval", "0"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    """A JSONL corpus of short documents."""
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": words(300, seed=i)}) + "\n" for i in range(60)))
    return path


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, texts) -> Path:
    """A GPT-2 folder: config.json, model.safetensors (non-zero biases) and a BPE tokenizer.json."""
    folder = tmp_path_factory.mktemp("gpt2")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([words(20000, seed=99)], trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tk.save(str(folder / "tokenizer.json"))
    config = transformers.GPT2Config(vocab_size=tk.get_vocab_size(), n_positions=CONTEXT, n_embd=32, n_layer=2,
                                     n_head=2, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                                     bos_token_id=tk.token_to_id("<|endoftext|>"),
                                     eos_token_id=tk.token_to_id("<|endoftext|>"))
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # GPT-2's init leaves the biases at zero: give them values to carry over
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory, gpt2, texts) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    prepare([texts], out, tokenizer=str(gpt2), workers=1)
    return out


def hf_model(folder: Path):
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def started(folder: Path, data: Path, **flags) -> GPT:
    """What rank 0 builds for ``--init_from folder``, in this process."""
    cfg = load_config(overrides={"init_from": str(folder), "data_dir": str(data), **flags})
    start = pretrained.inspect(cfg, load_meta(data))
    model = GPT(GPTConfig(**start.shape))
    pretrained.start_from(start, model, None, is_root=True)
    return model.eval()


def test_init_from_gives_transformers_logits(gpt2, data):
    model = started(gpt2, data)
    assert model.cfg.bias and model.cfg.activation == "gelu_new"
    idx = torch.randint(0, model.cfg.vocab_size, (2, CONTEXT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(gpt2)(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["hf", "hvdlm"])
def test_init_from_reads_the_weights_once_and_sends_none(kind, gpt2, data, tmp_path, monkeypatch):
    """Rank 0 reads the folder's weights once (inspect keeps them for start_from), and what the
    other ranks receive of the start carries no weights."""
    import pickle

    import hvdlm.checkpoint as ck
    import safetensors.torch

    folder = gpt2
    if kind == "hvdlm":  # an out_dir: a checkpoint of the GPT-2 folder's model
        model = started(gpt2, data)
        folder = tmp_path / "run"
        folder.mkdir()
        ck.save({"model": model.state_dict(), "model_shape": model.cfg.__dict__, "step": 0,
                 "tokenizer": load_meta(data)["tokenizer"]}, folder)
    reads = []
    real_st, real_ck = safetensors.torch.load_file, ck.load
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: reads.append(a) or real_st(*a, **k))
    monkeypatch.setattr(ck, "load", lambda *a, **k: reads.append(a) or real_ck(*a, **k))
    model = started(folder, data)
    assert len(reads) == 1, reads
    cfg = load_config(overrides={"init_from": str(folder), "data_dir": str(data)})
    start = pretrained.inspect(cfg, load_meta(data))
    assert start.weights and pickle.loads(pickle.dumps(start)).weights is None
    assert len(pickle.dumps(start)) < 4096
    for name, tensor in started(gpt2, data).state_dict().items():  # the weights the folder holds, all of them
        assert torch.equal(model.state_dict()[name], tensor), name


def test_export_init_from_export_round_trips_every_tensor(gpt2, data):
    original = load_file(str(gpt2 / "model.safetensors"))
    model = started(gpt2, data)
    assert model.tok_emb.weight.shape[0] == 320  # the 300 tokens padded to a multiple of 64: not in the export
    exported = hf.to_hf(model.state_dict(), model.cfg.__dict__)
    assert {k: v for k, v in original.items() if k in exported}.keys() == exported.keys()
    for name, tensor in exported.items():
        assert torch.equal(tensor, original[name]), name
    # and back: the export read in again (and padded as --init_from pads) gives the same state dict, bit for bit
    again = fit_vocab(hf.from_hf(exported, model.cfg.__dict__, CONTEXT, "export"), model.cfg.__dict__)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again[name], tensor), name


def test_prepare_with_the_folder_tokenizer_gives_its_ids_and_end_of_text(gpt2, data, texts):
    tk = Tokenizer.from_file(str(gpt2 / "tokenizer.json"))
    eot = tk.token_to_id("<|endoftext|>")
    meta = load_meta(data)
    assert meta["tokenizer"]["end_of_text"] == eot and meta["dtype"] == "uint16"
    docs = [json.loads(line)["text"] for line in texts.read_text().splitlines()]
    expected = {tuple(tk.encode(d).ids + [eot]) for d in docs}
    ids = np.concatenate([open_tokens(data, s, meta) for s in ("train", "val")]).tolist()
    found, doc = set(), []
    for i in ids:  # the shards hold whole documents, each closed by end-of-text, in a shuffled order
        doc.append(i)
        if i == eot:
            found.add(tuple(doc))
            doc = []
    assert not doc and found == expected


def test_gpt2_vocab_and_merges_give_the_ids_of_transformers_gpt2_tokenizer(gpt2, tmp_path):
    """A folder with GPT-2's vocab.json + merges.txt (no tokenizer.json) reads as the same byte-level BPE."""
    Tokenizer.from_file(str(gpt2 / "tokenizer.json")).model.save(str(tmp_path))  # vocab.json, merges.txt
    reference = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    ours = pretrained_tokenizer(str(tmp_path))
    text = words(2000, seed=5) + " naïve café  \n\ttabs"
    assert ours.encode(text) == reference.encode(text) and ours.decode(ours.encode(text)) == text
    assert ours.separator == "<|endoftext|>" and ours.encode("a<|endoftext|>") == reference.encode("a<|endoftext|>")


def test_gpt2_by_name_needs_tiktoken_or_says_what_to_do_offline(texts, tmp_path):
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(HvdlmError, match="pip install tiktoken.*--tokenizer DIR"):
            prepare([texts], tmp_path / "data", tokenizer="gpt2")
        assert not (tmp_path / "data").exists()
    else:
        pytest.skip("tiktoken is installed: its offline error is not reachable here")


def test_two_ranks_train_from_the_folder_and_sample(gpt2, data, tmp_path):
    out = tmp_path / "run"
    command = [HVDLM, "train", "--init_from", str(gpt2), "--data_dir", str(data), "--out_dir", str(out),
               "--max_steps", "4", "--sample_tokens", "0", *FLAGS]
    run = check(launch("horovodrun-gloo", [*command, "--stop_after", "3"]))
    assert f"started from {gpt2}" in run.output and "(vocabulary 300, padded to 320)" in run.output
    evals = _evals(out)
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 3
    assert evals[0]["val_loss"] == pytest.approx(_hf_val_loss(gpt2, data, sequences=8), abs=1e-4)
    # `hvdlm sample` and `hvdlm export`, in this process (the command line around them: test_user_outputs)
    text = sample_from_checkpoint(str(out), "Ka", 20, 1, 0.8, 200, seed=0)[0]
    assert text.startswith("Ka") and len(text) > 4
    dest = tmp_path / "export"  # reads back with --init_from to the weights the run trained
    assert "tokenizer.json" in export_hf(str(out), str(dest))
    trained = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    for source in (dest, out):  # the export, or the out_dir itself
        for name, tensor in started(source, data).state_dict().items():
            assert torch.equal(tensor, trained[name]), (source, name)
    # the same command again resumes the run from its own checkpoint, not from the folder
    again = check(launch("single", command))
    assert "applies only to the run's first start" in again.output and "started from" not in again.output
    assert _evals(out)[-1]["step"] == 4


def _evals(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


def _hf_val_loss(folder: Path, data: Path, sequences: int) -> float:
    """The pretrained model's loss on the sequences hvdlm evaluates at step 0 (Evaluator's choice)."""
    val = open_tokens(data, "val", load_meta(data))
    chosen = np.unique(np.linspace(0, num_sequences(len(val), CONTEXT) - 1, sequences).astype(np.int64))
    x, y = get_batch(val, chosen, CONTEXT, torch.device("cpu"))
    with torch.no_grad():
        logits = hf_model(folder)(x).logits
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item()


@pytest.mark.parametrize("case, words_", [
    ("missing", ("no such folder",)),
    ("another tokenizer", ("byte tokens", "hvdlm prepare --tokenizer")),
])
def test_bad_input_on_two_ranks_is_one_line_and_writes_nothing(case, words_, gpt2, data, corpus, tmp_path):
    folder = tmp_path / "nowhere" if case == "missing" else gpt2
    data_dir = corpus if case == "another tokenizer" else data  # byte ids: fewer than the model's, not its own
    out = tmp_path / "run"
    run = launch("horovodrun-gloo", [HVDLM, "train", "--init_from", str(folder), "--data_dir", str(data_dir),
                                     "--out_dir", str(out), "--max_steps", "2", *FLAGS])
    assert_one_clear_error(run, *words_)
    assert not out.exists()


@pytest.mark.parametrize("case, match", [
    ("llama", "'llama' model.*GPT-2"),
    ("mismatched", "transformer.h.2.*do not match"),
    ("long context", "--block_size 64 is longer than the 32 positions"),
    ("contradicting flag", "--n_layer 4 contradicts .* n_layer 2"),
    ("no weights", "has no weights"),
])
def test_bad_folder_or_flag_is_refused_before_training(case, match, gpt2, data, tmp_path):
    """What rank 0's check (``distributed.on_root``: the same line on every rank, as above) refuses."""
    folder, flags = gpt2, {}
    if case == "llama":
        folder = tmp_path / "llama"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    elif case in ("mismatched", "no weights"):
        folder = tmp_path / case
        folder.mkdir()
        config = json.loads((gpt2 / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, n_layer=3)))
        if case == "mismatched":  # the config says 3 layers; the weights have 2
            (folder / "model.safetensors").symlink_to(gpt2 / "model.safetensors")
    elif case == "long context":
        flags = {"block_size": 64}
    else:
        flags = {"n_layer": 4}
    with pytest.raises(HvdlmError, match=match):
        started(folder, data, **flags)


def test_init_from_is_refused_under_elastic():
    with pytest.raises(HvdlmError, match="init_from starts a plain run"):
        load_config(overrides={"init_from": "somewhere", "elastic": True})
