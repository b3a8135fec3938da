"""`isl COMMAND [--flags]`: dispatches to the subcommand modules in `isl.cli`.

Every command gets its own absl `FlagValues`, so commands never share global
flag state and library code never reads flags. Common behaviour lives here:
`--help`, `--json` (the last stdout line is a one-line JSON object),
`InputError` -> message on stderr and exit code 2, no traceback.

Exit codes: 0 done; 2 bad input or usage; 143 (128 + SIGTERM) stopped by
SIGTERM: `isl train` saves a checkpoint first (run the same command to
resume), other commands keep what they finished and remove half-written
files; 130 interrupted by Ctrl-C (SIGINT).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# Commands in the order `isl --help` lists them: name -> module.
COMMANDS: dict[str, str] = {
    "convert": "isl.cli.convert",
    "train": "isl.cli.train",
    "predict": "isl.cli.predict",
    "evaluate": "isl.cli.evaluate",
    "tune": "isl.cli.tune",
    "export": "isl.cli.export",
    "readout": "isl.cli.readout",
    "recalibrate": "isl.cli.recalibrate",
    "calibrate": "isl.cli.calibrate",
    "ensemble": "isl.cli.ensemble",
    "curves": "isl.cli.curves",
    "describe": "isl.cli.describe",
    "benchmark": "isl.cli.benchmark",
    "demo": "isl.cli.demo",
}

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    from isl import errors

    raise errors.Terminated(signum)


def _watch_for_sigterm(read_fd: int, grace_seconds: float, message: Callable[[], str], done: threading.Event) -> None:
    """Ends the process when SIGTERM's handler cannot run within `grace_seconds`.

    Python runs signal handlers only between bytecodes of the main thread; a
    single TensorFlow call (one prediction tile of the paper model on CPU)
    can hold it for minutes. The C-level handler still writes the signal's
    number to the wakeup fd, which this thread reads. Outputs are written
    atomically, so leaving without cleanup leaves no half-written file
    under a final name.
    """
    try:
        while True:
            data = os.read(read_fd, 64)
            if not data:
                return  # The command ended; its end of the pipe is closed.
            if signal.SIGTERM in data:
                break
    except OSError:
        return
    finally:
        os.close(read_fd)
    if done.wait(grace_seconds):
        return  # The main thread handled it (or the command ended).
    print(message(), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_TERMINATED)


@contextlib.contextmanager
def _sigterm_raises(grace_seconds: float | None = None, message: Callable[[], str] = lambda: "") -> Iterator[None]:
    """While a command runs, SIGTERM raises `errors.Terminated` in the main thread.

    Python's default for SIGTERM is to die at once, skipping the cleanup of
    half-written outputs. `isl train` installs its own handler around
    training (save, then stop) on top of this one. With `grace_seconds`, a
    watcher thread ends the process that long after SIGTERM if the main
    thread is still busy inside one long native call.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_fd = None
    descriptors: tuple[int, int] | None = None
    done = threading.Event()
    if grace_seconds is not None:
        descriptors = os.pipe()
        os.set_blocking(descriptors[1], False)
        previous_fd = signal.set_wakeup_fd(descriptors[1], warn_on_full_buffer=False)
        threading.Thread(
            target=_watch_for_sigterm, args=(descriptors[0], grace_seconds, message, done), daemon=True
        ).start()
    try:
        yield
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
        if descriptors is not None:
            signal.set_wakeup_fd(previous_fd if previous_fd is not None else -1)
            os.close(descriptors[1])  # The watcher reads EOF and ends.


def _quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up chatter out of the user's terminal (`isl.quiet`)."""
    from isl import quiet

    quiet.set_environment()


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow and probes its devices with their C++ start-up lines hidden (`isl.quiet`).

    ISL_TF_LOG=1, or TF_CPP_MIN_LOG_LEVEL 0 or 1, shows them again.
    """
    from isl import quiet

    quiet.import_tensorflow()


def _top_level_help() -> str:
    lines = [
        "isl: In Silico Labeling (Christiansen et al., Cell 2018) on TensorFlow 2 / Keras 3.",
        "",
        "Predicts fluorescence images, with per-pixel uncertainty, from transmitted-light",
        "z-stacks of unlabeled cells.",
        "",
        "usage: isl COMMAND [--flag=value ...]      (also: python -m isl COMMAND ...)",
        "",
        "commands:",
    ]
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        lines.append(f"  {name:<10} {module.SUMMARY}")
    lines += [
        "",
        "Run 'isl COMMAND --help' for a command's flags. Every command accepts --json:",
        "its last line on stdout is then a one-line JSON object with the paths it",
        "wrote and its figures.",
    ]
    return "\n".join(lines)


def _command_help(name: str, module: Any, flag_values: Any) -> str:
    description = textwrap.dedent(module.DESCRIPTION).strip()
    flag_help = flag_values.get_help(include_special_flags=False)
    return f"usage: isl {name} [--flag=value ...]\n\n{description}\n\nflags:\n{flag_help}\n"


def make_flag_values(module: Any) -> Any:
    """A fresh `FlagValues` holding the command's flags plus `--json`."""
    from absl import flags

    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    if "json" not in flag_values:
        flags.DEFINE_bool(
            "json",
            False,
            "Print a one-line JSON summary (paths written, figures) as the last stdout line.",
            flag_values=flag_values,
        )
    return flag_values


