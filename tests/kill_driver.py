"""Runs `isl COMMAND ...` with a fault-injection hook, for tests/test_kill_anywhere.py.

Usage: python -m tests.kill_driver COMMAND [--flags]

The hook is chosen by environment variables (read here, in the test
harness, never by the library):

* ISL_HOOK=checkpoint_merge:N  the N-th checkpoint save stops inside
  TensorFlow's writer: the tensors are written to `ckpt-S_temp/`, the
  `.index` is not (the moment a kill leaves a partial checkpoint).
* ISL_HOOK=weights_write:N  the N-th `model.weights.h5` write stops after
  half a file was written to its temporary name.
* ISL_HOOK=before_replace:PATH  the first rename of PATH (the old output
  set aside, or the new one put in place) stops just before it happens:
  the new output is complete under its temporary name.
* ISL_HOOK=after_aside:PATH  stops right after the old PATH was renamed
  aside (between the two renames of `isl.io.atomic.replace_directory`).
* ISL_REPORT=FILE  after a resumed training restored its checkpoint, writes
  `{"prefix", "step", "slot_sums"}` there (step and optimizer state).

At a stop the hook writes its name to ISL_MARKER and sleeps, so the test
can SIGKILL the process in exactly that window.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _stop(name: str) -> None:
    with open(os.environ["ISL_MARKER"], "w") as handle:
        handle.write(name)
    time.sleep(600)


def _install(hook: str) -> None:
    kind, _, argument = hook.partition(":")
    if kind == "checkpoint_merge":
        from tensorflow.python.ops import gen_io_ops

        original = gen_io_ops.merge_v2_checkpoints
        calls = []

        def merge(*args, **kwargs):
            calls.append(1)
            if len(calls) == int(argument):
                _stop(hook)
            return original(*args, **kwargs)

        gen_io_ops.merge_v2_checkpoints = merge
    elif kind == "weights_write":
        import keras

        original = keras.Model.save_weights
        calls = []

        def save_weights(self, path, *args, **kwargs):
            calls.append(1)
            if len(calls) == int(argument):
                original(self, path, *args, **kwargs)
                size = os.path.getsize(path)
                with open(path, "r+b") as handle:
                    handle.truncate(size // 2)
                _stop(hook)
            return original(self, path, *args, **kwargs)

        keras.Model.save_weights = save_weights
    elif kind in ("before_replace", "after_aside"):
        target = os.path.abspath(argument)
        real_replace = os.replace

        def replace(source, destination, **kwargs):
            paths = (os.path.abspath(os.fspath(source)), os.path.abspath(os.fspath(destination)))
            if kind == "before_replace" and target in paths:
                _stop(hook)
            real_replace(source, destination, **kwargs)
            if kind == "after_aside" and paths[0] == target:
                _stop(hook)

        os.replace = replace
    elif kind:
        raise ValueError(f"unknown ISL_HOOK {hook!r}")


def _install_report(path: str) -> None:
    import numpy as np

    from isl.train import resilience

    original = resilience.restore_newest

    def restore_newest(checkpoint, checkpoint_dir, log):
        prefix = original(checkpoint, checkpoint_dir, log)
        optimizer = checkpoint.optimizer
        sums = sorted(float(np.abs(v.numpy()).sum()) for v in optimizer.variables if len(v.shape) > 0)
        with open(path, "w") as handle:
            json.dump({"prefix": prefix, "step": int(optimizer.iterations.numpy()), "slot_sums": sums}, handle)
        return prefix

    resilience.restore_newest = restore_newest


def main() -> None:
    from isl.cli import main as cli

    _install(os.environ.get("ISL_HOOK", ""))
    if os.environ.get("ISL_REPORT"):
        _install_report(os.environ["ISL_REPORT"])
    sys.exit(cli.run_command(sys.argv[1:]))


if __name__ == "__main__":
    main()
