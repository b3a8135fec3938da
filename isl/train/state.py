"""The run's plan and state: the checked arguments, the resolved config, the model built or restored.

`plan_run` checks `isl train`'s arguments and resolves the config from the
data (the records' normalisation, the regression targets' statistics, the
schedule's length) and finds the checkpoint to resume, writing nothing;
`prepare_model_dir` then writes config.json and trained_channels.json, and
`build_model` seeds, builds, restores (`restore_from`, `freeze_core`),
compiles (`isl.train.step`) and restores the newest checkpoint
(`isl.train.checkpoints`) under the strategy's scope.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import keras
import psutil
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import normalization as normalization_lib
from isl.data import pipeline
from isl.io import model_dir as model_dir_lib
from isl.model import builder
from isl.model import footprint
from isl.model import geometry as geometry_lib
from isl.model import saving
from isl.train import callbacks as callbacks_lib
from isl.train import checkpoints
from isl.train import dense_eval
from isl.train import resilience
from isl.train import step
from isl.train import strategy as strategy_lib
from isl.train import transfer as transfer_lib


@dataclasses.dataclass(frozen=True)
class Run:
    """What `train` works with once its arguments are checked.

    Attributes:
        config: the config as written to config.json (dataset normalisation,
            regression target statistics and schedule length filled in).
        data_dir, model_dir: absolute `model_dir`; `data_dir` as given.
        total_steps: the global step to reach.
        strategy: the distribution strategy; `chief`: whether this process writes files.
        log: the status-line sink.
        build_model_fn, dataset_fn: the model builder and the data pipeline.
        start_time: `time.monotonic()` when `train` was called.
        resume_path: the newest checkpoint found in `model_dir`, or None.
    """
    config: config_lib.ExperimentConfig
    data_dir: str
    model_dir: str
    total_steps: int
    strategy: tf.distribute.Strategy
    chief: bool
    log: Callable[[str], None]
    build_model_fn: Callable[..., keras.Model]
    dataset_fn: Callable[..., tf.data.Dataset]
    start_time: float
    resume_path: str | None

    @property
    def regression(self) -> bool:
        return self.config.model.architecture == "unet_regression"


@dataclasses.dataclass
class ModelState:
    """The built model and what building it did.

    Attributes:
        model, optimizer, checkpoint: the compiled model, its optimizer and
            the `tf.train.Checkpoint` of both.
        resume_path: the checkpoint actually restored (an older one when the
            newest was damaged), or None for a fresh run.
        resumed_from_step: the global step restored (0 when fresh).
        transfer: the transfer-learning report of `restore_from`, or None.
        frozen: the layers `freeze_core` made untrainable.
    """
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    resume_path: str | None
    resumed_from_step: int
    transfer: transfer_lib.TransferReport | None
    frozen: list[str]


def plan_run(
    config: config_lib.ExperimentConfig,
    data_dir: str,
    model_dir: str,
    total_steps: int,
    strategy: tf.distribute.Strategy | None,
    log: Callable[[str], None],
    build_model_fn: Callable[..., keras.Model] | None,
    dataset_fn: Callable[..., tf.data.Dataset] | None,
) -> Run:
    """Checks the arguments, resolves the config and finds the checkpoint to resume; writes nothing.

    Raises:
        InputError: for bad steps or folders, a batch that does not fit the
            replicas or the memory, or a resumed run with another configuration.
    """
    if total_steps < 1:
        raise errors.InputError(f"--steps must be >= 1. Received: {total_steps}")
    start_time = time.monotonic()
    strategy = strategy or tf.distribute.get_strategy()
    model_dir = os.path.abspath(os.fspath(model_dir))
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise errors.InputError(f"--model_dir {model_dir} exists and is not a directory.")
    if not os.path.isdir(data_dir):
        raise errors.InputError(f"--data_dir {data_dir}: no such directory.")
    config = resolve_for_data(config, data_dir, model_dir, total_steps, log)
    strategy_lib.per_replica_batch_size(strategy, config.train.batch_size)
    check_memory(config, strategy)
    resume_path = checkpoints.latest_checkpoint(model_dir)
    if resume_path:
        checkpoints.check_resume_config(config, model_dir)
    return Run(
        config=config,
        data_dir=data_dir,
        model_dir=model_dir,
        total_steps=total_steps,
        strategy=strategy,
        chief=strategy_lib.is_chief(strategy),
        log=log,
        build_model_fn=build_model_fn or builder.build_model,
        dataset_fn=dataset_fn or pipeline.build_dataset,
        start_time=start_time,
        resume_path=resume_path,
    )


def resolve_for_data(
    config: config_lib.ExperimentConfig, data_dir: str, model_dir: str, total_steps: int, log: Callable[[str], None]
) -> config_lib.ExperimentConfig:
    """The config with what the data and the run length decide filled in.

    The records' normalisation (it goes into config.json, so predict applies
    it), the regression targets' statistics, and the schedule length of a
    non-constant learning rate (`total_steps` unless set).
    """
    config = normalization_lib.config_for_dataset(config, data_dir)
    if config.model.hybrid_features:
        from isl.infer import hybrid

        config = hybrid.with_embedding(config, pipeline.read_description(data_dir), data_dir)
    if config.model.architecture == "unet_regression" and not config.model.regression_target_mean:
        config = with_target_statistics(config, data_dir, model_dir, log)
    if config.train.lr_schedule != "constant" and not config.train.schedule_steps:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, schedule_steps=total_steps))
    return config


def prepare_model_dir(run: Run, restored_from: str | None) -> None:
    """The chief creates `model_dir`, drops partial checkpoints, writes config.json and trained_channels.json.

    Args:
        restored_from: the model whose trained heads are kept (`restore_from`
            of a fresh run with `restore_heads`), or None.
    """
    if not run.chief:
        return
    os.makedirs(run.model_dir, exist_ok=True)
    layout = model_dir_lib.ModelDir(run.model_dir)
    resilience.remove_partial_checkpoints(layout.checkpoints)
    config_lib.save_config(run.config, layout.config)
    record_trained_channels(run.model_dir, run.data_dir, run.config, restored_from)


def build_model(run: Run, restore_from: str | None, restore_heads: bool, freeze_core: bool) -> ModelState:
    """Seeds, builds and compiles the model under the strategy, then restores the newest checkpoint.

    A fresh run starts from `restore_from` when given; a resumed run ignores it.
    """
    keras.utils.set_random_seed(run.config.train.seed)
    input_size = geometry_lib.geometry(run.config.model).input_size
    resume_path = run.resume_path
    with run.strategy.scope():
        model = run.build_model_fn(run.config, input_size)
        transfer, frozen = _initial_weights(run, model, restore_from, restore_heads, freeze_core)
        optimizer = step.compile_model(model, run.config, run.strategy, run.total_steps)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        if resume_path:
            checkpoint_dir = model_dir_lib.ModelDir(run.model_dir).checkpoints
            resume_path = resilience.restore_newest(checkpoint, checkpoint_dir, run.log)
    resumed_from_step = callbacks_lib.global_step(model) if resume_path else 0
    return ModelState(model, optimizer, checkpoint, resume_path, resumed_from_step, transfer, frozen)


def _initial_weights(
    run: Run, model: keras.Model, restore_from: str | None, restore_heads: bool, freeze_core: bool
) -> tuple[transfer_lib.TransferReport | None, list[str]]:
    """Transfer learning before training: restore `restore_from` (fresh runs only), freeze the core.

    Returns:
        (the transfer report or None, the names of the frozen layers).
    """
    report = None
    if restore_from and not run.resume_path:
        report = transfer_lib.restore_from(model, restore_from, restore_heads=restore_heads)
        run.log(report.summary())
    elif restore_from:
        run.log(f"Resuming from {run.resume_path}; --restore_from {restore_from} is not applied again.")
    frozen: list[str] = []
    if freeze_core:
        frozen = transfer_lib.freeze_core(model)
        run.log(f"Froze {len(frozen)} core layers; the projection and the heads train.")
    return report, frozen


def with_target_statistics(
    config: config_lib.ExperimentConfig, data_dir: str, model_dir: str, log: Callable[[str], None]
) -> config_lib.ExperimentConfig:
    """The regression config with its training targets' per-channel mean and std filled in.

    A resumed run reuses the values recorded in its config.json.
    """
    saved_path = model_dir_lib.ModelDir(model_dir).config
    if checkpoints.latest_checkpoint(model_dir) and os.path.isfile(saved_path):
        saved = config_lib.load_config(saved_path)
        if saved.model.regression_target_mean:
            return dataclasses.replace(config, model=saved.model)
    if not os.path.isdir(data_dir):
        raise errors.InputError(f"--data_dir {data_dir}: no such directory.")
    means, stds = dense_eval.target_statistics(data_dir, config)
    # dense_eval gives a channel without training labels mean 0 / std 1 (a real [0, 1] image has std <= 0.5).
    present = [(name, mean, std) for name, mean, std in zip(config.channels.output_target_channels, means, stds)
               if (mean, std) != (0.0, 1.0)]
    absent = [name for name, mean, std in zip(config.channels.output_target_channels, means, stds)
              if (mean, std) == (0.0, 1.0)]
    log("Regression targets standardized with per-channel mean / std " + ", ".join(
        f"{name} {mean:.4f} / {std:.4f}" for name, mean, std in present)
        + (f" ({len(absent)} channel(s) without labels in the training data, left untrained: "
           f"{', '.join(absent)})" if absent else ""))
    model = dataclasses.replace(config.model, regression_target_mean=means, regression_target_std=stds)
    return dataclasses.replace(config, model=model)


def check_memory(config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy) -> None:
    """Refuses a batch whose modelled training step cannot fit this machine's memory.

    Raises:
        InputError: naming train.batch_size and the largest batch that fits.
    """
    if config.model.architecture != "concordance":
        return
    try:
        geometry_lib.geometry(config.model)
    except ValueError as error:
        raise errors.InputError(f"model.output_size: {error}") from None
    per_replica = strategy_lib.per_replica_batch_size(strategy, config.train.batch_size)
    total = psutil.virtual_memory().total
    needed = footprint.training_step_bytes(config, per_replica)
    if needed <= 0.9 * total:
        return
    fits = footprint.largest_batch(config, 0.9 * total, per_replica)
    advice = (
        f"the largest per-device batch that fits is {fits}" if fits
        else "no batch fits: lower model.output_size (valid sizes: 8 + 16k)"
    )
    raise errors.InputError(
        f"train.batch_size={config.train.batch_size}: one training step of this model "
        f"(output {config.model.output_size} px) needs about {needed / 1e9:.1f} GB, more than 90% of this "
        f"machine's {total / 1e9:.1f} GB; {advice}."
    )


def record_trained_channels(
    model_dir: str, data_dir: str, config: config_lib.ExperimentConfig, restored_from: str | None
) -> None:
    """Writes `trained_channels.json`: the heads this data (and a restored model) trained.

    `isl predict` then writes only those by default; a head whose label never
    occurs keeps its initial weights (isl_reference.md §4).
    """
    description = pipeline.read_description(data_dir) or {}
    present = set(description.get("channels", {}).get("target_channels", []))
    if restored_from:
        source = restored_from if os.path.isdir(restored_from) else os.path.dirname(restored_from)
        present |= set(saving.read_trained_channels(source) or ())
    saving.write_trained_channels(model_dir, config.channels, present, data_dir)