def run_command(argv: Sequence[str]) -> int:
    """Runs `isl` with `argv` (without the program name); returns the exit code."""
    from isl import errors

    _quiet_tensorflow()
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help", "--helpfull"):
        print(_top_level_help())
        return EXIT_OK if argv else EXIT_USAGE
    name, arguments = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"isl: unknown command {name!r}. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name])
    flag_values = make_flag_values(module)
    if any(argument in ("-h", "--help", "-help", "--helpfull") for argument in arguments):
        print(_command_help(name, module, flag_values))
        return EXIT_OK
    from absl import flags

    try:
        positional = flag_values([f"isl {name}"] + arguments)[1:]
    except flags.Error as error:
        print(f"isl {name}: {error}\nRun 'isl {name} --help' for usage.", file=sys.stderr)
        return EXIT_USAGE
    hint = getattr(module, "stopped_hint", None)
    grace = getattr(module, "SIGTERM_GRACE_SECONDS", None)

    def stopped_message() -> str:
        return f"isl {name}: stopped by SIGTERM." + (f" {hint(flag_values)}" if hint else "")

    try:
        with _sigterm_raises(grace, stopped_message), _removed_if_empty_on_failure(_new_outputs(module, flag_values)):
            _import_tensorflow_quietly()
            result = module.run(flag_values, positional)
    except errors.InputError as error:
        print(f"isl {name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except errors.RunFailed as error:
        print(f"isl {name}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - only a full disk is handled; anything else re-raises.
        if not _disk_full(error):
            raise
        # Every output goes through isl.io.atomic, whose temporaries are
        # removed when a write fails: nothing half-written is left.
        detail = error.filename if isinstance(error, OSError) and error.filename else str(error).splitlines()[0]
        print(f"isl {name}: error: no space left on device ({detail}); nothing half-written was kept and any "
              "previous output is untouched. Free some space and run the command again.", file=sys.stderr)
        return EXIT_USAGE
    except errors.Terminated:
        print(stopped_message(), file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"isl {name}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if flag_values["json"].value:
        sys.stdout.flush()
        print(json.dumps(result or {}, sort_keys=True, default=_json_default))
    if isinstance(result, dict) and result.get("interrupted"):
        return EXIT_TERMINATED
    return EXIT_OK


def _new_outputs(module: Any, flag_values: Any) -> list[str]:
    """The folders a command may create that do not exist yet, for its `OUTPUT_FLAGS`.

    For each output flag, the outermost missing folder of its path (`runs`
    for `--model_dir=runs/b` when `runs` is missing); paths with a scheme
    (`gs://...`) are left alone.
    """
    created = []
    for name in getattr(module, "OUTPUT_FLAGS", ()):
        value = flag_values[name].value
        if not value or "://" in value:
            continue
        path = os.path.abspath(value)
        outermost = None
        while not os.path.lexists(path):
            outermost = path
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if outermost is not None:
            created.append(outermost)
    return created


@contextlib.contextmanager
def _removed_if_empty_on_failure(paths: Sequence[str]) -> Iterator[None]:
    """A command that fails leaves no empty output folder behind.

    Folders in `paths` (made by this run) are removed when the command ends
    with an exception and they hold no file: what it finished (a predicted
    well, a tuning trial) stays.
    """
    try:
        yield
    except BaseException:
        for path in paths:
            if os.path.isdir(path) and not any(files for _, _, files in os.walk(path)):
                shutil.rmtree(path, ignore_errors=True)
        raise


def _disk_full(error: BaseException) -> bool:
    """True for "no space left on device" (or a quota) from Python or TensorFlow."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def _json_default(value: Any) -> Any:
    """Makes NumPy scalars and paths JSON-serialisable."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# glibc's malloc settings for a command process (`configure_allocator`): at most this many arenas, and every
# allocation of at least this many bytes its own mapping, returned to the system when freed.
MALLOC_ARENA_MAX = 2
MALLOC_MMAP_THRESHOLD_BYTES = 1 << 20
# mallopt(3) parameter numbers (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def configure_allocator(environ: Any = None, libc: Any = None) -> dict[str, int]:
    """Sets glibc's malloc to `MALLOC_ARENA_MAX` arenas and a fixed `MALLOC_MMAP_THRESHOLD_BYTES` mmap threshold,
    unless the user's environment sets that tunable (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) or the C library
    is not glibc; returns what it set ({name: value}).

    By default glibc gives each thread that contends for the heap its own arena (up to 8 per core) and raises the
    mmap threshold as large blocks are freed, so the freed activations of one tile stay in the heap beside the
    next tile's: the shipped checkpoint's 1024^2 predict peaked 3.05-3.06 GB with the defaults and 2.97-2.99 GB
    with these settings, the same files, the same wall time within 5% (BUILD_NOTES, Prediction and evaluation).
    Call it before TensorFlow starts its threads.
    """
    environ = os.environ if environ is None else environ
    if libc is None:
        import ctypes
        import platform

        if platform.libc_ver()[0] != "glibc":
            return {}
        try:
            libc = ctypes.CDLL(None)
        except OSError:
            return {}
        if not hasattr(libc, "mallopt"):
            return {}
    chosen = {}
    for name, parameter, value in (("MALLOC_ARENA_MAX", _M_ARENA_MAX, MALLOC_ARENA_MAX),
                                   ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)):
        if name in environ:
            continue
        if libc.mallopt(parameter, value) == 1:  # mallopt returns 1 on success.
            chosen[name] = value
    return chosen


def main() -> None:
    """Console-script entry point.

    A reader that closes the pipe early (`isl --help | head`) ends the
    command quietly, as command-line tools do, instead of a BrokenPipeError
    traceback.
    """
    configure_allocator()
    try:
        code = run_command(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, what a shell reports for such a command.
    if code == EXIT_TERMINATED:
        # Stopped by SIGTERM with everything saved: leave without the
        # interpreter's teardown of TensorFlow and tf.data threads, which took
        # 10-13 s after a paper-model run (and once hung), so a scheduler's
        # grace period is not spent there.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
