"""The one exception type the engine raises for problems a user can fix (bad input, wrong model, full disk).

The CLI turns it into a single sentence on stderr and exit code 2; any other exception is a bug and keeps its
traceback.
"""


class ContrastSegError(Exception):
    """A problem with the user's input, model or environment, stated as one readable sentence."""
