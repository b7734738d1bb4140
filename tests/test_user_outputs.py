"""What users look at and take away: TensorBoard scalars, MFU in the progress lines and records,
`hvdlm plot`, and `hvdlm export --format hf` loaded back by Hugging Face transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from support.launch import HVDLM, TINY, check, launch
from hvdlm import checkpoint
from hvdlm.data import load_tokenizer, prepare
from hvdlm.metrics import Metrics, read_jsonl
from hvdlm.model import GPT, GPTConfig


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mfu_against_here() -> str | None:
    """What a one-process run measures its MFU against on this machine: this CPU's measured peak,
    or on a GPU its data-sheet peak in the precision `--precision auto` picks there (hvdlm leaves
    TF32 off); None on a GPU that hvdlm.mfu.GPU_PEAKS lacks, where a run reports no MFU."""
    if not torch.cuda.is_available():
        return "this CPU's measured matmul peak"
    from hvdlm.mfu import gpu_peak
    from hvdlm.precision import resolve_precision

    name = torch.cuda.get_device_name(0)
    precision = resolve_precision("auto", torch.device("cuda", 0))
    if gpu_peak(name, precision) is None:
        return None
    return f"the {name}'s dense {'bf16' if precision == 'bf16' else 'fp32'} peak"


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    run = check(launch("single", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(out), *TINY,
                                  "--max_steps", "12", "--eval_interval", "6", "--log_interval", "3",
                                  "--progress", "true"]))
    return out, run


def test_tensorboard_holds_the_records_scalars(trained):
    out, _ = trained
    scalars = tensorboard_scalars(out)
    rows = read_jsonl(out / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [s for s, _ in scalars["loss/train"]] == [3, 6, 9, 12]
    assert [v for _, v in scalars["loss/train"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [s for s, _ in scalars["loss/val"]] == [0, 6, 12]
    assert [v for _, v in scalars["perplexity/val"]] == pytest.approx([r["val_ppl"] for r in evals], rel=1e-6)
    for tag in ("optim/lr", "optim/grad_norm", "speed/tokens_per_s", "speed/mfu", "comm/allreduce_wait_s"):
        if tag == "speed/mfu" and mfu_against_here() is None:  # a GPU without a known peak: no MFU anywhere
            assert tag not in scalars and all("mfu" not in r for r in train)
            continue
        assert len(scalars[tag]) == 4, tag
        if tag == "speed/mfu":
            assert [v for _, v in scalars[tag]] == pytest.approx([r["mfu"] for r in train], rel=1e-6)


def test_mfu_in_progress_lines_records_and_summary(trained):
    """On a CPU against its measured matmul peak; on a GPU against the GPU's data-sheet peak."""
    out, run = trained
    summary = read_jsonl(out / "metrics.jsonl", "summary")[-1]
    lines = [line for line in run.stdout.splitlines() if line.startswith("step 3:")]
    against = mfu_against_here()
    if against is None:
        assert "hvdlm: no MFU: this GPU's peak is not in hvdlm.mfu.GPU_PEAKS" in run.stdout
        assert lines and "MFU" not in lines[0] and "mfu" not in summary, run.stdout
        return
    assert f"MFU is against {against}" in run.stdout
    assert lines and "MFU" in lines[0], run.stdout
    assert 0 < summary["mfu"] < 1 and summary["mfu_against"] == against
    assert f"of {against}" in run.stdout


def test_tensorboard_false_writes_none(corpus, tmp_path):
    check(launch("single", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(tmp_path), *TINY,
                            "--max_steps", "2", "--tensorboard", "false"]))
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_two_ranks_only_rank_0_writes_tensorboard(corpus, tmp_path):
    check(launch("horovodrun-mpi", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(tmp_path), *TINY,
                                    "--max_steps", "4", "--log_interval", "2"]))
    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    assert [s for s, _ in tensorboard_scalars(tmp_path)["loss/train"]] == [2, 4]


def test_metrics_without_tensorboard_scalars_for_nan_and_strings(tmp_path):
    m = Metrics(tmp_path, True, 10, 0, progress=False, tensorboard=True)
    m.record("train", step=1, loss=2.0, lr=1e-3, grad_norm=float("nan"), tokens_per_s=10.0, step_time=0.1,
             allreduce_wait=0.0, bytes_per_step=4096, note="text")
    m.close()
    scalars = tensorboard_scalars(tmp_path)
    assert "optim/grad_norm" not in scalars and scalars["comm/bytes_sent_per_step"] == [(1, 4096.0)]


