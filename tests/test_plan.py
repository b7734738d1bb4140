"""hvdlm plan: the cost model's terms by hand, its bytes against hvdlm's own counters at 2 ranks,
--measure on 2 local ranks, and bad input as one error line."""

import json
import math

import pytest

from support.launch import HVDLM, TINY, check, launch
from hvdlm.cli import build_parser, main
from hvdlm.plan import network, overlap
from hvdlm.plan.command import setting
from hvdlm.plan.methods import Method, predict
from hvdlm.plan.network import Cluster, Link
from hvdlm.stop_signals import check_lag
from hvdlm.units import parse_duration, parse_link, parse_rate

GBIT = 1e9 / 8


def test_units():
    assert parse_rate("25gbit") == 25 * GBIT
    assert parse_rate("400Gbit/s") == 400 * GBIT
    assert parse_rate("100mbit") == 100e6 / 8
    assert parse_rate("3.35TB/s") == 3.35e12
    assert parse_duration("20us") == pytest.approx(20e-6)
    assert parse_duration("1.5ms") == pytest.approx(1.5e-3)
    assert parse_link("1gbit,10ms") == (GBIT, pytest.approx(0.01))


def test_ring_allreduce_by_hand():
    link = Link(bandwidth=1e9, latency=1e-5)  # 1 GB/s, 10 us
    # 4 ranks, 100 MB: 2 x 3/4 x 0.1 s + 6 x 10 us
    assert network.ring_allreduce(100e6, 4, link) == pytest.approx(0.15 + 6e-5)
    assert network.ring_allreduce(100e6, 1, link) == 0.0
    # 16 ranks, 8 a host: the flat ring crosses the slower link, with its latency, 30 times
    c = Cluster(16, 8, inter=link, intra=Link(1e10, 1e-6))
    assert network.allreduce(c, 16e6) == pytest.approx(2 * 15 / 16 * 0.016 + 30 * 1e-5)
    # hierarchical: a ring of 8 inside (fast), then one of 2 hosts across (2 latencies, not 30)
    h = Cluster(16, 8, inter=link, intra=Link(1e10, 1e-6), hierarchical=True)
    inside = 2 * 7 / 8 * 16e6 / 1e10 + 14 * 1e-6
    across = 2 * 1 / 2 * 16e6 / 1e9 + 2 * 1e-5
    assert network.allreduce(h, 16e6) == pytest.approx(inside + across)


def test_alltoall_exchange_by_hand():
    link = Link(1e9, 1e-5)
    # one rank a host: alltoall + allgather = the ring allreduce's time exactly
    c = Cluster(4, 1, inter=link, intra=link)
    assert network.alltoall_exchange(c, 100e6) == pytest.approx(network.ring_allreduce(100e6, 4, link))
    # 16 ranks, 8 a host: a host's NIC carries 8 x 8/16 of the buffer in the alltoall
    c = Cluster(16, 8, inter=link, intra=Link(1e10, 1e-6))
    alltoall = 8 * 8 / 16 * 16e6 / 1e9 + 15 * 1e-5
    allgather = 15 / 16 * 16e6 / 1e9 + 15 * 1e-5
    assert network.alltoall_exchange(c, 16e6) == pytest.approx(alltoall + allgather)
    assert network.nic_bytes_exchange(c, 16e6) == pytest.approx(8 * 8 / 16 * 16e6 + 15 / 16 * 16e6)


def test_fusion_and_the_cycle():
    assert overlap.fused([10, 20, 30, 200, 5], 64) == [60, 200, 5]
    # two tensors, ready at 0 and 10 ms, 1 ms cycle, each allreduce 2 ms: the last ends 2.5 + ... ms
    ready = [overlap.Ready(0.0, 1), overlap.Ready(0.010, 1)]
    tl = overlap.simulate(ready, 0.001, 64, lambda b: 0.002, 0.0)
    assert tl.buffers == 2 and tl.finish == pytest.approx(0.0105 + 0.002)


def plan_args(*extra):
    return build_parser().parse_args(["plan", *extra])


def test_link_bandwidth_from_preflight_json(tmp_path):
    ranks = [{"rank": 0, "p2p_gbps": 2.5}, {"rank": 1, "p2p_gbps": 1.25}]
    (tmp_path / "pre.json").write_text(json.dumps({"per_rank": ranks}))
    s, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "2", "--ranks_per_host", "1",
                                "--step_ms", "5", "--preflight", str(tmp_path / "pre.json"), "--link", "1gbit,30us",
                                "--mem_bw", "10GB/s"))
    assert s.cluster.inter == Link(1.25e9, pytest.approx(30e-6))


