"""Lines for people: each printed in one write.

Launchers (horovodrun, mpirun, srun) read each rank's output and tag every line they see. Python's
``print`` writes the text and the newline separately, and with unbuffered output (launchers set
PYTHONUNBUFFERED) they reach the pipe as two writes: the launcher then puts the next line's tag
at the end of this one. ``say`` hands the whole line, newline included, to one write.
"""

from __future__ import annotations

import sys


def say(text: str, file=None) -> None:
    out = file or sys.stdout
    out.write(text + "\n")
    out.flush()
