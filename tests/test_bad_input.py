"""Bad input ends the job quickly with one clear line and a non-zero exit on every rank."""

from __future__ import annotations

import sys

import pytest

from support.launch import HVDLM, LIMIT, PROBE, TINY, assert_one_clear_error, check, launch, rank_output
from hvdlm.data import prepare

def test_prepare_missing_input():
    run = launch("single", [HVDLM, "prepare", "/no/such/corpus", "--out_dir", "/tmp/unused"])
    assert run.returncode == 2
    assert_one_clear_error(run, "/no/such/corpus")


def test_prepare_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    run = launch("single", [HVDLM, "prepare", str(tmp_path / "empty.txt"), "--out_dir", str(tmp_path / "d")])
    assert_one_clear_error(run, "corpus is empty")
    assert not (tmp_path / "d" / "meta.json").exists()


@pytest.mark.parametrize("launcher", ["horovodrun-gloo", "mpirun"])
def test_missing_data_dir(launcher, tmp_path):
    run = launch(launcher, [HVDLM, "train", "--data_dir", str(tmp_path / "nothing"), "--out_dir", str(tmp_path / "o"), *TINY])
    assert_one_clear_error(run, "does not exist", "hvdlm prepare")


def test_invalid_config_value_on_two_ranks(tmp_path):
    run = launch("horovodrun-gloo", [HVDLM, "train", "--lr", "-1", "--out_dir", str(tmp_path)])
    assert_one_clear_error(run, "lr must be positive")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    (d / "a.txt").write_text("hello world, this is a tiny corpus. " * 40)
    prepare([d / "a.txt"], d / "data", tokenizer="char")
    return d / "data"


def test_context_longer_than_the_data(small_corpus, tmp_path):
    run = launch("mpirun", [HVDLM, "train", "--data_dir", str(small_corpus), "--out_dir", str(tmp_path),
                            *TINY, "--block_size", "4096"])
    assert_one_clear_error(run, "block_size 4096")


def test_unwritable_out_dir(corpus, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(corpus), *TINY,
                                     "--out_dir", str(blocker / "run")])
    assert_one_clear_error(run, "cannot write to out_dir")


def test_checkpoint_from_another_model_and_a_corrupt_one(corpus, tmp_path):
    common = ["--data_dir", str(corpus), "--out_dir", str(tmp_path), *TINY, "--eval_interval", "0"]
    check(launch("single", [HVDLM, "train", *common, "--max_steps", "2"]))
    good = (tmp_path / "checkpoint.pt").read_bytes()
    run = launch("horovodrun-gloo", [HVDLM, "train", *common, "--max_steps", "4", "--n_layer", "3"])
    assert_one_clear_error(run, "different model", "n_layer=2 (this run: 3)")
    assert (tmp_path / "checkpoint.pt").read_bytes() == good  # the refused run changed nothing

    (tmp_path / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    run = launch("mpirun", [HVDLM, "train", *common, "--max_steps", "4"])
    assert_one_clear_error(run, "cannot read checkpoint")


def test_data_from_another_tokenizer(tmp_path):
    # two char vocabularies of the same size: the model shape matches, the meaning of ids does not
    for name, text in (("one", "abcdefgh " * 400), ("two", "stuvwxyz " * 400)):
        (tmp_path / f"{name}.txt").write_text(text)
        prepare([tmp_path / f"{name}.txt"], tmp_path / name, tokenizer="char")
    common = ["--out_dir", str(tmp_path / "run"), *TINY, "--eval_interval", "0", "--max_steps", "2"]
    check(launch("single", [HVDLM, "train", "--data_dir", str(tmp_path / "one"), *common]))
    run = launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(tmp_path / "two"), *common,
                                     "--max_steps", "4"])
    assert_one_clear_error(run, "tokenized as 'char'", "point data_dir at the data it was trained on")


@pytest.mark.parametrize("launcher", ["horovodrun-gloo", "mpirun"])
def test_one_rank_raising_ends_every_rank(launcher, corpus, tmp_path):
    """An exception on rank 1 mid-training must not leave rank 0 waiting in the allreduce."""
    run = launch(launcher, [sys.executable, PROBE, "crash", str(tmp_path / "unused"), "--",
                            "--data_dir", str(corpus), "--out_dir", str(tmp_path), *TINY,
                            "--max_steps", "50", "--eval_interval", "0"])
    assert run.returncode != 0
    assert run.seconds < LIMIT, f"took {run.seconds:.0f}s"
    failed = [line for line in rank_output(run).splitlines() if "failed:" in line]
    assert len(failed) == 1 and "hvdlm: rank 1 on" in failed[0], run.output
    assert "RuntimeError: injected fault at step 3" in failed[0]
    assert "Traceback" not in rank_output(run), run.output
    assert "injected fault" in (tmp_path / "error-rank1.log").read_text()  # the details are kept


def test_global_batch_that_the_ranks_cannot_split(corpus, tmp_path):
    run = launch("horovodrun-gloo", [HVDLM, "train", "--data_dir", str(corpus), "--out_dir", str(tmp_path),
                                     *TINY, "--global_batch_size", "15"])
    assert_one_clear_error(run, "global batch of 15 sequences cannot be split evenly over 2 ranks")


