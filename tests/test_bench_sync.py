"""hvdlm bench sync runs each method for real with 2 ranks and reports bytes, tokens/s and val loss."""

import json

import pytest

from support.cluster import CLUSTER, in_host
from support.launch import HVDLM, check, launch
from hvdlm.bench.output import read_csv


# The tiny preset's trainable parameters at vocab 256, counted as GPT-2 counts them (no biases, the
# head tied to the token embedding): embeddings, 12 d^2 per layer, two LayerNorms per layer and a
# final one. fp32 gradients: 4 bytes each; a 2-rank ring allreduce sends each rank's whole share once.
V, T, L, D = 256, 128, 4, 128
TINY_PARAMS = V * D + T * D + L * (12 * D * D + 2 * D) + D
GRAD_BYTES = 4 * TINY_PARAMS


def test_bench_sync_compares_methods(corpus, tmp_path):
    out = tmp_path / "bench"
    # Steps of ~0.1 s (not the few ms of a smaller batch) let the counters be read at the steps they
    # belong to. The shaped links are test_bench_sync_on_a_shaped_link_of_the_test_cluster's.
    cmd = [
        HVDLM, "bench", "sync", "--data_dir", str(corpus), "--preset", "tiny", "--block_size", "128",
        "--global_batch_size", "16", "--steps", "24", "--lr_warmup", "2", "--warmup", "2", "--eval_interval", "8",
        "--eval_sequences", "8", "--methods", "none,powersgd,diloco,diloco-bf16,diloco-bf16-overlap", "--sync_every", "4",
        "--powersgd_rank", "2", "--tx_bytes_cmd", "cat /sys/class/net/lo/statistics/tx_bytes", "--poll", "0.01",
        "--out_dir", str(out)]
    run = check(launch("single", cmd, timeout=600))
    rows = {r["method"]: r for r in read_csv(out / "sync.csv")}
    assert sorted(rows) == sorted(["none", "powersgd", "diloco", "diloco-bf16", "diloco-bf16-overlap"]), run.output
    for r in rows.values():
        assert r["link"] == "free" and r["steps"] == 24 and r["tokens"] == 24 * 16 * 128, r
        assert r["tokens_per_s"] > 0 and r["val_loss"] > 0 and r["bytes_per_step_tx"] > 0, r
    none, psgd = rows["none"], rows["powersgd"]
    diloco, diloco16 = rows["diloco"], rows["diloco-bf16"]
    # the ranks' own count over whole sync periods: PowerSGD's factors after its plain start (steps
    # 2-23), DiLoCo's one exchange in 4 steps, in 16 bits half of that
    assert in_window(psgd, 2, 1, 23) and in_window(diloco, 4, 4, 23)
    assert none["bytes_per_step_computed"] == pytest.approx(GRAD_BYTES, rel=1e-6)
    assert psgd["bytes_per_step_computed"] < GRAD_BYTES / 2
    assert diloco["bytes_per_step_computed"] == pytest.approx(GRAD_BYTES / 4, rel=1e-6)
    assert diloco16["bytes_per_step_computed"] == pytest.approx(GRAD_BYTES / 8, rel=1e-6)
    # both ranks send on this machine's lo: at least their two shares each step, as the kernel counted
    # (only a lower bound: lo also carries whatever else runs here; the test cluster's links, below,
    # carry only the run's). The counter is polled while the ranks train: the first reading may
    # come after the next step has begun sending, the last before its own step has finished, so up to
    # a step's bytes at each end of the window go uncounted (seen: 1.83 of 2 shares over 21 steps).
    a, b = map(int, none["window"].split("-"))
    assert none["bytes_per_step_tx"] >= 2 * GRAD_BYTES * (b - a - 2) / (b - a), none
    # the loss, from each run's own metrics.jsonl (its last evaluation): DiLoCo is not the every-step average
    last = {m: [json.loads(x) for x in open(out / "runs" / f"free-{m}" / "metrics.jsonl")] for m in ("none", "diloco")}
    last = {m: [x["val_loss"] for x in rows_ if x["kind"] == "eval"][-1] for m, rows_ in last.items()}
    assert (diloco["val_loss"], none["val_loss"]) == (last["diloco"], last["none"])
    assert diloco["val_loss_vs_none"] == pytest.approx(last["diloco"] / last["none"] - 1)
    assert diloco["val_loss"] != none["val_loss"]
    # overlapped (--overlap_steps 2, half of H): the same exchanges, applied two steps later
    behind = rows["diloco-bf16-overlap"]
    assert behind["bytes_per_step_computed"] == diloco16["bytes_per_step_computed"]
    assert behind["val_loss"] != diloco16["val_loss"]
    assert "MB/step (tx counters)" in run.stdout and (out / "sync.png").stat().st_size > 1000
    assert not list((out / "runs").rglob("checkpoint*.pt"))  # the runs' checkpoints are not kept
    evals = json.loads((out / "sync.json").read_text())["rows"][0]["evals"]  # (step, seconds, val loss)
    assert [e[0] for e in evals] == [0, 8, 16, 24]
    # an interrupted benchmark keeps its finished runs (same flags): nothing is trained again
    (out / "runs" / "free-powersgd" / "row.json").unlink()
    again = check(launch("single", [*cmd, "--reuse"], timeout=600))
    assert again.stdout.count("kept from") == 4 and "[free] powersgd ..." in again.stdout, again.output
    assert len(read_csv(out / "sync.csv")) == 5


