"""hvdlm plan: the cost model's terms by hand, its bytes against hvdlm's own counters at 2 ranks,
--measure on 2 local ranks, and bad input as one error line."""

import json
import math
import statistics
from dataclasses import replace

import pytest

from support.launch import HVDLM, TINY, check, launch
from hvdlm.cli import build_parser, main
from hvdlm.errors import HvdlmError
from hvdlm.plan import network, overlap, straggler
from hvdlm.plan.command import setting
from hvdlm.plan.methods import Method, bottleneck, predict
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


def test_where_the_cycle_falls_is_in_every_row_s_uncertainty():
    """Each blocking collective started outside a cycle waits none to a whole cycle (cycle_probe.py):
    half a cycle each in the +- of the step, beside the network's 20% of the exposed time."""
    from hvdlm.plan.table import table

    args = ("--preset", "tiny", "--vocab_size", "256", "--step_ms", "50", "--link", "1gbit,50us", "--ranks_per_host",
            "1", "--mem_bw", "10GB/s", "--cycle_ms", "1", "--periodic_cycle_ms", "20", "--log_interval", "1")
    s, _, _ = setting(plan_args("--ranks", "2", *args))
    ms = [Method("none"), Method("bf16"), Method("powersgd", rank=4), Method("diloco", every=10, wire="bf16"),
          Method("local_sgd", every=10, overlap=4)]
    _, _, docs = table(s, ms)
    # per step: the gradients' tail, or two collectives (bf16, PowerSGD), or a period's exchange / H, and the loss
    want = [(1 + 1) * 0.5, (2 + 1) * 0.5, (2 + 1) * 0.5, (2 / 10 + 1) * 10, (4 / 10 + 1) * 10]
    for d, cycle_ms in zip(docs, want):
        assert d["cycle_error_ms"] == pytest.approx(cycle_ms), d["method"]
        assert d["step_ms_error"] == pytest.approx(0.2 * d["exposed_ms"] + cycle_ms), d["method"]
    s1, _, _ = setting(plan_args("--ranks", "1", *args))
    assert all(d["cycle_error_ms"] == 0 for d in table(s1, ms)[2])  # one rank waits for no cycle


def test_the_wait_for_the_slowest_rank_against_a_simulation():
    """N ranks whose compute varies by sigma a step; they wait for each other at every blocking point
    (every step; or a period's exchange and each logged step): the mean wait, drawn, is plan's."""
    import numpy
    assert straggler.expected_max(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-6)  # closed forms
    assert straggler.expected_max(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-6)
    rng = numpy.random.default_rng(0)
    sigma = 0.002
    for ranks, every, log in [(2, 1, 1), (4, 1, 1), (64, 1, 1), (4, 10, 1), (4, 10, 5), (8, 25, 10)]:
        periods = 20000 // every + 200
        compute = rng.normal(0.05, sigma, size=(periods, every, ranks))
        ends = [k for k in range(1, every + 1) if k % log == 0 or k == every]
        waited, start = 0.0, 0
        for end in ends:  # each rank's compute since the last blocking point; it waits for the last one
            since = compute[:, start:end, :].sum(axis=1)
            waited += (since.max(axis=1, keepdims=True) - since).mean()
            start = end
        assert straggler.wait(sigma, ranks, every, log) == pytest.approx(waited / every, rel=0.03), (ranks, every, log)
    # in plan's rows: added to the exposed time of every method; what bounds a short exchange
    s, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "64", "--step_ms", "50",
                                "--mem_bw", "10GB/s", "--log_interval", "10"))
    jittery = replace(s, jitter=0.005)
    for m in (Method("none"), Method("bf16"), Method("diloco", every=50, wire="int8")):
        added = predict(jittery, m).exposed - predict(s, m).exposed
        assert added == pytest.approx(straggler.wait(0.005, 64, m.every, 10 if m.periodic else 1), rel=1e-9)
    assert bottleneck(jittery, Method("none")) == "stragglers" and bottleneck(s, Method("none")) != "stragglers"


