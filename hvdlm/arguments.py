"""The command line's parser class: every option spelled out in full (argparse's prefix matching
would take ``--max_step 5`` as ``--max_steps``), a bad value, choice or missing option as one
``hvdlm: error:`` line (not a usage block), printed once by rank 0 and exit status 2 on every rank,
a number outside its option's range refused the same way (``ranged``), and an earlier spelling of
an option taken with a one-line note (``renamed``). Subcommands' parsers
are of the same class (``add_subparsers`` makes them so)."""

from __future__ import annotations

import argparse
import math
import sys

from hvdlm import launcher


class Parser(argparse.ArgumentParser):
    help_hint = ""  # the command whose --help to point at, where this parser's own prog is too general

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if launcher.rank() == 0:
            print(f"hvdlm: error: {message} (`{self.help_hint or self.prog} --help` lists the options)",
                  file=sys.stderr, flush=True)
        sys.exit(2)


def command_of(argv: list[str]) -> str:
    """'hvdlm train' for ['train', '--max_step', '5']; 'hvdlm bench sync' for a benchmark."""
    words = argv[:2] if argv[:1] == ["bench"] else argv[:1]
    return " ".join(["hvdlm", *(w for w in words if not w.startswith("-"))])


class _Renamed(argparse.Action):
    """An old spelling: sets the new option's value and says the new name once."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        if launcher.rank() == 0:
            print(f"hvdlm: note: {option_string} is now spelled {self.new}", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, values)


def renamed(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` for the option ``new`` (already added), hidden from --help, with a note."""
    action = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=action.dest, type=action.type, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                        action=_Renamed, new=new)


def ranged(kind: type, low: float, high: float | None = None, above: bool = False):
    """An argparse ``type``: a ``kind`` (int or float) of at least ``low`` (more than it with
    ``above``) and at most ``high``. A value outside is refused while parsing, as one line that
    names the option, the value and the range; NaN and infinity too (an infinite step time, or a
    NaN one that no comparison catches, would make a table of them). A default outside the range
    (0 for "not given") is never passed through a type, so it stays a default only."""
    def convert(text: str):
        value = kind(text)  # a ValueError here is argparse's own "invalid int value: 'x'"
        if not (math.isfinite(value) and (value > low if above else value >= low)
                and (high is None or value <= high)):
            allowed = f"{'more than' if above else 'at least'} {low:g}"
            if high is not None:
                allowed += f" and at most {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {allowed}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type by it: "invalid float value"
    return convert