def test_plot_overlays_runs(trained, tmp_path):
    import matplotlib.image

    out, _ = trained
    png = tmp_path / "img" / "loss.png"
    run = check(launch("single", [HVDLM, "plot", str(out), str(out), "--labels", "a,b", "--out", str(png)]))
    assert str(png) in run.stdout
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 1000


def test_plot_of_a_folder_without_metrics_is_one_error(tmp_path):
    run = launch("single", [HVDLM, "plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "holds no metrics.jsonl" in run.stderr


def hf_logits(dest, idx: torch.Tensor) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(dest)).eval()
    with torch.no_grad():
        return model(idx).logits


def test_export_of_a_trained_run_gives_transformers_the_same_logits_and_tokens(trained, corpus, tmp_path):
    from transformers import AutoTokenizer

    out, _ = trained
    dest = tmp_path / "hf"
    run = check(launch("single", [HVDLM, "export", "--out_dir", str(out), "--format", "hf", str(dest)]))
    assert "tokenizer.json" in run.stdout
    state = checkpoint.load(out / "checkpoint.pt")
    model = GPT(GPTConfig(**state["model_shape"])).eval()
    model.load_state_dict(state["model"])
    text = "def main():\n    return 'héllo'  # ünïcode"
    ids = load_tokenizer(corpus).encode(text)[:32]
    assert AutoTokenizer.from_pretrained(str(dest)).encode(text) == load_tokenizer(corpus).encode(text)
    idx = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = model(idx)
    assert torch.allclose(hf_logits(dest, idx), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_export_layout_with_and_without_biases(tmp_path, bias):
    from hvdlm.export import export_hf

    shape = dict(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=24, dropout=0.0, bias=bias)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).eval()
    if bias:  # non-zero biases, so a misplaced one would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.normal_(p, std=0.5)
    checkpoint.save({"model": model.state_dict(), "model_shape": shape, "step": 1, "tokenizer": {"kind": "byte"},
                     "config": {"data": {"data_dir": str(tmp_path / "gone")}}}, tmp_path)
    written = export_hf(str(tmp_path), str(tmp_path / "hf"))
    assert written[:2] == ["config.json", "model.safetensors"] and "tokenizer.json" in written
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ours, _ = model(idx)
    assert torch.allclose(hf_logits(tmp_path / "hf", idx), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_exported_tokenizer_gives_hvdlms_ids(tmp_path, kind):
    from transformers import AutoTokenizer

    from hvdlm.hf import hf_tokenizer

    src = tmp_path / "src.txt"
    src.write_text("the quick brown fox jumps over the lazy dog.\n" * 50 + "def f(x): return x * 2\n" * 50)
    data = tmp_path / "data"
    prepare([str(src)], data, tokenizer=kind, vocab_size=300, val_fraction=0.1, workers=1)
    meta = json.loads((data / "meta.json").read_text())
    dest = tmp_path / "hf"
    dest.mkdir()
    hf_tokenizer(meta["tokenizer"], data).save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                            "clean_up_tokenization_spaces": False}))
    ours = load_tokenizer(data)
    theirs = AutoTokenizer.from_pretrained(str(dest))
    text = "the lazy fox: def f(x): return x * 2 ."
    assert theirs.encode(text) == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == text


def test_export_without_a_checkpoint_is_one_error(tmp_path):
    run = launch("single", [HVDLM, "export", "--out_dir", str(tmp_path), str(tmp_path / "hf")])
    assert run.returncode == 2 and "hvdlm: error: cannot read checkpoint" in run.stderr
    assert "Traceback" not in run.stderr


def test_plot_reads_tokens_and_continues_the_clock_of_a_resumed_run(tmp_path):
    from hvdlm.plot import read_run

    rows = [{"kind": "eval", "time": 1.0, "step": 0, "val_loss": 5.0},
            {"kind": "train", "time": 10.0, "step": 10, "loss": 4.0, "tokens_per_s": 1000.0, "step_time": 0.5},
            {"kind": "summary", "time": 11.0},
            {"kind": "eval", "time": 0.5, "step": 10, "val_loss": 3.9},  # resumed: its clock starts again
            {"kind": "train", "time": 4.0, "step": 20, "loss": 3.5, "tokens_per_s": 1000.0, "step_time": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val = read_run(tmp_path)
    assert train.step == [10, 20] and train.tokens == [5000.0, 10000.0] and train.seconds == [10.0, 15.0]
    assert val.step == [0, 10] and val.seconds == [1.0, 11.5]