def test_an_overlapped_slice_shorter_than_a_step_hides_and_a_longer_one_is_waited_for():
    """DiLoCo over T = 4 steps of 100 ms, every step logged (L: one loss average): slices of 60 ms run
    behind the next step, so a period waits only its 10 averages; slices of 500 ms run one after
    another, and the 4 steps hide 4 x 100 ms of their 2 s (the test cluster's runs: RESULTS.md)."""
    from hvdlm.plan import methods
    s, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "2", "--ranks_per_host", "1",
                                "--step_ms", "100", "--mem_bw", "10GB/s", "--log_interval", "1"))
    log = methods.collective(s, s.periodic_cycle, 0.0)
    assert methods._overlapped(s, 0.060, 4, 10) == pytest.approx(10 * log)
    assert methods._overlapped(s, 0.500, 4, 10) == pytest.approx(10 * log + 4 * 0.500 - 4 * 0.100)


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
        # its compute's spread, read from the file by hand (the steps after 2 warm-up ones), scaled to the
        # plan's 4 sequences a rank from the run's 8
        own = [r["step_time"] - r["allreduce_wait"] for step, r in rows.items() if step > 2]
        assert from_run.jitter == pytest.approx(statistics.stdev(own) * 4 / 8, rel=1e-9) and from_run.jitter > 0


def test_model_from_an_init_from_folder(tmp_path):
    """A GPT-2 folder's config.json gives the model `train --init_from` would train: GPT-2's own parameter
    count (12 C^2 + 13 C per block with its biases, wte, wpe, ln_f), the embedding padded to a multiple of
    64 rows as `train --init_from` pads it (300 -> 320); --block_size shortens the context."""
    from hvdlm.hf import hf_config

    L, C, V, T = 3, 48, 300, 96
    (tmp_path / "config.json").write_text(json.dumps(hf_config(dict(vocab_size=V, block_size=T, n_layer=L,
                                                                     n_head=4, n_embd=C))))
    s, _, _ = setting(plan_args("--init_from", str(tmp_path), "--ranks", "2", "--step_ms", "10", "--mem_bw", "1GB/s"))
    assert s.numel == L * (12 * C * C + 13 * C) + 320 * C + T * C + 2 * C and s.shape["block_size"] == T
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


# Every number plan takes, out of its range: the line names the option, the value and the range
# (each was taken before: --step_ms -100 made an efficiency of -37%, --vocab_size -5 a crash).
OUT_OF_RANGE = [("--step_ms", "-100", "more than 0"), ("--step_ms", "inf", "more than 0"),
                ("--cycle_ms", "-5", "at least 0"), ("--periodic_cycle_ms", "-50", "at least 0"),
                ("--overlap_steps", "-3", "at least 1"), ("--powersgd_min_compression", "-1", "at least 0"),
                ("--vocab_size", "-5", "at least 1"), ("--batch_size", "-2", "at least 1"),
                ("--global_batch_size", "-32", "at least 0"), ("--global_batch", "-32", "at least 0"),
                ("--mfu", "0", "more than 0 and at most 1"), ("--mfu", "1.5", "more than 0 and at most 1"),
                ("--measure", "2", "at least 3"), ("--measure_ranks", "0", "at least 1"),
                ("--max_loss_penalty", "-1", "at least 0"), ("--ranks", "0", "at least 1"),
                ("--ranks_per_host", "0", "at least 1"), ("--n_layer", "-1", "at least 1"),
                ("--n_head", "0", "at least 1"), ("--n_embd", "-8", "at least 1"), ("--block_size", "-8", "at least 1"),
                ("--log_interval", "0", "at least 1"), ("--jitter_ms", "-1", "at least 0")]


