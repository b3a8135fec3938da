"""Fixtures for the training tests: real synthetic TFRecords and one trained tiny model."""

from __future__ import annotations

import os
from typing import Any

import pytest

from isl import config as config_lib
from isl import presets

# Small, fast settings over the `tiny` preset: global batch 8, evaluation
# every 5 steps on 1 batch, a checkpoint every 2 steps.
FAST_OVERRIDES = (
    "train.batch_size=8",
    "train.eval_every_steps=5",
    "train.eval_batches=1",
    "train.checkpoint_every_steps=2",
    "train.checkpoint_every_minutes=0",
    "train.keep_checkpoints=2",
    "data.shuffle_buffer=8",
)


# A smaller network for the tests of training mechanics (checkpoints, resume, signals, faults, logs): 2 z values
# and one scale of 3 modules instead of the tiny preset's 26 z values and 3 scales; the 9 target heads stay (the
# synthetic wells label 3 of them and their sum). The records hold 13 z slices, of which the network reads 2.
# Tracing the train step dominates a short run: this network's run costs about 2.5x less CPU time.
SMALL_NETWORK = ("channels.num_z_values=2", "model.num_scales=1", "model.lower_modules_scale_0=3")


def fast_config(*overrides: str) -> config_lib.ExperimentConfig:
    """The tiny preset with FAST_OVERRIDES, then `overrides`."""
    return presets.resolve_config("tiny", overrides=list(FAST_OVERRIDES) + list(overrides))


def small_config(*overrides: str) -> config_lib.ExperimentConfig:
    """`fast_config` with the SMALL_NETWORK, then `overrides`."""
    return fast_config(*SMALL_NETWORK, *overrides)


def write_records(
    directory: str, num_wells: int, seed: int, channels: config_lib.ChannelConfig, **split: Any
) -> str:
    """Synthetic wells (the data stage's generator) converted to TFRecords (`split`: convert's split arguments)."""
    from isl.data import convert, synthetic

    wells_dir = os.path.join(directory, "wells")
    records_dir = os.path.join(directory, "records")
    synthetic.write_synthetic_dataset(wells_dir, num_wells=num_wells, size=160, num_z=13, seed=seed)
    convert.convert([wells_dir], records_dir, channels, num_shards=2, **({"eval_every": 3} | split))
    return records_dir


@pytest.fixture(scope="session")
def records_dir(tmp_path_factory) -> str:
    """Condition-B-like synthetic wells as TFRecords (train and eval shards)."""
    return write_records(str(tmp_path_factory.mktemp("train_records")), 3, 0, fast_config().channels)


@pytest.fixture(scope="session")
def val_records_dir(tmp_path_factory) -> str:
    """A three-way split: wells A1, A2 train, A3 validation, A4 evaluation."""
    return write_records(
        str(tmp_path_factory.mktemp("val_records")), 4, 0, fast_config().channels, eval_every=4, val_wells=["A3"]
    )


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, records_dir):
    """A small-network model (`small_config`) trained 10 steps (shared by the tests that need one).

    Returns `(model_dir, TrainResult, losses_before_after)`, where the last
    item holds the training-mode loss of one fixed batch before and after.
    """
    import keras
    import numpy as np

    from isl.data import pipeline
    from isl.model import losses
    from isl.train import trainer

    config = small_config("train.learning_rate=0.003")
    batch = next(iter(pipeline.build_dataset(records_dir, config, split="train", seed=7, deterministic=True)))
    inputs, labels = np.asarray(batch[0]), np.asarray(batch[1])
    loss = losses.ISLLoss(config.channels)
    recorded: dict[str, float] = {}

    class RecordLoss(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            recorded["before"] = float(loss(labels, self.model(inputs, training=True)))

        def on_train_end(self, logs=None):
            recorded["after"] = float(loss(labels, self.model(inputs, training=True)))

    model_dir = str(tmp_path_factory.mktemp("trained") / "model")
    result = trainer.train(
        config, records_dir, model_dir, 10, show_progress=False, extra_callbacks=[RecordLoss()]
    )
    return model_dir, result, recorded