RATE_MBIT = 10  # hvdnode2's link: 1.25 MB/s each way, a fp32 gradient of tiny in ~2.7 s


def test_bench_sync_on_a_shaped_link_of_the_test_cluster(slurm_cluster, corpus, tmp_path):
    """Two hosts of the test cluster, hvdnode2's link shaped with tc tbf (slurm/cluster.sh slow). The
    hosts' own interface counters show the gradient crossing the link each step (and an eighth of it
    for DiLoCo in bf16 every 4 steps); the shaped steps go no faster than the link rate allows for
    the bytes counted; the losses are the free link's."""
    out = tmp_path / "bench"
    ns = "bash " + str(CLUSTER)
    run = check(launch("single", [
        HVDLM, "bench", "sync", "--data_dir", str(corpus), "--preset", "tiny", "--block_size", "128",
        "--global_batch_size", "8", "--steps", "16", "--lr_warmup", "2", "--warmup", "2", "--eval_interval", "4",
        "--eval_sequences", "8", "--methods", "none,diloco-bf16", "--sync_every", "4", "--shaped_window", "8",
        "--links", f"free,{RATE_MBIT}mbit", "--hosts", "hvdnode1:1,hvdnode2:1", "--via", f"{ns} exec hvdnode1",
        "--slow_cmd", f"{ns} slow hvdnode2 {{rate}}", "--heal_cmd", f"{ns} heal hvdnode2",
        "--tx_bytes_cmd", "ip netns exec {host} cat /sys/class/net/eth0/statistics/tx_bytes",
        "--poll", "0.01", "--out_dir", str(out)], timeout=600))
    rows = {(r["link"], r["method"]): r for r in json.loads((out / "sync.json").read_text())["rows"]}
    link = f"{RATE_MBIT}mbit"
    assert set(rows) == {(x, m) for x in ("free", link) for m in ("none", "diloco-bf16")}, run.output
    for (x, m), r in rows.items():
        hosts = r["bytes_per_step_tx_by_host"]
        assert set(hosts) == {"hvdnode1", "hvdnode2"}, r
        # each host sends its share of the exchange each step: at least the payload (headers and
        # retransmissions only add), and not twice it. The counters are read just after a sync's
        # record, when the next exchange may already be sending (Horovod starts it during backward):
        # the window's first read may hold up to one exchange more, so its mean may fall short by one
        # exchange over the window's steps (at 10 Mbit/s a read 30 ms late is ~1% of a step's bytes).
        payload = GRAD_BYTES if m == "none" else GRAD_BYTES / 8
        every = 1 if m == "none" else 4
        a, b = map(int, r["window"].split("-"))
        early = payload * every / (b - a)
        for host, sent in hosts.items():
            assert payload - early <= sent <= 1.5 * payload, (x, m, host, sent, payload, r)
    # shaped runs stop once their window holds 8 steps: window start + 8 + the last step
    slow, slow16 = rows[link, "none"], rows[link, "diloco-bf16"]
    assert (slow["steps"], slow16["steps"]) == (11, 13), (slow, slow16)
    assert slow["same_as_free"] is True and slow16["same_as_free"] is True
    # the rate bound: what hvdnode2 sent per step through a 10 Mbit/s tbf (its 256 KB burst aside)
    # takes at least this long, however idle or loaded the machine
    tokens_per_step = 8 * 128
    window_steps = [int(i) for i in slow["window"].split("-")]
    burst = 256 * 1024 / (window_steps[1] - window_steps[0])
    fastest = tokens_per_step * (RATE_MBIT * 1e6 / 8) / (slow["bytes_per_step_tx_by_host"]["hvdnode2"] - burst)
    assert slow["tokens_per_s"] <= fastest, (slow, fastest)
    # and the bound bites: unshaped, the same steps went faster than the shaped link allows
    assert rows["free", "none"]["tokens_per_s"] > 1.5 * fastest, (rows["free", "none"], fastest)
    # healed at the end: no tbf left on hvdnode2's link
    assert "tbf" not in in_host("hvdnode2", "tc", "qdisc", "show", "dev", "eth0").stdout