@pytest.mark.parametrize("flags, says", [
    (["--link", "25furlongs,20us"], "--link bandwidth '25furlongs' is not a rate"),
    (["--link", "25gbit,20parsecs"], "--link latency '20parsecs' is not a duration"),
    (["--link", "0gbit,20us"], "--link bandwidth '0gbit' is out of range: more than 0"),
    (["--link=25gbit,-20us"], "--link latency '-20us' is out of range: at least 0"),
    (["--intra_link", "0gbit,2us"], "--intra_link bandwidth '0gbit' is out of range: more than 0"),
    (["--mem_bw", "0GB/s"], "--mem_bw '0GB/s' is out of range: more than 0"),
    (["--fusion=-1M"], "--fusion '-1M' is out of range: at least 0"),
    (["--powersgd_rank", "0"], "--powersgd_rank '0' is not a comma list of positive whole numbers"),
    (["--gpu", "L40X"], "argument --gpu: 'L40X' is not a GPU hvdlm knows; it knows H100 SXM (or H100), H100 PCIe"),
    (["--ranks", "3", "--global_batch_size", "16"], "does not divide into --ranks 3"),
    (["--ranks", "12", "--ranks_per_host", "8"], "not a whole number of hosts"),
    *[([flag, value], f"argument {flag}: {value} is out of range: {allowed}") for flag, value, allowed in OUT_OF_RANGE],
])
def test_bad_input_is_one_error_line(flags, says, capsys):
    argv = ["plan", "--preset", "tiny", "--vocab_size", "256", "--step_ms", "10", "--ranks", "2", *flags]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr()
    assert exit_.value.code == 2
    assert err.out == "" and err.err.count("\n") == 1 and err.err.startswith("hvdlm: error:") and says in err.err


def test_gpu_is_its_exact_name_with_its_own_peak_and_memory(capsys):
    """--gpu matched the first table entry whose name it contained: L40 was the L4, H100 NVL the
    H100 SXM. Now a name is the GPU's own (case and hyphens aside), or an alias (H100 = H100 SXM)."""
    def peak_and_memory(name, precision="bf16"):
        s, _, source = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "2", "--gpu", name,
                                         "--mfu", "0.5", "--precision", precision))
        return round(s.flops / 0.5 / 1e9) * 1e9, s.mem_bw, source  # FLOP/s to the GFLOP/s: no float residue

    assert peak_and_memory("l40s")[:2] == (362.05e12, 0.864e12)
    assert peak_and_memory("L40")[:2] == (181.05e12, 0.864e12)  # not the L4's 121
    assert peak_and_memory("H100 NVL")[:2] == (835.5e12, 3.9e12)  # not the SXM's 989
    assert peak_and_memory("h100-sxm") == peak_and_memory("H100") == (989e12, 3.35e12, "H100 SXM bf16 at MFU 0.5")
    assert peak_and_memory("V100", "fp32")[:2] == (15.7e12, 0.9e12)
    with pytest.raises(SystemExit):
        main(["plan", "--preset", "tiny", "--ranks", "2", "--gpu", "V100", "--precision", "bf16"])
    assert capsys.readouterr().err == "hvdlm: error: --gpu V100 SXM2 has no bf16 tensor cores: give --precision fp32\n"


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


# --- GPU ranks under NCCL (hvdlm/plan/topology.py, nccl.py) and --calibrate (calibrate.py) ---

