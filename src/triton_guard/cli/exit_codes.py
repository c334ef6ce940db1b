"""The exit codes every `triton-guard` command shares, and the one line on stderr that goes with a failure."""

import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def refused(prog: str, message: object) -> int:
    """Says `PROG: refused: MESSAGE` on stderr (the command did nothing); returns EXIT_FAILED."""
    print(f"{prog}: refused: {message}", file=sys.stderr)
    return EXIT_FAILED


def usage_error(prog: str, message: object) -> int:
    """Says `PROG: error: MESSAGE` on stderr (bad arguments or input); returns EXIT_USAGE."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE
