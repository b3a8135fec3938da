"""The project's one user-facing error type.

Library code raises `InputError` for anything the user can fix (a bad file,
a missing slice, an unknown channel, a wrong flag value). The CLI prints its
message and exits with code 2, without a traceback. Any other exception is a
bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input: the message names the file(s) and the problem."""


class RunFailed(RuntimeError):
    """A run that could not do its work (e.g. every trial of a search failed).

    The CLI prints its message and exits with code 1, without a traceback.
    """