def test_topology_defaults_by_gpu_and_what_the_command_line_overrides():
    from hvdlm.plan import topology

    h100, a100, l4 = topology.fabric_for("H100"), topology.fabric_for("a100-sxm"), topology.fabric_for("L4")
    assert (h100.nics, h100.nic, h100.ring_busbw, h100.nvls_busbw) == (8, 47e9, 370e9, 480e9)  # nccl-tests#290, #212
    assert h100.network(8) == 8 * 47e9 and h100.network(2) == 2 * 47e9  # a GPU uses the NIC near it
    assert (a100.nvls_busbw, a100.nics, a100.nic, a100.intra) == (0.0, 8, 24e9, "nvlink")
    assert l4.intra == "pcie" and l4.nvls_busbw == 0 and l4.nics == 1
    assert all(where for _, where in h100.sources)
    with pytest.raises(HvdlmError, match="not a GPU hvdlm knows"):
        topology.fabric_for("H1000")
    with pytest.raises(HvdlmError, match="has no NVLink SHARP"):
        topology.override(a100, nvls="on")
    # --gpu H100 puts the plan on NCCL; --link then is one NIC a host; --fabric none keeps the CPU path
    base = ["--preset", "tiny", "--vocab_size", "256", "--ranks", "16", "--mem_bw", "10GB/s"]
    s, _, _ = setting(plan_args(*base, "--gpu", "H100"))
    assert s.cluster.fabric.nics == 8 and s.cluster.uncertainty == h100.uncertainty
    s, _, _ = setting(plan_args(*base, "--gpu", "H100", "--link", "25gbit,20us"))
    assert s.cluster.fabric.nics == 1 and s.cluster.fabric.nic == 25 * GBIT
    assert s.cluster.inter.latency == pytest.approx(20e-6)
    s, _, _ = setting(plan_args(*base, "--step_ms", "10", "--fabric", "none"))
    assert s.cluster.fabric is None and s.cluster.inter == Link(25 * GBIT, pytest.approx(20e-6))
    assert s.cluster.uncertainty == network.CPU_UNCERTAINTY


def test_nccl_picks_tree_for_small_messages_on_many_hosts_and_nvls_on_one_h100_host():
    from hvdlm.plan import nccl, topology

    f = topology.fabric_for("H100")
    # 1,024 ranks, 64 KB: the ring's 2(N-1) hops against the tree's 2((g-1) + log2 H)
    pick = nccl.choose(f, 1024, 8, 64 << 10)
    ring = min(c.seconds for c in nccl.candidates(f, 1024, 8, 64 << 10) if c.algorithm == "ring")
    assert pick.algorithm == "tree" and pick.seconds < ring / 10
    # by hand: the tree's LL latency, base 6.8 + 2 x (7 x 0.6 + log2(128) x 5.0) us (tuning.cc), and
    # the measured fill between hosts: 90 us once the pipeline's 16 MiB are full, here 1/256 of it
    ll = next(c for c in nccl.candidates(f, 1024, 8, 64 << 10) if c.label == "tree/LL")
    bw = max(max(2 * 65536 / (8 * 47e9), 2 * 65536 / 370e9) / 0.92 * 3.8, 2 * 1023 / 1024 * 65536 / 20.4e9)
    assert ll.seconds == pytest.approx((6.8 + 2 * (7 * 0.6 + 7 * 5.0) + 90 / 256) * 1e-6 + bw)
    # one H100 host, 1 GB: NVLS, at its quoted 480 GB/s busbw (algbw 480 x 8/14) plus one 25 us hop
    big = nccl.choose(f, 8, 8, 1 << 30)
    assert big.label == "nvls/Simple" and big.seconds == pytest.approx(25e-6 + (1 << 30) / (480e9 * 8 / 14))
    # the same host without NVLS: the ring, 2(n-1)/n x S / 370 GB/s + 8.4 + 14 x 3.4 us
    ring = nccl.choose(replace(f, nvls_busbw=0.0), 8, 8, 1 << 30)
    assert ring.label == "ring/Simple"
    assert ring.seconds == pytest.approx(2 * 7 / 8 * (1 << 30) / 370e9 + (8.4 + 14 * 3.4) * 1e-6)
    # PCIe hosts have neither LL128 nor NVLS (tuning.cc enables LL128 on NVLink only)
    assert {c.protocol for c in nccl.candidates(topology.fabric_for("L4"), 16, 8, 1 << 20)} == {"LL", "Simple"}
    # the table names the pair: 16 ranks of the fabric, 1 GB, is NVLS inside hosts and a tree between
    c = Cluster(16, 8, Link(8 * 47e9, 5e-6), Link(370e9, 3.4e-6), fabric=f)
    assert network.algorithm(c, 1 << 30) == "nvls_tree/Simple"
    assert network.allreduce(c, 1 << 30) == nccl.choose(f, 16, 8, 1 << 30).seconds