def in_window(row: dict, start: int, every: int, last: int) -> bool:
    """The byte window spans the syncs at which the poller read the counters. Which ones it catches
    depends on the machine's speed (two train records may land between two looks), so only its
    bounds are fixed: from a sync at or after ``start`` to a later one at or before ``last``."""
    a, b = map(int, row["window"].split("-"))
    assert start <= a < b <= last and a % every == b % every == 0, row["window"]
    return True


def test_bench_sync_without_slow_cmd_says_so_and_refuses_shaped_only(corpus, tmp_path):
    run = launch("single", [HVDLM, "bench", "sync", "--data_dir", str(corpus), "--links", "100mbit",
                            "--out_dir", str(tmp_path)], timeout=120)
    assert run.returncode != 0
    assert "no --slow_cmd: measuring the free link only (not 100mbit)" in run.stdout
    assert "hvdlm: error: nothing to measure" in run.output and "Traceback" not in run.output


def test_the_figure_shares_one_loss_axis_with_the_free_links_none_in_every_panel(tmp_path):
    from hvdlm.bench.output import plot_panels
    from hvdlm.bench.sync_plot import REFERENCE, loss_panels

    def row(link, method, losses, seconds_per_step, steps=24):
        return {"link": link, "method": method, "steps": steps, "tokens": steps * 100, "same_as_free": True,
                "tokens_per_s": 100 / seconds_per_step, "evals": [(s, s * seconds_per_step, v) for s, v in losses]}

    free_none = [(0, 5.5), (8, 3.0), (16, 2.5), (24, 2.2)]
    rows = [row("free", "none", free_none, 0.125),
            row("free", "diloco", [(0, 5.5), (8, 3.1), (16, 2.6), (24, 2.3)], 0.125),
            row("10mbit", "none", free_none[:2], 2.0, steps=11),
            row("10mbit", "diloco", [(0, 5.5), (8, 3.1)], 0.5, steps=13)]
    free, slow = loss_panels(rows)
    assert (free.title, slow.title) == ("link: free", "link: 10mbit")
    assert REFERENCE not in free.series and free.series["none"] == ([1.0, 2.0, 3.0], [3.0, 2.5, 2.2])
    # the shaped link's panel: its runs, their projections, and the free link's none as it ran there
    assert slow.series[REFERENCE] == free.series["none"]
    assert set(slow.series) == {"none", "none (projected)", "diloco", "diloco (projected)", REFERENCE}
    assert slow.series["diloco (projected)"] == ([4.0, 8.0, 12.0], [3.1, 2.6, 2.3])  # 0.5 s a step from step 8
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    real = plt.subplots
    plt.subplots = lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    try:
        plot_panels(tmp_path / "sync.png", [free, slow], sharey=True)
    finally:
        plt.subplots = real
    axes = made[0][1].flat
    assert axes[0].get_ylim() == axes[1].get_ylim()  # one loss axis for every link
    assert (tmp_path / "sync.png").stat().st_size > 1000