def test_more_ranks_than_the_data_can_feed(small_corpus, tmp_path):
    run = launch("mpirun", [HVDLM, "train", "--data_dir", str(small_corpus), "--out_dir", str(tmp_path),
                            *TINY, "--batch_size", "64"])
    assert_one_clear_error(run, "fewer than one global batch of 128")


@pytest.mark.parametrize("option, value, words", [
    ("--sample_tokens", "-5", "--sample_tokens must be at least 1, got -5"),
    ("--sample_tokens", "0", "--sample_tokens must be at least 1"),
    ("--num_samples", "0", "--num_samples must be at least 1"),
    ("--top_k", "-1", "--top_k must be 0"),
    ("--temperature", "-0.5", "--temperature must be 0"),
])
def test_sample_with_a_bad_value(tmp_path, option, value, words):
    run = launch("single", [HVDLM, "sample", "--out_dir", str(tmp_path), option, value])
    assert_one_clear_error(run, words)
    assert run.returncode == 2


# The command line as a new user meets it: each case one `hvdlm: error:` line (or one note), never a
# usage block, a traceback, or a log file in the working folder.
@pytest.mark.parametrize("argv, words", [
    (["train", "--max_step", "5"], ["unrecognized arguments: --max_step 5", "hvdlm train --help"]),
    (["train", "--global_batch", "8"], ["unrecognized arguments: --global_batch 8"]),
    (["train", "--preset", "huge"], ["invalid choice: 'huge'", "gpt2-medium"]),
    (["plan", "--preset", "gpt2"], ["required: --ranks"]),
    (["plan", "--preset", "gpt2", "--ranks", "8", "--step_ms", "x"], ["--step_ms: invalid float value: 'x'"]),
    (["plan", "--preset", "gpt2", "--ranks", "8", "--step_ms", "10", "--vocab_size", "-5"],  # was a crash
     ["argument --vocab_size: -5 is out of range: at least 1"]),
    (["bench", "sync", "--method", "none"], ["unrecognized arguments: --method", "hvdlm bench sync --help"]),
    (["bench", "sync", "--methods", "diloco-int4"], ["unknown method 'diloco-int4'", "diloco-int8-overlap"]),
])
def test_a_bad_command_line_is_one_line(argv, words, tmp_path):
    run = launch("single", [HVDLM, *argv, *(["--data_dir", str(tmp_path)] if argv[:2] == ["bench", "sync"]
                                             and "--methods" in argv else [])], cwd=tmp_path)
    assert run.returncode == 2
    assert_one_clear_error(run, *words)
    assert "usage:" not in run.output and not list(tmp_path.glob("error-rank*.log"))


def test_bench_sync_without_data_is_one_line_before_any_launch(tmp_path):
    run = launch("single", [HVDLM, "bench", "sync", "--data_dir", str(tmp_path / "none"), "--methods", "none",
                            "--out_dir", str(tmp_path / "o")], cwd=tmp_path)
    assert_one_clear_error(run, "no prepared data", "hvdlm prepare --out_dir")
    assert not (tmp_path / "o" / "runs").exists()


def test_an_old_spelling_works_with_a_note(tmp_path):
    run = launch("single", [HVDLM, "plan", "--preset", "tiny", "--vocab_size", "256", "--ranks", "4",
                            "--global_batch", "8", "--powersgd_ranks", "2", "--step_ms", "10"], cwd=tmp_path)
    check(run)
    notes = [line for line in run.output.splitlines() if line.startswith("hvdlm: note:")]
    assert notes == ["hvdlm: note: --global_batch is now spelled --global_batch_size",
                     "hvdlm: note: --powersgd_ranks is now spelled --powersgd_rank"], run.output
    assert "2 sequence(s) a rank" in run.output and "powersgd r2" in run.output and "powersgd r4" not in run.output


def test_plot_into_a_file_path_and_plan_into_a_closed_pipe(tmp_path):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(
        f'{{"kind": "train", "step": {s}, "loss": {3 - s / 10}, "tokens_per_s": 100.0, "step_time": 0.1, '
        f'"time": {s / 10}}}\n' for s in (1, 2, 3)))
    run = launch("single", [HVDLM, "plot", str(tmp_path / "run"), "--out", str(tmp_path / "a-file" / "loss.png")],
                 cwd=tmp_path)
    assert_one_clear_error(run, "a-file")
    # the reader is gone before plan writes (`true` exits at once; plan takes a second to start)
    closed = launch("single", ["bash", "-c", f"{HVDLM} plan --preset gpt2 --ranks 1024 --gpu A100 | true"], cwd=tmp_path)
    assert "closed pipe" in closed.output and "Traceback" not in closed.output, closed.output
    assert not list(tmp_path.glob("error-rank*.log"))


def test_the_help_lists_what_is_accepted():
    """`bench sync --help` names every method it takes (the diloco variants too); `plan --help`
    offers no empty preset."""
    sync = launch("single", [HVDLM, "bench", "sync", "--help"])
    listed = " ".join(sync.stdout.split())
    assert sync.returncode == 0
    assert all(m in listed for m in ("diloco-int8-overlap", "local_sgd-overlap", "diloco-fp16")), listed
    plan = launch("single", [HVDLM, "plan", "--help"])
    assert plan.returncode == 0 and "{tiny,mini,small,gpt2,gpt2-medium}" in plan.stdout and "{," not in plan.stdout
