"""Faults during training: damaged checkpoints, damaged shards, a full disk.

* `checkpoint_candidates` / `restore_newest`: resume from the newest
  checkpoint that restores, falling back past damaged ones (and saying so).
  A checkpoint counts only once its `.index` exists: TensorFlow writes the
  data into `ckpt-N_temp/` and the index last, by a rename, so a run killed
  while saving leaves no `ckpt-N.index`.
* `remove_partial_checkpoints`: deletes what a killed save left behind.
* `disk_full_message`: whether an error is "no space left on device".
* `damaged_shards` / `naming_damaged_shards`: which TFRecord shards of a
  dataset fail to read, to name the file when the pipeline reports only
  "corrupted record".
"""

from __future__ import annotations

import errno
import glob
import os
import re
import contextlib
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tensorflow as tf

from isl import errors
from isl.data import schema

CHECKPOINT_PREFIX = "ckpt"
_NUMBER = re.compile(r"-(\d+)\.index$")


def checkpoint_candidates(checkpoint_dir: str) -> list[str]:
    """Complete checkpoints (prefixes with an `.index`), newest step first.

    Read from the folder itself, not from TensorFlow's `checkpoint` state
    file, so a kill between writing a checkpoint and updating that file
    (or a damaged state file) loses nothing.
    """
    found = []
    for index in glob.glob(os.path.join(glob.escape(checkpoint_dir), CHECKPOINT_PREFIX + "-*.index")):
        match = _NUMBER.search(index)
        if match:
            found.append((int(match.group(1)), index[: -len(".index")]))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def remove_partial_checkpoints(checkpoint_dir: str) -> list[str]:
    """Removes leftovers of an interrupted save: `*_temp/` folders, `*.tempstate*`
    files and data files without an index. Returns the removed paths."""
    if not os.path.isdir(checkpoint_dir):
        return []
    removed = []
    complete = set(checkpoint_candidates(checkpoint_dir))
    for path in glob.glob(os.path.join(glob.escape(checkpoint_dir), "*")):
        name = os.path.basename(path)
        orphan_data = ".data-" in name and path.split(".data-")[0] not in complete
        if name.endswith("_temp") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif ".tempstate" in name or orphan_data:
            os.remove(path)
        else:
            continue
        removed.append(path)
    return removed


def _short(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__


def restore_newest(checkpoint: tf.train.Checkpoint, checkpoint_dir: str, log: Callable[[str], None]) -> str | None:
    """Restores the newest checkpoint of `checkpoint_dir` that reads; returns its prefix.

    A damaged checkpoint (truncated or corrupted index or data) is reported
    through `log` and the previous one is tried. Returns None when the folder
    holds no checkpoint.

    Raises:
        InputError: when checkpoints exist but none of them restores.
    """
    candidates = checkpoint_candidates(checkpoint_dir)
    damaged = []
    for prefix in candidates:
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as error:
            damaged.append(prefix)
            later = "falling back to the previous one" if prefix != candidates[-1] else "no older checkpoint is left"
            log(f"Checkpoint {prefix} is damaged ({_short(error)}); {later}.")
            continue
        if damaged:
            log(f"Resuming from the older checkpoint {prefix}: the newer one(s) could not be read "
                f"({', '.join(os.path.basename(path) for path in damaged)}); the steps after it are trained again.")
        return prefix
    if damaged:
        raise errors.InputError(
            f"{checkpoint_dir}: every checkpoint is damaged ({', '.join(os.path.basename(p) for p in damaged)}). "
            "Restore the folder from a backup, or delete it to train again from step 0 (or use a new --model_dir)."
        )
    return None


def disk_full(error: BaseException) -> bool:
    """True for "no space left on device" (or a quota), from Python or TensorFlow."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def damaged_shards(data_dir: str) -> list[tuple[str, str]]:
    """`(path, reason)` for every TFRecord shard of `data_dir` that does not read.

    Reads every record (checking its CRCs); for the error path only.
    """
    damaged = []
    for split in schema.SPLITS:
        for path in sorted(glob.glob(os.path.join(glob.escape(data_dir), schema.shard_pattern(split)))):
            try:
                for _ in tf.data.TFRecordDataset(path):
                    pass
            except tf.errors.OpError as error:
                damaged.append((path, _short(error)))
    return damaged


@contextlib.contextmanager
def naming_damaged_shards(data_dir: str, last_good: Mapping[str, Any]) -> Iterator[None]:
    """Turns a pipeline's "corrupted record" error into an InputError naming the shard.

    `last_good["path"]` (read at the time of the error) is the newest
    checkpoint, mentioned as kept. Errors with no damaged shard behind them
    pass unchanged.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        explained = data_error(data_dir, error, last_good.get("path"))
        if explained is None:
            raise
        raise explained from None


def data_error(data_dir: str, error: BaseException, last_checkpoint: str | None) -> errors.InputError | None:
    """An InputError naming the damaged shard behind a pipeline `error`, or None."""
    damaged = damaged_shards(data_dir)
    if not damaged:
        return None
    path, reason = damaged[0]
    kept = f" The newest checkpoint ({last_checkpoint}) is kept." if last_checkpoint else ""
    more = f" ({len(damaged) - 1} more damaged shard(s))" if len(damaged) > 1 else ""
    return errors.InputError(
        f"{path}: damaged TFRecord shard ({reason}){more}. Run 'isl convert' again to rewrite {data_dir}, "
        f"then the same training command to resume.{kept}"
    )