def test_horovod_hierarchical_allreduce_as_horovod_runs_it_over_nccl():
    """Horovod 0.28.1's NCCLHierarchicalAllreduce: NCCL reduce-scatter in the host, copy the GPU's
    1/g share to host memory, MPI_Allreduce between hosts, copy back, NCCL allgather."""
    from hvdlm.plan import nccl, topology

    f = topology.fabric_for("H100")
    s, g, mpi = 1 << 30, 8, 5e-6  # 4 hosts of 8
    rs = 7 / 8 * s / 370e9 + (8.4 + 7 * 3.4) * 1e-6
    copies = 2 * (s / g) / 57e9  # down and back at the PCIe 5.0 host copy rate (nvbandwidth#6)
    between = 2 * 3 / 4 * s / (8 * 47e9) + 2 * 3 * mpi
    assert nccl.horovod_hierarchical(f, 32, 8, s, mpi) == pytest.approx(2 * rs + copies + between)
    c = Cluster(32, 8, Link(8 * 47e9, mpi), Link(370e9, 3.4e-6), hierarchical=True, fabric=f)
    assert network.allreduce(c, s) == pytest.approx(2 * rs + copies + between)
    assert network.algorithm(c, s) == "hierarchical"
    # the copies and the wait make it slower than NCCL's own choice on this fabric
    assert network.allreduce(c, s) > nccl.choose(f, 32, 8, s).seconds


def all_reduce_perf(ranks_per_host, hosts, latency_us, busbw, sizes, dtypes=None):
    """all_reduce_perf's output in its own format (nccl-tests 2.13), for a link whose every size
    takes latency + 2(n-1)/n x S / busbw, in place and out of place alike; ``dtypes``: {type column:
    busbw} for a run of several (``-d all``), each type's rows after the other's."""
    n = ranks_per_host * hosts
    lines = [f"# nThread 1 nGpus 1 minBytes {sizes[0]} maxBytes {sizes[-1]} step: 2(factor) warmup iters: 5 "
             "iters: 20 agg iters: 1 validation: 1 graph: 0", "#", "# Using devices"]
    for r in range(n):
        lines.append(f"#  Rank {r:2d} Group  0 Pid {1000 + r:6d} on {'node%d' % (r // ranks_per_host):>10s} device "
                     f"{r % ranks_per_host:2d} [0x{r:02x}] NVIDIA H100 80GB HBM3")
    lines += ["#", "#" + " " * 62 + "out-of-place                       in-place",
              "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw"
              "   busbw #wrong",
              "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)"
              "  (GB/s)"]
    for dtype, bw in (dtypes or {"float": busbw}).items():
        for s in sizes:
            t = latency_us + 2 * (n - 1) / n * s / bw * 1e6
            alg = s / t / 1e3
            bus = alg * 2 * (n - 1) / n
            cell = f"{t:8.2f} {alg:7.2f} {bus:7.2f} {0:6d}"
            lines.append(f"{s:12d}  {s // 4:12d}  {dtype:>8s}     sum      -1 {cell} {cell}")
    lines += ["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 1.0", "#"]
    return "\n".join(lines) + "\n"


