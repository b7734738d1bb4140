"""The one exception type for problems a user can fix (bad input, bad config, missing data).

The CLI prints it as a single line, ``hvdlm: error: <message>``, and exits with status 2 on every
rank; anything else is a bug or a fault and is reported with its traceback in a log file.
"""


class HvdlmError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    ``everywhere`` is True when every rank raised this same error (input all ranks read, or an
    error shared by ``distributed.agree``): then only rank 0 prints it.
    """

    def __init__(self, message: str, everywhere: bool = False):
        super().__init__(message)
        self.everywhere = everywhere
