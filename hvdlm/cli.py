"""``hvdlm prepare | train | elastic | sample | plot | export | preflight | bench | plan``: the command line.

Problems a user can fix end with one line, ``hvdlm: error: ...``, printed once (by rank 0) and
exit status 2 on every rank; anything unexpected prints one line naming the rank and host and
exits 1, with the traceback in ``<out_dir>/error-rank<N>.log``. A rank that ends because a peer
died, stalled or was cut off (or because it stalled itself) exits 3 (``watchdog.EXIT_STALLED``);
of all ranks, one prints the line that names the cause (hvdlm/watchdog/). Exit statuses:
0 done, 1 crashed, 2 bad input, 3 stalled or lost a peer, 75 stopped on a signal (resumable).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import traceback
from pathlib import Path

from hvdlm import launcher
from hvdlm.arguments import Parser, command_of, renamed
from hvdlm.errors import HvdlmError
from hvdlm.units import parse_bytes

# Stopped early on SIGUSR1/SIGTERM with a checkpoint: run again to resume (EX_TEMPFAIL).
EXIT_RESUMABLE = 75


def cmd_prepare(args: argparse.Namespace) -> None:
    import time

    from hvdlm.data import prepare

    start = time.perf_counter()
    meta = prepare(args.inputs or None, args.out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   val_fraction=args.val_fraction, workers=args.workers, seed=args.seed, text_field=args.text_field,
                   bpe_sample_bytes=args.bpe_sample_bytes, shard_bytes=args.shard_bytes, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    src, tokens = meta["sources"], meta["train_tokens"] + meta["val_tokens"]
    print(f"hvdlm: wrote {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']['kind']}, vocab {meta['vocab_size']}) from {src['documents']:,} documents in "
          f"{src['files']} files to {args.out_dir} in {seconds:.1f} s "
          f"({tokens / seconds:,.0f} tokens/s, {src['bytes'] / seconds / 1e6:.1f} MB/s)")


def byte_count(text: str) -> int:
    """'128M' -> 134217728 (K, M, G binary), for command-line sizes."""
    try:
        value = parse_bytes(text, "")
    except HvdlmError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count (examples: 65536, 256K, 128M, 1G)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def cmd_train(args: argparse.Namespace) -> None:
    from hvdlm.config import config_from_args
    from hvdlm.train import train

    try:
        cfg = config_from_args(args)
    except HvdlmError as e:  # every rank parses the same command line
        raise HvdlmError(str(e), everywhere=True) from None
    if cfg.distributed.elastic:
        from hvdlm.elastic import train_elastic

        train = train_elastic  # noqa: F811  (ranks come and go: elastic.py)
    if train(cfg)["stopped_by"]:
        sys.exit(EXIT_RESUMABLE)


def cmd_elastic(args: argparse.Namespace) -> None:
    """Check the elastic range and the discovery script, then become horovodrun."""
    from hvdlm.config import config_from_args
    from hvdlm.elastic import given_options, launch_command

    cfg = config_from_args(args)
    cmd = launch_command(cfg, given_options(args), args.np, args.network_interface, args.host_cooldown,
                         args.config)
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


def cmd_sample(args: argparse.Namespace) -> None:
    from hvdlm.sample import sample_from_checkpoint

    for text in sample_from_checkpoint(args.out_dir, args.prompt, args.tokens, args.num_samples,
                                       args.temperature, args.top_k, args.seed, args.data_dir):
        print(text)
        print("-" * 40)


def cmd_plot(args: argparse.Namespace) -> None:
    from hvdlm.plot import plot_runs

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    print(f"hvdlm: wrote {plot_runs(args.run_dirs, args.out, labels, args.title)}")


def cmd_export(args: argparse.Namespace) -> None:
    from hvdlm.export import export_hf

    written = export_hf(args.out_dir, args.dest, args.data_dir)
    print(f"hvdlm: wrote {', '.join(written)} to {args.dest}; load it with "
          f"transformers.GPT2LMHeadModel.from_pretrained({str(args.dest)!r})")


def cmd_preflight(args: argparse.Namespace) -> None:
    from hvdlm.preflight import run, settings_from_args

    run(settings_from_args(args))


def build_parser(prepare_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with ``prepare_only``, just `hvdlm prepare`, which then runs
    without importing torch (the other commands' options need it, and it is slow to import)."""
    parser = Parser(prog="hvdlm", description="Train GPT-style language models with Horovod.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenize text or JSONL files into train/val shards",
                       description="Tokenize text files, JSON Lines files (.jsonl) and folders of them, plain or "
                                   "compressed (.gz, .bz2, .xz, .zst), into train/val token shards + meta.json, "
                                   "streaming: memory stays flat however large the corpus. "
                                   "With no inputs, uses the Python standard library's sources.")
    p.add_argument("inputs", nargs="*", help="files or folders (default: the embedded stdlib corpus)")
    p.add_argument("--out_dir", default="data/default", help="where the shards go (default: data/default)")
    p.add_argument("--tokenizer", default="byte", metavar="{byte,char,bpe,gpt2,DIR}",
                   help="byte, char, bpe (learned from the corpus), gpt2 (tiktoken's), or a model folder's "
                        "tokenizer.json / vocab.json + merges.txt, to continue that model (default: byte)")
    p.add_argument("--vocab_size", type=int, default=4096, help="BPE vocabulary size (default: 4096)")
    p.add_argument("--val_fraction", type=float, default=0.05,
                   help="share of documents drawn for validation (default: 0.05)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: cores, at most 8; byte tokens use none up to 2)")
    p.add_argument("--seed", type=int, default=1337,
                   help="seed of the train/val split by document and of the BPE sample (default: 1337)")
    p.add_argument("--text_field", default="text", help="the JSONL field that holds the text (default: text)")
    p.add_argument("--bpe_sample_bytes", type=byte_count, default="16M",
                   help="BPE learns from a seeded sample of about this much text; training it needs about 9x "
                        "that in memory (default: 16M)")
    p.add_argument("--shard_bytes", type=byte_count, default="1G",
                   help="largest token shard; a bigger split is written as several (default: 1G)")
    p.set_defaults(func=cmd_prepare)
    if prepare_only:
        return parser

    from hvdlm.config import add_config_args

    p = sub.add_parser("train", help="train a GPT (launch with horovodrun, mpirun or srun for several ranks)",
                       description="Train a GPT with Horovod data parallelism. One process trains alone; "
                                   "launch N with `horovodrun -np N`, `mpirun -np N` or `srun`.")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("elastic", help="train under Horovod elastic: ranks may leave and join (starts horovodrun)",
                       description="Check the elastic range (--min_ranks, --max_ranks) and --discovery_script, then "
                                   "start `horovodrun --min-np --max-np --host-discovery-script` with `hvdlm train "
                                   "--elastic true` on every rank. Takes every `hvdlm train` option.")
    add_config_args(p)
    p.add_argument("--np", type=int, default=0, help="ranks to start with (default: max_ranks, or all discovered slots)")
    p.add_argument("--network_interface", default="",
                   help="the NIC the ranks talk over (horovodrun --network-interface); needed when the job starts "
                        "on one host: lo on one machine")
    p.add_argument("--host_cooldown", type=int, default=60,
                   help="a host whose rank failed may join again after 2-3x this many seconds, twice as long "
                        "after each further failure (Horovod's blacklist cooldown; default: 60)")
    p.set_defaults(func=cmd_elastic)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--out_dir", default="out/default", help="training output folder holding checkpoint.pt")
    p.add_argument("--data_dir", default=None, help="tokenizer data (default: the one the run trained on)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--sample_tokens", dest="tokens", type=int, default=300, help="tokens to generate (default: 300)")
    renamed(p, "--tokens", "--sample_tokens")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=200, help="sample among the k likeliest tokens; 0 = all")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("plot", help="plot train and val loss of one or more runs into a PNG",
                       description="Train and validation loss against step, tokens seen and wall time, from each "
                                   "run's metrics.jsonl, several runs overlaid.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="out_dir of a training run")
    p.add_argument("--out", default="loss.png", metavar="FILE.png", help="image to write (default: loss.png)")
    p.add_argument("--labels", default="", help="comma list of legend names (default: the folder names)")
    p.add_argument("--title", default="", help="title above the plots")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face transformers model",
                       description="Write the checkpoint in --out_dir as a folder that "
                                   "transformers.GPT2LMHeadModel.from_pretrained(DEST) loads (config.json, "
                                   "model.safetensors, and the tokenizer). Needs `pip install -e .[hf]`.")
    p.add_argument("dest", metavar="DEST", help="folder to write")
    p.add_argument("--out_dir", default="out/default", help="training output folder holding checkpoint.pt")
    p.add_argument("--format", default="hf", choices=["hf"], help="hf: Hugging Face GPT-2 (default)")
    p.add_argument("--data_dir", default=None, help="tokenizer data (default: the one the run trained on)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("preflight", help="check the network of an allocation before training (launch like training)",
                       description="Time point-to-point exchanges between every pair of ranks and a Horovod "
                                   "allreduce; name the slow ranks and exit 2 when below the thresholds. "
                                   "Launch over MPI: `srun hvdlm preflight`, `mpirun -np N hvdlm preflight`.")
    p.add_argument("--size", default="4M", help="bytes per message, K/M/G binary (default: 4M)")
    p.add_argument("--iters", type=int, default=5, help="timed exchanges per pair and allreduces (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed ones before them (default: 1)")
    p.add_argument("--min_busbw", type=float, default=0.0,
                   help="fail when the allreduce busbw is below this, in GB/s (default: 0 = only report)")
    p.add_argument("--min_p2p", type=float, default=None,
                   help="fail when a rank's point-to-point GB/s is below this (default: --min_busbw)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a partner before naming it and ending the job (default: 60)")
    p.add_argument("--device", default="auto", help="allreduce buffer: auto (GPU if any), cpu or cuda")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every figure to this JSON file")
    p.set_defaults(func=cmd_preflight)

    from hvdlm.bench.commands import add_bench_parser
    add_bench_parser(sub)

    from hvdlm.plan.command import add_plan_parser
    add_plan_parser(sub)
    return parser