def test_calibrate_from_nccl_tests_output(tmp_path):
    from hvdlm.plan import calibrate

    sizes = [1 << k for k in range(20, 28)]  # 1 MB .. 128 MB, two ranges of four
    path = tmp_path / "ar.txt"
    path.write_text(all_reduce_perf(4, 2, 20.0, 100e9, sizes))
    (m,) = calibrate.read(str(path))
    assert (m.ranks, m.hosts, len(m.points), m.dtype) == (8, 2, 16, "fp32")
    cal = calibrate.from_files([str(path)])
    assert len(cal.bands) == 2
    for band in cal.bands:  # the fit recovers what made the table: 20 us and 100 GB/s busbw
        assert band.latency == pytest.approx(20e-6, rel=2e-3) and band.busbw == pytest.approx(100e9, rel=1e-3)
    # one rank count: all of the latency is hops, 20 us / 2(8-1)
    assert cal.overhead == 0.0 and cal.hop == pytest.approx(20e-6 / 14, rel=2e-3)
    assert cal.allreduce(64 << 20, 8) == pytest.approx(20e-6 + 2 * 7 / 8 * (64 << 20) / 100e9, rel=1e-3)
    assert cal.allreduce(64 << 20, 32) == pytest.approx(62 * 20e-6 / 14 + 2 * 31 / 32 * (64 << 20) / 100e9,
                                                        rel=1e-3)
    # two rank counts part the per-collective overhead (10 us) from the hop (1 us): a(n) = o + 2(n-1) h
    (tmp_path / "a4.txt").write_text(all_reduce_perf(4, 1, 10 + 6 * 1.0, 100e9, sizes))
    (tmp_path / "a8.txt").write_text(all_reduce_perf(4, 2, 10 + 14 * 1.0, 100e9, sizes))
    both = calibrate.from_files([str(tmp_path / "a4.txt"), str(tmp_path / "a8.txt")])
    assert both.overhead == pytest.approx(10e-6, rel=1e-2) and both.hop == pytest.approx(1e-6, rel=1e-2)
    # through the command line: the plan's allreduce is the fit's, labelled "measured"
    s, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "16", "--step_ms", "10",
                                "--mem_bw", "10GB/s", "--calibrate", str(path)))
    assert network.algorithm(s.cluster, 1 << 20) == "measured"
    assert network.allreduce(s.cluster, 64 << 20) == pytest.approx(cal.allreduce(64 << 20, 16))
    assert s.cluster.uncertainty == pytest.approx(0.10)  # an exact table: the floor
    bad = tmp_path / "bad.txt"
    bad.write_text("nothing here\n")
    with pytest.raises(HvdlmError, match="no all_reduce_perf table rows"):
        calibrate.read(str(bad))


def test_calibrate_from_hvdlm_bench_allreduce_json(tmp_path):
    from hvdlm.plan import calibrate

    rows = [{"backend": b, "bytes": s, "time_avg_us": (50 + s / 1e3) * (2 if b == "torch-gloo" else 1)}
            for s in (1 << 16, 1 << 18, 1 << 20, 1 << 22) for b in ("horovod", "torch-gloo", "memcpy")]
    (tmp_path / "allreduce.json").write_text(json.dumps({"meta": {"ranks": 4, "hosts": ["a", "b"]}, "rows": rows}))
    cal = calibrate.from_files([str(tmp_path / "allreduce.json")])
    (band,) = cal.bands  # horovod's rows: 50 us + 1 ns a byte, so busbw = 2 x 3/4 / 1e-9
    assert "horovod" in cal.source and cal.hosts == 2
    assert band.latency == pytest.approx(50e-6) and band.busbw == pytest.approx(1.5e9)


