"""Finding the text files to train on: the user's inputs, or the default corpus every Python has."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from hvdlm.errors import HvdlmError

# not library code (third-party packages, test suites, the IDLE app, a deprecated converter), not
# source, or generated tables (encodings/: 1.4 MB of code-page maps that would skew a code model)
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "__pycache__",
              "encodings"}


def default_corpus_files(max_bytes: int = 8_000_000) -> list[Path]:
    """The standard library's own .py sources, sorted, taken in order while they fit in max_bytes.

    Every machine with Python has them, so prepare works without a download; the list is the
    same on every run of a given Python installation.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        paths += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    if not paths:
        raise HvdlmError(f"no Python standard library sources found under {root}; pass text files or directories to prepare")
    files, total = [], 0
    for path in sorted(paths):
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    return files


def _is_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(8192)
    except OSError as e:
        raise HvdlmError(f"cannot read {path}: {e.strerror or e}") from e


def collect_text_files(inputs: list[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, sorted, hidden entries skipped) into text files.

    Files with a NUL byte in their first 8 KB are taken to be binary and skipped.
    """
    if isinstance(inputs, (str, Path)):  # a lone path would otherwise be iterated character by character
        inputs = [inputs]
    files: list[Path] = []
    for inp in inputs:
        path = Path(inp)
        if path.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
            files += sorted(p for p in found if p.is_file())  # drops sockets, fifos, broken links
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise HvdlmError(f"input {path} is neither a regular file nor a directory")
        else:
            raise HvdlmError(f"input {path} does not exist; check the path")
    files = [p for p in files if not _is_binary(p)]
    if not files:
        raise HvdlmError(f"no text files found in {', '.join(str(i) for i in inputs) or '(no inputs)'}")
    return files