def report_crash(args: argparse.Namespace, rank: int, exc: BaseException) -> int:
    """One line on stderr, from one rank; the traceback in a log file next to the run's output.
    Returns the exit status: 1 when this rank failed, 3 when a peer did (the watchdog's)."""
    from hvdlm import watchdog

    host = socket.gethostname()
    if getattr(args, "out_dir", None):
        log_dir, log = Path(args.out_dir), Path(args.out_dir) / f"error-rank{rank}.log"
    else:  # a command with no out_dir: not into the working folder
        log_dir = Path(tempfile.gettempdir())
        log = log_dir / f"hvdlm-{args.command}-error-rank{rank}.log"
    peer_failure = "horovod" in sys.modules and _is_peer_failure(exc)
    verdict = None
    if peer_failure and watchdog.current() is not None:
        # Which peer went away, and whether it already said why (then this rank keeps quiet).
        verdict = watchdog.current().explain_peer_failure()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log.write_text((f"{verdict.cause}\n\n" if verdict else "") + "".join(traceback.format_exception(exc)))
        where = f" (traceback in {log})"
    except OSError:
        where = ""
        traceback.print_exception(exc)
    if peer_failure:
        if verdict is not None and verdict.line is None:
            return watchdog.EXIT_STALLED  # the failed rank, or the rank that reports it, says why
        if verdict is not None and verdict.line:
            print(verdict.line, file=sys.stderr, flush=True)
            return watchdog.EXIT_STALLED
        what = "stopped: another rank failed or left during a collective (its message names the cause)"
        from hvdlm.distributed import gloo_timeout_ms  # horovod is loaded: this is a peer failure

        timeout = gloo_timeout_ms(exc)
        if timeout is not None:
            what = (f"stopped: a collective ran past Gloo's timeout of {timeout / 1000:g} s: the link is too slow "
                    "for what the ranks exchange at once (or a rank stopped answering); on a slow link set "
                    "HOROVOD_GLOO_TIMEOUT_SECONDS higher (docs/communication.md)")
        print(f"hvdlm: rank {rank} on {host} {what}{where}", file=sys.stderr, flush=True)
        return watchdog.EXIT_STALLED
    message = f"{type(exc).__name__}: {exc}"
    farewell(f"failed: {message}")
    print(f"hvdlm: rank {rank} on {host} failed: {message}{where}", file=sys.stderr, flush=True)
    return 1