def test_calibrate_fits_each_dtype_apart(tmp_path):
    """Gloo and MPI sum fp16 on the CPU: a file with fp32 and fp16 rows (all_reduce_perf -d all, or
    `hvdlm bench allreduce --dtypes all`) is two fits, and the plan prices fp16 gradients by fp16's."""
    from hvdlm.plan import calibrate

    sizes = [1 << k for k in range(20, 24)]
    path = tmp_path / "all.txt"
    path.write_text(all_reduce_perf(1, 4, 100.0, 0, sizes, dtypes={"float": 2e9, "half": 0.5e9, "bfloat16": 1e9}))
    assert sorted(m.dtype for m in calibrate.read(str(path))) == ["bf16", "fp16", "fp32"]
    cal = calibrate.from_files([str(path)])
    assert cal.dtype == "fp32" and set(cal.dtypes) == {"fp32", "fp16", "bf16"}
    for dtype, bw in (("fp32", 2e9), ("fp16", 0.5e9), ("bf16", 1e9)):
        (band,) = cal.of(dtype).bands
        assert band.busbw == pytest.approx(bw, rel=1e-3) and band.latency == pytest.approx(100e-6, rel=1e-2)
        assert cal.allreduce(8 << 20, 4, dtype) == pytest.approx(100e-6 + 1.5 * (8 << 20) / bw, rel=1e-3)
    assert cal.allreduce(8 << 20, 4, "fp64") == cal.allreduce(8 << 20, 4)  # not measured: fp32's per byte
    # the plan: fp16 gradients (half the bytes, at a quarter of the rate) take twice fp32's exchange
    s, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "4", "--ranks_per_host", "1",
                                "--step_ms", "10", "--mem_bw", "10GB/s", "--calibrate", str(path)))
    assert network.allreduce(s.cluster, 4 << 20, "fp16") == pytest.approx(cal.allreduce(4 << 20, 4, "fp16"))
    fp32, fp16 = predict(s, Method("none")), predict(s, Method("fp16"))
    assert fp16.exchange > 1.5 * fp32.exchange
    fp32_only = tmp_path / "fp32.txt"
    fp32_only.write_text(all_reduce_perf(1, 4, 100.0, 2e9, sizes))
    s32, _, _ = setting(plan_args("--preset", "tiny", "--vocab_size", "256", "--ranks", "4", "--ranks_per_host", "1",
                                  "--step_ms", "10", "--mem_bw", "10GB/s", "--calibrate", str(fp32_only)))
    assert predict(s32, Method("none")).exchange == pytest.approx(fp32.exchange)
    assert predict(s32, Method("fp16")).exchange < fp32.exchange  # fp16 priced as fp32: half the bytes
    # hvdlm bench allreduce's JSON: the same, by its dtype field
    rows = [{"backend": "horovod", "dtype": d, "bytes": b, "time_avg_us": 50 + b * k / 1e3}
            for b in (1 << 16, 1 << 18, 1 << 20, 1 << 22) for d, k in (("fp32", 1), ("fp16", 4))]
    (tmp_path / "allreduce.json").write_text(json.dumps({"meta": {"ranks": 4, "hosts": ["a", "b"]}, "rows": rows}))
    cal = calibrate.from_files([str(tmp_path / "allreduce.json")])
    assert cal.peak == pytest.approx(1.5e9) and cal.of("fp16").peak == pytest.approx(1.5e9 / 4)


def test_h100_host_against_published_nccl_tests_figures():
    """The H100 defaults against published all_reduce_perf runs (docs/plan.md's check): one host,
    8 GB, NVLS: 479-480 GB/s (nccl-tests#347); NCCL_ALGO=RING at 4 GB: 365-370 GB/s (nccl#1455);
    two hosts of 8 x 400G, 4 GB, NVLS on: 430 GB/s (nccl#1221)."""
    from hvdlm.plan import nccl, topology

    f = topology.fabric_for("H100")

    def busbw(n, nbytes, algorithm=None):
        pairs = [c for c in nccl.candidates(f, n, 8, nbytes) if algorithm in (None, c.algorithm)]
        return nccl.busbw(nbytes, n, min(c.seconds for c in pairs))

    assert busbw(8, 8 << 30) == pytest.approx(480e9, rel=0.05)
    assert busbw(8, 4 << 30, "ring") == pytest.approx(367.5e9, rel=0.05)
    assert busbw(16, 4 << 30) == pytest.approx(430e9, rel=0.05)
