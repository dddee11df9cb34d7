"""User-facing errors: one clear line and an exit code (BIDS execution spec, BEP027)."""

EXIT_BAD_ARGUMENTS = 64
EXIT_VALIDATION_FAILED = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NOTHING_SELECTED = 18
EXIT_INPUT_MISSING = 66
EXIT_CANNOT_WRITE = 73  # sysexits' EX_CANTCREAT: the output or work dir cannot be written
EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: another run holds the participant's lock; retry later


class BidsReconError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits."""

    def __init__(self, message, exit_code=EXIT_BAD_ARGUMENTS):
        super().__init__(message)
        self.exit_code = exit_code
