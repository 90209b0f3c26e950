"""How a command refuses bad input: one line on stderr, exit status 2, no traceback."""

import sys


def fail(message: str) -> None:
    print(f"hpeft: error: {message}", file=sys.stderr)
    raise SystemExit(2)
