"""One exception type for every user-facing problem: the CLI prints its one-line message and exits 2."""


class PrunekitError(Exception):
    """Bad input or missing resource; the message names the problem and the fix."""


class SaveError(PrunekitError):
    """Writing an output failed after the run completed (exit 1: the input was fine)."""


def guarded(prog: str, job, *args) -> int:
    """Run a module entry point's job: a PrunekitError becomes one line on stderr and exit 2, as in the CLI."""
    import sys
    try:
        return job(*args) or 0
    except PrunekitError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
