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


class Terminated(BaseException):
    """SIGTERM arrived while a command ran (raised in the main thread by `isl`).

    A `BaseException`, like `KeyboardInterrupt`, so `except Exception` blocks
    (Keras Tuner's trial loop, for one) do not swallow it. Outputs written
    through `isl.io.atomic` that were not finished are removed on the way out;
    finished ones stay. `isl` exits with `EXIT_TERMINATED` (143 = 128 + 15).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