def farewell(why: str) -> None:
    """Tell the other ranks (through the watchdog) why this rank is leaving, so they stay quiet."""
    if "hvdlm.watchdog" in sys.modules:
        from hvdlm import watchdog

        if watchdog.current() is not None:
            watchdog.current().stop(why)


def _is_peer_failure(exc: BaseException) -> bool:
    from hvdlm.distributed import is_peer_failure

    return is_peer_failure(exc)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["train"], ["elastic"]):
        from hvdlm import stop_signals

        stop_signals.install()  # before torch and Horovod load: a signal now must not kill the rank
    parser = build_parser(prepare_only=argv[:1] == ["prepare"])
    parser.help_hint = command_of(argv)  # an unknown option is found by the top parser, after the subcommand's
    args = parser.parse_args(argv)
    rank = launcher.rank()
    try:
        args.func(args)
    except HvdlmError as e:
        farewell("done" if e.everywhere else f"error: {e}")
        if rank == 0 or not e.everywhere:
            print(f"hvdlm: error: {e}", file=sys.stderr, flush=True)
        if not e.everywhere and "horovod" in sys.modules:
            sys.stdout.flush()  # one rank alone: the others may wait in a collective (see below)
            os._exit(2)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `hvdlm plan ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush into the pipe
        print("hvdlm: error: the output was closed before all of it was written (a closed pipe)", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if args.command not in SINGLE_PROCESS or not e.filename:
            crash_exit(args, rank, e)
        print(f"hvdlm: error: cannot use {e.filename}: {e.strerror or e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as e:
        crash_exit(args, rank, e)


# Commands one process runs, with no collective: a file they cannot read or write is the user's to
# fix (a path into a file, a full disk), one line, not a crash.
SINGLE_PROCESS = ("prepare", "plot", "export", "sample", "plan")


def crash_exit(args: argparse.Namespace, rank: int, exc: BaseException) -> None:
    code = report_crash(args, rank, exc)
    sys.stdout.flush()
    # Skip interpreter teardown: Horovod's background thread may be mid-collective, and a clean
    # exit could wait on it; the launcher sees the non-zero status and stops the other ranks.
    os._exit(code)


if __name__ == "__main__":
    main()
