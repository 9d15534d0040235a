"""The one exception type servesim raises for bad user input.

Every message is a single sentence that names the problem and the fix; the CLI prints it
without a traceback and exits with status 2.
"""


class ServesimError(Exception):
    """A user-facing error: bad input, an impossible configuration, or a missing file."""
