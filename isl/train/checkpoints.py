"""Checkpoints and resume: where a run stands, saving its state, and refusing what cannot resume.

The training state (model weights, batch-norm statistics, optimizer slots and
`optimizer.iterations`, the global step) is a `tf.train.Checkpoint` under
`MODEL_DIR/checkpoints/`; `CheckpointSaver` writes it (and refreshes the
inference weights `MODEL_DIR/model.weights.h5`), never after a NaN/Inf step,
and turns a full disk into a one-line error. Finding, restoring and cleaning
checkpoints past damage is `isl.train.resilience`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.io import model_dir as model_dir_lib
from isl.model import saving
from isl.train import callbacks as callbacks_lib
from isl.train import resilience
from isl.train import strategy as strategy_lib


def latest_checkpoint(model_dir: str) -> str | None:
    """The newest complete checkpoint in `model_dir` (it may still be damaged), or None."""
    candidates = resilience.checkpoint_candidates(model_dir_lib.ModelDir(model_dir).checkpoints)
    return candidates[0] if candidates else None


def check_resume_config(config: config_lib.ExperimentConfig, model_dir: str) -> None:
    """A resumed run must keep the vocabulary and the architecture."""
    path = model_dir_lib.ModelDir(model_dir).config
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return
    current = json.loads(config.to_json())
    for section in ("channels", "model"):
        if saved.get(section) != current[section]:
            raise errors.InputError(
                f"{model_dir} holds a run with a different '{section}' configuration "
                f"(see {path}); resume with the same settings or use a new --model_dir."
            )


def read_summary(model_dir: str) -> dict[str, Any]:
    """The `logs/summary.json` of an earlier run, or {} when it is missing or unreadable."""
    path = model_dir_lib.ModelDir(model_dir).summary
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return {}


class CheckpointSaver:
    """Saves the training state at a step; the chief also refreshes the model dir's inference weights.

    The chief writes `MODEL_DIR/checkpoints`; other workers must take part in
    the save but write to a private directory, removed at the end. A step
    whose loss was NaN/Inf (`non_finite`) is never saved. A full disk removes
    the partial files and raises.

    Attributes:
        directory: where this process writes checkpoints.
        non_finite: the callback that stops training on a NaN/Inf loss.
        last_good: {"step", "path"} of the newest good checkpoint (read by
            `resilience.naming_damaged_shards` when a shard turns out damaged).
    """

    def __init__(
        self,
        model: keras.Model,
        checkpoint: tf.train.Checkpoint,
        config: config_lib.ExperimentConfig,
        model_dir: str,
        strategy: tf.distribute.Strategy,
        resumed_from: tuple[int, str | None],
    ) -> None:
        """`resumed_from`: (the step, the checkpoint path) restored, or (0, None) for a fresh run."""
        self.model, self.config, self.model_dir = model, config, model_dir
        self.chief = strategy_lib.is_chief(strategy)
        layout = model_dir_lib.ModelDir(model_dir)
        self.directory = (
            layout.checkpoints if self.chief else layout.worker_checkpoints(strategy_lib.worker_id(strategy))
        )
        self.manager = tf.train.CheckpointManager(
            checkpoint, self.directory, max_to_keep=max(1, config.train.keep_checkpoints)
        )
        self.non_finite = callbacks_lib.NonFiniteLoss()
        self.last_good: dict[str, Any] = {"step": resumed_from[0], "path": resumed_from[1]}

    def save(self, step: int) -> None:
        """Saves the state of `step` (see the class docstring).

        Raises:
            InputError: when the disk is full.
        """
        if self.non_finite.step is not None:
            return  # Never save the weights a NaN/Inf step produced.
        try:
            path = self.manager.save(checkpoint_number=step)
            if self.chief:
                saving.save_model_dir(self.model, self.config, self.model_dir)
        except (OSError, tf.errors.OpError) as error:
            if not resilience.disk_full(error):
                raise
            resilience.remove_partial_checkpoints(self.directory)
            newest = latest_checkpoint(self.model_dir) if self.chief else self.last_good["path"]
            raise errors.InputError(
                f"{self.model_dir}: no space left on device while saving step {step}; the partial files were "
                f"removed and the newest complete checkpoint is {newest or 'none'}. "
                "Free some space and run the same command to resume."
            ) from None
        self.last_good.update(step=step, path=path)

    def refuse_non_finite(self) -> None:
        """Raises when training stopped on a NaN/Inf loss, naming what was kept.

        Raises:
            InputError: after a non-finite loss.
        """
        non_finite, last_good = self.non_finite, self.last_good
        if non_finite.step is None:
            return
        kept = (f"the last good checkpoint is {last_good['path']} (step {last_good['step']}) and "
                f"{model_dir_lib.WEIGHTS_FILE} was not overwritten" if last_good["path"]
                else "no checkpoint had been saved yet")
        raise errors.InputError(
            f"Training stopped: the loss became {non_finite.value} at step {non_finite.step}; nothing from that "
            f"step was saved: {kept}. Check the data for NaN/Inf values or lower train.learning_rate, then run "
            "the same command to resume."
        )
