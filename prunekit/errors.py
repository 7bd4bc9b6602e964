"""One exception type for every user-facing problem: the CLI prints its one-line message and exits 2."""


class PrunekitError(Exception):
    """Bad input or missing resource; the message names the problem and the fix."""


class SaveError(PrunekitError):
    """Writing an output failed after the run completed (exit 1: the input was fine)."""
