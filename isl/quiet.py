"""Quiet start-up: TensorFlow's C++ messages stay off the user's terminal unless asked for (the one owner).

TensorFlow prints start-up lines through absl's C++ logger (oneDNN notices,
CUDA probes, "failed call to cuInit" on a machine without a GPU driver),
some before any log level applies and some at the first device query. With
`TF_CPP_MIN_LOG_LEVEL=2`, a common setting, the ERROR-level cuInit line
still shows. `isl` therefore:

* sets `TF_CPP_MIN_LOG_LEVEL=3` (also over a 2), and
* imports TensorFlow and lists its devices with file descriptor 2 pointed
  at /dev/null, and starts its own child processes (`isl benchmark`) the
  same way, so their start-up is silent too.

Asked for: `ISL_TF_LOG=1`, or `TF_CPP_MIN_LOG_LEVEL` 0 or 1, leaves all
of TensorFlow's output as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

ENVIRONMENT_SWITCH = "ISL_TF_LOG"


def requested() -> bool:
    """True when the user asked to see TensorFlow's messages."""
    return (os.environ.get(ENVIRONMENT_SWITCH, "") not in ("", "0")
            or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "") in ("0", "1"))


def set_environment() -> None:
    """TF_CPP_MIN_LOG_LEVEL=3 unless TensorFlow's messages were asked for (inherited by child processes)."""
    if not requested():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null for the block (nothing, when messages were asked for).

    A child process started inside the block keeps /dev/null as its stderr;
    its errors must come back another way (a queue, an exception, stdout).
    """
    if requested():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def import_tensorflow() -> None:
    """Imports TensorFlow and initialises its devices with their start-up lines hidden.

    A failing import still raises its Python exception.
    """
    set_environment()
    with stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # The CUDA probe (cuInit) runs here, not at import.
