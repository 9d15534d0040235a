"""The one exception type servesim raises for bad user input.

Every message is a single sentence that names the problem and the fix; the CLI prints it
without a traceback and exits with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class ServesimError(Exception):
    """A user-facing error: bad input, an impossible configuration, or a missing file."""


def script_exit(main: Callable[[], int | None]) -> int:
    """Run a script's `main()` as the CLI runs a command: a ServesimError (or an OSError on a
    path it was given) becomes one sentence on stderr and exit status 2, not a traceback;
    otherwise main's status (None: 0)."""
    try:
        return main() or 0
    except ServesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the script was given: missing, unreadable, disk full
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"error: {exc.strerror or exc}{where}; check the path, its permissions and the "
            "free space.",
            file=sys.stderr,
        )
        return 2


def at_least(value: int, flag: str, minimum: int = 1) -> int:
    """A script flag's whole number, returned if it is at least `minimum`; else a
    ServesimError naming the flag."""
    if value < minimum:
        raise ServesimError(f"{flag} takes a whole number ≥ {minimum}, not {value}.")
    return value


def counts(text: str, flag: str, minimum: int = 0) -> list[int]:
    """A script flag's comma-separated whole numbers (`--k 0,3,5`), each at least `minimum`;
    anything else is a ServesimError naming the flag."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise ServesimError(
            f"{flag} {text!r} is not a comma-separated list of whole numbers ≥ {minimum}; "
            f"write e.g. {flag} {max(minimum, 1)},{max(minimum, 1) * 2}."
        )
    return values