def test_the_stop_check_no_longer_makes_a_short_step_wait_for_the_cycle():
    """A 5 ms step under the 20 ms periodic cycle: the check is read 8 steps after it is asked
    (two cycles' worth), so it adds nothing; read a step later, as before, it cost ~15 ms a step."""
    s, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "2", "--step_ms", "5",
                                "--link", "25gbit,20us", "--ranks_per_host", "1", "--mem_bw", "10GB/s"))
    assert check_lag(0.020, 0.005) == 8 and check_lag(0.001, 0.050) == 1 and check_lag(0.02, 0.0) == 1
    row = predict(s, Method("diloco", every=50, wire="bf16"))
    assert row.exposed < 0.002, row


METHODS = {  # flags of hvdlm train -> the plan's method
    "none": ([], Method("none")),
    "fp16": (["--compression", "fp16"], Method("fp16")),
    "bf16": (["--compression", "bf16"], Method("bf16")),
    "powersgd": (["--compression", "powersgd", "--powersgd_rank", "2"], Method("powersgd", rank=2)),
    "local_sgd": (["--sync", "local_sgd", "--sync_every", "2"], Method("local_sgd", every=2)),
    "diloco-int8": (["--sync", "diloco", "--sync_every", "2", "--compression", "int8"],
                    Method("diloco", every=2, wire="int8")),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_predicted_bytes_equal_hvdlm_counters_at_2_ranks(name, corpus, tmp_path):
    flags, method = METHODS[name]
    out = tmp_path / name
    check(launch("horovodrun-gloo", [HVDLM, "train", *TINY, "--data_dir", str(corpus), "--out_dir", str(out),
                                     "--max_steps", "8", "--log_interval", "1", "--eval_interval", "0",
                                     "--tensorboard", "false", *flags]))
    rows = {r["step"]: r for r in map(json.loads, open(out / "metrics.jsonl")) if r["kind"] == "train"}
    counted = (rows[8]["sync_bytes"] - rows[4]["sync_bytes"]) / 4  # after PowerSGD's plain start, whole periods
    vocab = json.loads((corpus / "meta.json").read_text())["vocab_size"]
    s, _, _ = setting(plan_args("--preset", "tiny", "--n_layer", "2", "--n_head", "2", "--n_embd", "32",
                                "--block_size", "32", "--vocab_size", str(vocab), "--ranks", "2",
                                "--global_batch_size", "16", "--step_ms", "10", "--mem_bw", "10GB/s"))
    assert counted > 0 and predict(s, method).sent == pytest.approx(counted, rel=1e-9)
    # and by hand: at 2 ranks a ring allreduce sends each rank's whole payload once; N parameters
    numel = sum(n for _, shape in s.params for n in [math.prod(shape)])
    by_hand = {"none": 4 * numel, "fp16": 2 * numel, "bf16": 2 * numel, "local_sgd": 4 * numel / 2,
               "diloco-int8": numel * (1 + 4 / 256) / 2}  # int8: one fp32 scale per 256 values; H = 2
    if name in by_hand:
        assert counted == pytest.approx(by_hand[name], rel=1e-9)
    if name == "none":  # the same run as a model (its out_dir) and as compute (its metrics.jsonl)
        from_run, _, source = setting(plan_args("--out_dir", str(out), "--metrics", str(out), "--ranks", "4",
                                                "--global_batch_size", "16", "--mem_bw", "10GB/s"))
        assert from_run.params == s.params and from_run.compute > 0 and source == f"from {out}"


def test_model_from_an_init_from_folder(tmp_path):
    """A GPT-2 folder's config.json gives the model `train --init_from` would train: GPT-2's own parameter
    count (12 C^2 + 13 C per block with its biases, wte, wpe, ln_f); --block_size shortens the context."""
    from hvdlm.hf import hf_config

    L, C, V, T = 3, 48, 300, 96
    (tmp_path / "config.json").write_text(json.dumps(hf_config(dict(vocab_size=V, block_size=T, n_layer=L,
                                                                     n_head=4, n_embd=C))))
    s, _, _ = setting(plan_args("--init_from", str(tmp_path), "--ranks", "2", "--step_ms", "10", "--mem_bw", "1GB/s"))
    assert s.numel == L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C and s.shape["block_size"] == T
    short, _, _ = setting(plan_args("--init_from", str(tmp_path), "--block_size", "64", "--ranks", "2",
                                    "--step_ms", "10", "--mem_bw", "1GB/s"))
    assert short.numel == s.numel - 32 * C and short.tokens_per_step == 2 * 8 * 64


@pytest.mark.parametrize("flags, says", [
    (["--block_size", "200"], "--block_size 200 is longer than the 96 positions"),
    (["--preset", "tiny"], "one of them"),
])
def test_init_from_bad_input(flags, says, tmp_path, capsys):
    from hvdlm.hf import hf_config

    (tmp_path / "config.json").write_text(json.dumps(hf_config(dict(vocab_size=300, block_size=96, n_layer=1,
                                                                     n_head=1, n_embd=8))))
    with pytest.raises(SystemExit):
        main(["plan", "--init_from", str(tmp_path), "--step_ms", "10", "--ranks", "2", *flags])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    with pytest.raises(SystemExit):
        main(["plan", "--init_from", str(tmp_path / "nothing"), "--step_ms", "10", "--ranks", "2"])
    assert "neither a Hugging Face GPT-2 folder" in capsys.readouterr().err


def test_measure_on_2_local_ranks(corpus, tmp_path):
    run = check(launch("single", [HVDLM, "plan", "--preset", "tiny", "--n_layer", "2", "--n_embd", "32",
                                  "--n_head", "2", "--block_size", "32", "--data_dir", str(corpus), "--ranks", "16",
                                  "--global_batch_size", "64", "--measure", "4", "--measure_ranks", "2",
                                  "--json", str(tmp_path / "plan.json")], timeout=300))
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert "measured here: 4 steps on 2 rank(s); PowerSGD's work r4 " in doc["setting"]
    labels = [r["method"] for r in doc["rows"]]
    assert labels[:5] == ["none", "fp16", "bf16", "powersgd r4", "powersgd r8"]
    assert any(label.startswith("diloco H=50 int8 overlap") for label in labels)
    for r in doc["rows"]:
        assert r["compute_ms"] > 0 and math.isclose(r["step_ms"], r["compute_ms"] + r["exposed_ms"])
    assert "fastest within --max_loss_penalty" in run.stdout


@pytest.mark.parametrize("flags, says", [
    (["--link", "25furlongs,20us"], "is not a rate"),
    (["--link", "25gbit,20parsecs"], "is not a duration"),
    (["--ranks", "0"], "--ranks 0 is out of range"),
    (["--ranks", "3", "--global_batch_size", "16"], "does not divide into --ranks 3"),
    (["--ranks", "12", "--ranks_per_host", "8"], "not a whole number of hosts"),
    (["--log_interval", "0"], "--log_interval 0 is out of range"),
])
def test_bad_input_is_one_error_line(flags, says, capsys):
    argv = ["plan", "--preset", "tiny", "--vocab_size", "256", "--step_ms", "10", "--ranks", "2", *flags]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr()
    assert exit_.value.code == 2
    assert err.out == "" and err.err.count("\n") == 1 and err.err.startswith("hvdlm: error:") and says in err.err


def test_bad_input_from_the_command_line(tmp_path):
    run = launch("single", [HVDLM, "plan", "--preset", "tiny", "--step_ms", "10", "--ranks", "4",
                            "--link", "9furlongs,1us", "--json", str(tmp_path / "plan.json")], cwd=tmp_path)
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1, run.output
    assert run.stderr.startswith("hvdlm: error: --link bandwidth '9furlongs' is not a rate")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_every_penalty_is_the_worst_cell_of_its_row_in_results():
    """plan's penalties (one recorded source, penalties.json) are the figures RESULTS.md records:
    each is the largest +x.xx% in the table row it names, within the section it names."""
    import re
    from pathlib import Path

    from hvdlm.plan import penalty

    results = (Path(__file__).resolve().parent.parent / "benchmarks" / "RESULTS.md").read_text()
    entries = json.loads(penalty.RECORDED.read_text())["penalties"]
    assert len(penalty.MEASURED) == len(entries) > 5
    for e in entries:
        if e["section"] is None:
            assert e["method"] == "none" and e["pct"] == 0.0
            continue
        start = results.index(f"## {e['section']}") if f"## {e['section']}" in results else \
            results.index(f"### {e['section']}")
        section = results[start:results.find("\n## ", start + 4)]
        rows = [line for line in section.splitlines() if line.startswith(e["row"])]
        assert rows, (e["section"], e["row"])
        worst = max(float(x) for x in re.findall(r"\+(\d+\.\d+)%", rows[0]))
        assert worst == e["pct"], (e, rows[0])
        assert penalty.measured(Method(e["method"], rank=e["setting"], every=e["setting"] or 1,
                                       overlap=e["overlap"]))[0] == e["pct"]
