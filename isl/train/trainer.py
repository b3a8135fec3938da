"""Training with Keras `fit` under a tf.distribute strategy, resumable.

`train(...)` builds the model under `strategy.scope()`, compiles it with the
faithful optimizer (Adam 1e-4, TF1 defaults beta1 0.9, beta2 0.999,
epsilon 1e-8; no decay, no clipping, isl_reference.md §4) and `ISLLoss`, and
fits it with the callbacks of `isl.train.callbacks`.

Resumability. The training state (model weights, batch-norm statistics,
optimizer slots and `optimizer.iterations`, the global step) is a
`tf.train.Checkpoint` under `MODEL_DIR/checkpoints/`, written every
`train.checkpoint_every_steps` steps and/or `train.checkpoint_every_minutes`
minutes, on SIGTERM and at the end; the last `train.keep_checkpoints` are
kept. Each save also refreshes `MODEL_DIR/model.weights.h5` (inference
weights). Started again with the same arguments, `train` restores the newest
checkpoint and continues to `total_steps`; a finished run does nothing.

Epochs. The paper has none. Here one Keras epoch is
`train.eval_every_steps` steps: after each, the evaluation loss (total and
per head) is computed on `train.eval_batches` batches of the eval split.

Determinism (what `train.seed` gives). The seed fixes the initial weights
(`keras.utils.set_random_seed`), the data pipeline's shuffling and
augmentation seeds, and thus the sequence of batches of an uninterrupted run
on one device with a deterministic pipeline (`build_dataset(deterministic=True)`). It does not make
floating-point reductions bit-exact (oneDNN and multi-threaded kernels
reorder sums), and a resumed run seeds its data pipeline with
`seed + resumed step`, so it does not replay the batches it already saw:
a resumed run is reproducible given the same interruption points, not
identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import normalization as normalization_lib
from isl.io import atomic
from isl.io import model_dir as model_dir_lib
from isl.model import geometry as geometry_lib
from isl.model import losses as losses_lib
from isl.model import saving
from isl.progress import Progress
from isl.train import callbacks as callbacks_lib
from isl.train import resilience
from isl.train import strategy as strategy_lib
from isl.train import transfer as transfer_lib

# Momentum settings of the released code's MOMENTUM option (§1.11).
MOMENTUM = 0.875
MOMENTUM_DECAY_STEPS = 4096
MOMENTUM_DECAY_RATE = 0.999

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a call to `train` did.

    Attributes:
        model_dir: the model directory.
        final_step: the global step at the end.
        resumed_from_step: the step restored from a checkpoint (0 if fresh).
        already_finished: True when the run had already reached its steps.
        interrupted: True when SIGTERM stopped it (a checkpoint was saved).
        losses: final training losses: `loss` and `head_<z>_<channel>`.
        eval_losses: final evaluation losses, same keys (empty without eval).
        wall_seconds: time spent in this call.
        steps_per_second: training speed of this call.
        labelled_pixels_per_second, labelled_pixels_per_cpu_second: output
            pixels supervised per second of wall time and per CPU-second of
            this process (batch x output_size^2 per step).
        pearson: the last whole-image Pearson figures (`train.eval_pearson`).
        pearson_split: the split they were computed on: "val" when the
            dataset has a validation split (keep_best selects on it), else "eval".
        best_step: with `train.keep_best`, the step whose weights were kept.
        recalibration: the batch-norm recalibration report, when run.
        transfer: the transfer-learning report, when weights were restored.
        frozen_layers: layers made untrainable by `freeze_core`.
    """

    model_dir: str
    final_step: int
    resumed_from_step: int
    already_finished: bool = False
    interrupted: bool = False
    losses: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_losses: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_seconds: float = 0.0
    steps_per_second: float = 0.0
    transfer: dict[str, Any] | None = None
    frozen_layers: list[str] = dataclasses.field(default_factory=list)
    labelled_pixels_per_second: float = 0.0
    labelled_pixels_per_cpu_second: float = 0.0
    pearson: dict[str, float] = dataclasses.field(default_factory=dict)
    pearson_split: str = ""
    best_step: int | None = None
    recalibration: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate_schedule(train_config: config_lib.TrainConfig, total_steps: int | None = None) -> Any:
    """The learning rate: a constant (the paper), or warmup + cosine decay.

    The cosine schedule rises linearly from 0 to `learning_rate` over
    `warmup_steps`, then decays along a half cosine to
    `final_learning_rate_fraction * learning_rate` at `schedule_steps` (0: at
    `total_steps`) and stays there.
    """
    if train_config.lr_schedule == "constant":
        return train_config.learning_rate
    end = train_config.schedule_steps or total_steps
    if not end:
        raise errors.InputError("train.lr_schedule=cosine needs train.schedule_steps or --steps.")
    warmup = min(train_config.warmup_steps, max(end - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else train_config.learning_rate,
        decay_steps=max(end - warmup, 1),
        alpha=train_config.final_learning_rate_fraction,
        warmup_target=train_config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(train_config: config_lib.TrainConfig, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The optimizer of §4 / §1.11: Adam with TF1 defaults, or the alternatives.

    `train.lr_schedule` (an option beyond the paper) sets the Adam learning
    rate's schedule; the momentum optimizer keeps its released decay.
    """
    if train_config.optimizer == "adam":
        # TF1's AdamOptimizer epsilon is 1e-8 (Keras's default is 1e-7).
        return keras.optimizers.Adam(
            learning_rate=learning_rate_schedule(train_config, total_steps), beta_1=0.9, beta_2=0.999, epsilon=1e-8
        )
    if train_config.optimizer == "momentum":
        schedule = keras.optimizers.schedules.ExponentialDecay(
            train_config.learning_rate, MOMENTUM_DECAY_STEPS, MOMENTUM_DECAY_RATE, staircase=False
        )
        return keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM)
    return keras.optimizers.Adagrad(learning_rate=learning_rate_schedule(train_config, total_steps))


def latest_checkpoint(model_dir: str) -> str | None:
    """The newest complete checkpoint in `model_dir` (it may still be damaged), or None."""
    candidates = resilience.checkpoint_candidates(model_dir_lib.ModelDir(model_dir).checkpoints)
    return candidates[0] if candidates else None


def _loss(config: config_lib.ExperimentConfig) -> keras.losses.Loss:
    """The paper's loss, or the regression baseline's MSE on standardized targets."""
    if config.model.architecture == "unet_regression":
        from isl.model import unet_regression

        return unet_regression.RegressionLoss(
            config.channels.num_input_heads, config.model.regression_target_mean, config.model.regression_target_std
        )
    return losses_lib.ISLLoss(config.channels)


def _with_target_statistics(
    config: config_lib.ExperimentConfig, data_dir: str, model_dir: str, log: Callable[[str], None]
) -> config_lib.ExperimentConfig:
    """The regression config with its training targets' per-channel mean and std filled in.

    A resumed run reuses the values recorded in its config.json.
    """
    from isl.train import dense_eval

    saved_path = model_dir_lib.ModelDir(model_dir).config
    if latest_checkpoint(model_dir) and os.path.isfile(saved_path):
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


def _check_memory(config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy) -> None:
    """Refuses a batch whose modelled training step cannot fit this machine's memory.

    Raises:
        InputError: naming train.batch_size and the largest batch that fits.
    """
    import psutil

    from isl.model import footprint

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


def _check_resume_config(config: config_lib.ExperimentConfig, model_dir: str) -> None:
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


def _set_synchronized_batch_norm(model: keras.Model) -> int:
    """Makes batch norm use the statistics of the global batch (all replicas)."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


class ReplicaScaledLoss(keras.losses.Loss):
    """The loss of the global batch, computed per replica, summed by the strategy.

    Keras scales a loss by 1 / replicas only when it reduces per-example
    values itself; the ISL loss is already one scalar per batch
    (SUM_BY_NONZERO_WEIGHTS, §2), which Keras passes through unscaled, and
    the replicas' gradients are then summed. Without a correction N
    replicas would take N times the step of one device (and Keras's loss
    tracker, which multiplies by N again, would report N times the loss).

    With an `ISLLoss` (`global_normalization`), each head's masked
    cross-entropy sum on this replica is divided by the head's count of
    labelled pixels over ALL replicas (an all-reduce of `[num_heads]`
    counts), so the replicas' values add up to exactly the one-device loss of
    the global batch even when replicas hold different numbers of labelled
    pixels (padding, missing labels). Any other loss is divided by the
    number of replicas (exact only when every replica's normalisation is
    the same). On one replica the wrapped loss is returned unchanged.
    """

    def __init__(self, loss: keras.losses.Loss, global_normalization: bool = True) -> None:
        super().__init__(name=loss.name)
        self.loss = loss
        self.global_normalization = global_normalization

    def call(self, y_true: Any, y_pred: Any) -> Any:
        context = tf.distribute.get_replica_context()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas <= 1 or context is None:
            return self.loss(y_true, y_pred)
        if not (self.global_normalization and isinstance(self.loss, losses_lib.ISLLoss)):
            return self.loss(y_true, y_pred) * (1.0 / replicas)
        # per_head_losses = sum / max(local count, 1) / ln C; undo the local
        # count and divide by the global one.
        head_losses = losses_lib.per_head_losses(y_true, y_pred)
        weights = tf.cast(y_true, tf.float32)[..., 1]
        local_count = tf.reduce_sum(tf.cast(tf.not_equal(weights, 0.0), tf.float32), axis=(0, 1, 2))
        global_count = tf.stop_gradient(context.all_reduce(tf.distribute.ReduceOp.SUM, local_count))
        head_losses = head_losses * tf.maximum(local_count, 1.0) / tf.maximum(global_count, 1.0)
        return losses_lib.total_loss(head_losses, self.loss.num_input_heads)


def compile_for_training(model: keras.Model, config: config_lib.ExperimentConfig) -> None:
    """Compiles a tuning trial as `isl train` does: `make_optimizer` and `ISLLoss` (§2, §4).

    The compile function `isl tune` injects into `ISLHyperModel`. The loss is
    wrapped in `ReplicaScaledLoss`, so a trial under `--strategy=mirrored`
    takes the one-device step of the global batch (on one replica the
    wrapper returns the loss unchanged).
    """
    model.compile(
        optimizer=make_optimizer(config.train),
        loss=ReplicaScaledLoss(losses_lib.ISLLoss(config.channels)),
        jit_compile=False,
    )


def _build_metrics_without_data(
    model: keras.Model, strategy: tf.distribute.Strategy, config: config_lib.ExperimentConfig, input_size: int
) -> None:
    """Builds Keras's compiled loss and metrics from zeros of the contract's shapes.

    Under a strategy, Keras (3.15) builds them in `fit` from the first batch of
    the training iterator: it takes that batch away from training, and under
    MultiWorkerMirroredStrategy its cross-replica `reduce` of the batch fails
    ("Attempt to convert a value (PerReplica ...)"). Replacing that private
    hook with a build from zeros avoids both; if the hook is missing (another
    Keras version), Keras's own behaviour stays.
    """
    if not hasattr(model, "_maybe_symbolic_build") or not hasattr(model, "_symbolic_build"):
        return
    output_size = geometry_lib.geometry(config.model).output_size
    channels = config.channels
    sample = (
        np.zeros((1, input_size, input_size, channels.num_input_features), np.float32),
        np.zeros((1, output_size, output_size, channels.num_heads, 2), np.float32),
    )

    def symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
        with strategy.scope():
            model._symbolic_build(data_batch=sample)

    model._maybe_symbolic_build = symbolic_build


def _scalar_outputs_as_vectors(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wraps a train/test step so that every scalar it returns has shape `[1]`."""

    def wrapped(data: Any) -> Any:
        return tf.nest.map_structure(
            lambda value: tf.reshape(value, [1]) if value.shape.rank == 0 else value, step(data)
        )

    return wrapped


def _fix_multi_worker_output_reduction(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Lets Keras `fit` reduce the step outputs under MultiWorkerMirroredStrategy.

    Keras (3.15, `reduce_per_replica` with "auto" = "mean") reduces every
    output of a train/test step under a multi-worker strategy with
    `strategy.reduce("MEAN", value, axis=0)`; the outputs are the metric
    results, scalars, and that reduction fails ("Invalid reduction dimension
    0 for input with 0 dimensions", tensorflow/tensorflow#72388). Returning
    each scalar as a `[1]` vector makes that reduction the mean over the
    replicas, a scalar again, which is what Keras does on one worker. The
    logs Keras hands to callbacks at epoch ends are read from the metrics
    themselves, so nothing else changes. Only applied under that strategy.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    model.train_step = _scalar_outputs_as_vectors(model.train_step)
    model.test_step = _scalar_outputs_as_vectors(model.test_step)


def _default_build_model(config: config_lib.ExperimentConfig, input_size: int | None) -> keras.Model:
    from isl.model import builder

    return builder.build_model(config, input_size=input_size)


def _default_dataset(data_dir: str, config: config_lib.ExperimentConfig, **kwargs: Any) -> tf.data.Dataset:
    from isl.data import pipeline

    return pipeline.build_dataset(data_dir, config, **kwargs)


def _read_summary(model_dir: str) -> dict[str, Any]:
    path = model_dir_lib.ModelDir(model_dir).summary
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return {}


def _split_logs(logs: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    train = {name: value for name, value in logs.items() if not name.startswith("val_")}
    evaluation = {name[4:]: value for name, value in logs.items() if name.startswith("val_")}
    return train, evaluation


def _record_trained_channels(
    model_dir: str, data_dir: str, config: config_lib.ExperimentConfig, restored_from: str | None
) -> None:
    """Writes `trained_channels.json`: the heads this data (and a restored model) trained.

    `isl predict` then writes only those by default; a head whose label never
    occurs keeps its initial weights (isl_reference.md §4).
    """
    from isl.data import pipeline

    description = pipeline.read_description(data_dir) or {}
    present = set(description.get("channels", {}).get("target_channels", []))
    if restored_from:
        source = restored_from if os.path.isdir(restored_from) else os.path.dirname(restored_from)
        present |= set(saving.read_trained_channels(source) or ())
    saving.write_trained_channels(model_dir, config.channels, present, data_dir)


def train(
    config: config_lib.ExperimentConfig,
    data_dir: str,
    model_dir: str,
    total_steps: int,
    strategy: tf.distribute.Strategy | None = None,
    restore_from: str | None = None,
    restore_heads: bool = True,
    freeze_core: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    build_model_fn: Callable[..., keras.Model] | None = None,
    dataset_fn: Callable[..., tf.data.Dataset] | None = None,
) -> TrainResult:
    """Trains (or resumes training of) a model to `total_steps` global steps.

    The steps, in order: plan the run (check the arguments, resolve the
    config, find a checkpoint to resume), prepare the model directory, build
    the model (restored, compiled), then fit with the checkpointing
    callbacks, finish the inference weights and write the summary.

    Args:
        config: the fully resolved experiment config.
        data_dir: TFRecords written by `isl convert` (train and eval shards).
        model_dir: where config, weights, checkpoints and logs go.
        total_steps: the global step to reach (a resumed run continues to it).
        strategy: from `isl.train.strategy.make_strategy`; default: one device.
        restore_from: a model dir or `.weights.h5` to fine-tune from; used only
            when `model_dir` has no checkpoint yet (as Slim's `init_fn`).
        restore_heads: False leaves every head at its initialisation.
        freeze_core: make the core untrainable (projection and heads learn).
        show_progress: draw a progress bar on stderr (chief only).
        log: receives human-readable status lines (default: `logging`).
        extra_callbacks: more Keras callbacks (e.g. for tests).
        build_model_fn, dataset_fn: replace the model builder and the data
            pipeline (the Mirrored parity check starts both sides from the
            same weights and a fixed batch).

    Returns:
        A `TrainResult`.
    """
    run = _plan_run(config, data_dir, model_dir, total_steps, strategy, log, build_model_fn, dataset_fn)
    _prepare_model_dir(run, restore_from if restore_heads and not run.resume_path else None)
    state = _build_model(run, restore_from, restore_heads, freeze_core)
    if state.resumed_from_step >= total_steps:
        return _already_finished(run, state)
    if state.resume_path:
        run.log(f"Resuming {run.model_dir} from step {state.resumed_from_step} ({state.resume_path}).")
    saver = _CheckpointSaver(run, state)
    train_data, eval_data = _datasets(run, state.resumed_from_step)
    callbacks = _fit_callbacks(run, state, saver, eval_data is not None, show_progress, extra_callbacks)
    fit_seconds, fit_cpu_seconds = _fit(run, state, saver, callbacks, train_data, eval_data)
    final_step, best_step, recalibration = _finish(run, state, saver, callbacks)
    return _write_result(
        run, state, callbacks, final_step, fit_seconds, fit_cpu_seconds, best_step, recalibration
    )


@dataclasses.dataclass(frozen=True)
class _Run:
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
class _ModelState:
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


def _plan_run(
    config: config_lib.ExperimentConfig,
    data_dir: str,
    model_dir: str,
    total_steps: int,
    strategy: tf.distribute.Strategy | None,
    log: Callable[[str], None] | None,
    build_model_fn: Callable[..., keras.Model] | None,
    dataset_fn: Callable[..., tf.data.Dataset] | None,
) -> _Run:
    """Checks the arguments, resolves the config and finds the checkpoint to resume; writes nothing.

    Raises:
        InputError: for bad steps or folders, a batch that does not fit the
            replicas or the memory, or a resumed run with another configuration.
    """
    if total_steps < 1:
        raise errors.InputError(f"--steps must be >= 1. Received: {total_steps}")
    start_time = time.monotonic()
    log = log or logger.info
    strategy = strategy or tf.distribute.get_strategy()
    model_dir = os.path.abspath(os.fspath(model_dir))
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise errors.InputError(f"--model_dir {model_dir} exists and is not a directory.")
    if not os.path.isdir(data_dir):
        raise errors.InputError(f"--data_dir {data_dir}: no such directory.")
    config = _resolve_for_data(config, data_dir, model_dir, total_steps, log)
    strategy_lib.per_replica_batch_size(strategy, config.train.batch_size)
    _check_memory(config, strategy)
    resume_path = latest_checkpoint(model_dir)
    if resume_path:
        _check_resume_config(config, model_dir)
    return _Run(
        config=config,
        data_dir=data_dir,
        model_dir=model_dir,
        total_steps=total_steps,
        strategy=strategy,
        chief=strategy_lib.is_chief(strategy),
        log=log,
        build_model_fn=build_model_fn or _default_build_model,
        dataset_fn=dataset_fn or _default_dataset,
        start_time=start_time,
        resume_path=resume_path,
    )


def _resolve_for_data(
    config: config_lib.ExperimentConfig, data_dir: str, model_dir: str, total_steps: int, log: Callable[[str], None]
) -> config_lib.ExperimentConfig:
    """The config with what the data and the run length decide filled in.

    The records' normalisation (it goes into config.json, so predict applies
    it), the regression targets' statistics, and the schedule length of a
    non-constant learning rate (`total_steps` unless set).
    """
    config = normalization_lib.config_for_dataset(config, data_dir)
    if config.model.architecture == "unet_regression" and not config.model.regression_target_mean:
        config = _with_target_statistics(config, data_dir, model_dir, log)
    if config.train.lr_schedule != "constant" and not config.train.schedule_steps:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, schedule_steps=total_steps))
    return config


def _prepare_model_dir(run: _Run, restored_from: str | None) -> None:
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
    _record_trained_channels(run.model_dir, run.data_dir, run.config, restored_from)


def _build_model(run: _Run, restore_from: str | None, restore_heads: bool, freeze_core: bool) -> _ModelState:
    """Seeds, builds and compiles the model under the strategy, then restores the newest checkpoint.

    A fresh run starts from `restore_from` when given; a resumed run ignores it.
    """
    keras.utils.set_random_seed(run.config.train.seed)
    input_size = geometry_lib.geometry(run.config.model).input_size
    resume_path = run.resume_path
    with run.strategy.scope():
        model = run.build_model_fn(run.config, input_size)
        transfer, frozen = _initial_weights(run, model, restore_from, restore_heads, freeze_core)
        optimizer = _compile(run, model, input_size)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        if resume_path:
            checkpoints = model_dir_lib.ModelDir(run.model_dir).checkpoints
            resume_path = resilience.restore_newest(checkpoint, checkpoints, run.log)
    resumed_from_step = callbacks_lib.global_step(model) if resume_path else 0
    return _ModelState(model, optimizer, checkpoint, resume_path, resumed_from_step, transfer, frozen)


def _initial_weights(
    run: _Run, model: keras.Model, restore_from: str | None, restore_heads: bool, freeze_core: bool
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


def _compile(run: _Run, model: keras.Model, input_size: int) -> keras.optimizers.Optimizer:
    """Compiles with the optimizer, `ReplicaScaledLoss` and per-head metrics, and builds their state.

    Called under the strategy's scope. Batch norm is synchronised across
    replicas with `train.sync_batch_norm`; the optimizer slots, the loss and
    the metrics are built before `fit` so a checkpoint can restore them.
    """
    config, strategy = run.config, run.strategy
    if strategy.num_replicas_in_sync > 1 and config.train.sync_batch_norm:
        _set_synchronized_batch_norm(model)
    optimizer = make_optimizer(config.train, run.total_steps)
    model.compile(
        optimizer=optimizer,
        loss=ReplicaScaledLoss(_loss(config)),
        metrics=[] if run.regression else [callbacks_lib.PerHeadLosses(config.channels.head_names)],
        jit_compile=bool(config.train.jit_compile),
    )
    optimizer.build(model.trainable_variables)
    _build_metrics_without_data(model, strategy, config, input_size)
    _fix_multi_worker_output_reduction(model, strategy)
    return optimizer


def _already_finished(run: _Run, state: _ModelState) -> TrainResult:
    """The result of a run that had already reached `total_steps`: its last summary, nothing trained."""
    summary = _read_summary(run.model_dir)
    run.log(
        f"{run.model_dir} already finished: step {state.resumed_from_step} >= --steps={run.total_steps}. "
        "Nothing to do (raise --steps to train further)."
    )
    return TrainResult(
        model_dir=run.model_dir,
        final_step=state.resumed_from_step,
        resumed_from_step=state.resumed_from_step,
        already_finished=True,
        losses=summary.get("losses", {}),
        eval_losses=summary.get("eval_losses", {}),
        wall_seconds=time.monotonic() - run.start_time,
    )


class _CheckpointSaver:
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

    def __init__(self, run: _Run, state: _ModelState) -> None:
        self.run = run
        self.model = state.model
        layout = model_dir_lib.ModelDir(run.model_dir)
        self.directory = (
            layout.checkpoints if run.chief else layout.worker_checkpoints(strategy_lib.worker_id(run.strategy))
        )
        self.manager = tf.train.CheckpointManager(
            state.checkpoint, self.directory, max_to_keep=max(1, run.config.train.keep_checkpoints)
        )
        self.non_finite = callbacks_lib.NonFiniteLoss()
        self.last_good: dict[str, Any] = {"step": state.resumed_from_step, "path": state.resume_path}

    def save(self, step: int) -> None:
        """Saves the state of `step` (see the class docstring).

        Raises:
            InputError: when the disk is full.
        """
        run = self.run
        if self.non_finite.step is not None:
            return  # Never save the weights a NaN/Inf step produced.
        try:
            path = self.manager.save(checkpoint_number=step)
            if run.chief:
                saving.save_model_dir(self.model, run.config, run.model_dir)
        except (OSError, tf.errors.OpError) as error:
            if not resilience.disk_full(error):
                raise
            resilience.remove_partial_checkpoints(self.directory)
            newest = latest_checkpoint(run.model_dir) if run.chief else self.last_good["path"]
            raise errors.InputError(
                f"{run.model_dir}: no space left on device while saving step {step}; the partial files were "
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


def _datasets(run: _Run, resumed_from_step: int) -> tuple[Any, Any]:
    """(training data, evaluation data or None), split over the replicas.

    The training pipeline is seeded with `seed + resumed step`; without eval
    shards, training goes on without evaluation.
    """
    seed = run.config.train.seed
    train_data = _distributed_dataset(run, "train", seed + resumed_from_step, deterministic=False)
    eval_data = None
    try:
        eval_data = _distributed_dataset(run, "eval", seed, deterministic=True)
    except errors.InputError as error:
        run.log(f"No evaluation data ({error}); training without evaluation.")
    return train_data, eval_data


def _distributed_dataset(run: _Run, split: str, seed: int, deterministic: bool) -> Any:
    """One split's pipeline; under several replicas or workers, the global batch split through InputContext."""
    strategy = run.strategy
    if strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return run.dataset_fn(run.data_dir, run.config, split=split, seed=seed, deterministic=deterministic)
    return strategy.distribute_datasets_from_function(
        lambda context: run.dataset_fn(
            run.data_dir, run.config, split=split, input_context=context, seed=seed, deterministic=deterministic
        )
    )


@dataclasses.dataclass
class _Callbacks:
    """The callbacks of `fit`, in order (`all`), and those read after it.

    Attributes:
        in_order: every callback, in the order Keras calls them.
        termination: catches SIGTERM during `fit`.
        checkpointer: saves periodically, on SIGTERM and at the end.
        training_log: TensorBoard scalars and the last logs.
        dense_pearson: the whole-image Pearson callback (chief, with eval data), or None.
    """

    in_order: list[keras.callbacks.Callback]
    termination: callbacks_lib.TerminationSignal
    checkpointer: callbacks_lib.PeriodicCheckpoint
    training_log: callbacks_lib.TrainingLog
    dense_pearson: Any


def _fit_callbacks(
    run: _Run,
    state: _ModelState,
    saver: _CheckpointSaver,
    has_eval_data: bool,
    show_progress: bool,
    extra_callbacks: list[keras.callbacks.Callback] | None,
) -> _Callbacks:
    """NaN/Inf stop, step limit and checkpoints for every process; Pearson, logs, panels and progress for the chief."""
    train_config = run.config.train
    log_dir = model_dir_lib.ModelDir(run.model_dir).logs
    termination = callbacks_lib.TerminationSignal()
    checkpointer = callbacks_lib.PeriodicCheckpoint(
        saver.save,
        every_steps=train_config.checkpoint_every_steps,
        every_minutes=train_config.checkpoint_every_minutes,
        termination=termination,
    )
    training_log = callbacks_lib.TrainingLog(log_dir, every_steps=min(10, train_config.eval_every_steps))
    fit_callbacks: list[keras.callbacks.Callback] = [
        saver.non_finite, callbacks_lib.StopAtStep(run.total_steps), checkpointer
    ]
    dense_pearson = None
    if run.chief and has_eval_data and train_config.eval_pearson:
        dense_pearson = _dense_pearson_callback(
            run.data_dir, run.config, run.model_dir, run.log,
            lambda: run.dataset_fn(
                run.data_dir, run.config, split="train", seed=train_config.seed + 104729, deterministic=False
            ),
        )
        if dense_pearson is not None:
            fit_callbacks.append(dense_pearson)  # Before TrainingLog: it adds to the epoch logs.
    if run.chief:
        fit_callbacks += _chief_callbacks(run, state, training_log, log_dir, has_eval_data, show_progress)
    fit_callbacks += list(extra_callbacks or [])
    return _Callbacks(fit_callbacks, termination, checkpointer, training_log, dense_pearson)


def _chief_callbacks(
    run: _Run,
    state: _ModelState,
    training_log: callbacks_lib.TrainingLog,
    log_dir: str,
    has_eval_data: bool,
    show_progress: bool,
) -> list[keras.callbacks.Callback]:
    """The training log, the image panels (classification models with eval data) and the progress bar."""
    chief_callbacks: list[keras.callbacks.Callback] = [training_log]
    if has_eval_data and not run.regression:
        panel_batch = _panel_batch(run.dataset_fn, run.data_dir, run.config)
        if panel_batch is not None:
            chief_callbacks.append(
                callbacks_lib.ImagePanels(
                    log_dir, panel_batch, run.config.channels.head_names,
                    first_target_head=run.config.channels.num_input_heads,
                )
            )
    progress = Progress(run.total_steps - state.resumed_from_step, label="train", enabled=show_progress)
    chief_callbacks.append(callbacks_lib.ProgressCallback(progress, state.resumed_from_step, run.total_steps))
    return chief_callbacks


def _fit(
    run: _Run, state: _ModelState, saver: _CheckpointSaver, callbacks: _Callbacks, train_data: Any, eval_data: Any
) -> tuple[float, float]:
    """Runs Keras `fit` from the resumed step to `total_steps`, one epoch per `train.eval_every_steps`.

    A SIGTERM ends it early (its checkpoint is saved already); a damaged
    shard is named with the last good checkpoint.

    Returns:
        (wall seconds, CPU seconds of this process) spent in `fit`.

    Raises:
        InputError: when the loss became NaN/Inf.
    """
    train_config = run.config.train
    steps_per_epoch = max(1, min(train_config.eval_every_steps, run.total_steps))
    remaining = run.total_steps - state.resumed_from_step
    epochs = math.ceil(remaining / steps_per_epoch)
    fit_start = time.monotonic()
    fit_cpu_start = time.process_time()
    with callbacks.termination, resilience.naming_damaged_shards(run.data_dir, saver.last_good):
        try:
            state.model.fit(
                train_data,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                validation_data=eval_data,
                validation_steps=train_config.eval_batches if eval_data is not None else None,
                callbacks=callbacks.in_order,
                shuffle=False,  # The pipeline shuffles; Keras cannot shuffle a tf.data.
                verbose=0,
            )
        except callbacks_lib.TrainingInterrupted:
            # Saved already; skip the epoch's evaluation, close bars and logs.
            for callback in callbacks.in_order:
                if isinstance(callback, (callbacks_lib.ProgressCallback, callbacks_lib.TrainingLog)):
                    callback.on_train_end()
    saver.refuse_non_finite()
    return time.monotonic() - fit_start, time.process_time() - fit_cpu_start


def _finish(
    run: _Run, state: _ModelState, saver: _CheckpointSaver, callbacks: _Callbacks
) -> tuple[int, int | None, dict[str, float] | None]:
    """Saves the final checkpoint, then (unless interrupted) keeps the best weights and recalibrates.

    The checkpoint keeps the training state for a later resume; what follows
    changes only the inference weights of the model dir.

    Returns:
        (the final global step, the step whose weights were kept or None,
        the recalibration report or None).
    """
    final_step = callbacks_lib.global_step(state.model)
    callbacks.checkpointer.save_now(final_step)
    if not run.chief:
        shutil.rmtree(saver.directory, ignore_errors=True)
    if callbacks.checkpointer.interrupted:
        return final_step, None, None
    dense_pearson = callbacks.dense_pearson
    best_step, recalibration = _finish_inference_weights(
        state.model, run.config, run.model_dir, run.data_dir, run.dataset_fn, dense_pearson, run.log
    )
    if run.chief and (best_step is not None or recalibration is not None):
        saving.save_model_dir(state.model, run.config, run.model_dir)
        if dense_pearson is not None:
            _log_final_pearson(dense_pearson, final_step, run.log)
    return final_step, best_step, recalibration


def _log_final_pearson(dense_pearson: Any, final_step: int, log: Callable[[str], None]) -> None:
    """Evaluates the written weights' whole-image Pearson r, records it in the history and logs it."""
    final_figures = dense_pearson.evaluate()
    dense_pearson.history.append({"step": final_step, "final_weights": 1.0, **final_figures})
    log(f"Whole-image Pearson r of the written weights on the {dense_pearson.split} split (median / mean): "
        + ", ".join(
        f"{name} {final_figures.get(f'pearson_median_{name}', float('nan')):.3f} / "
        f"{final_figures.get(f'pearson_mean_{name}', float('nan')):.3f}" for name in dense_pearson.channels))


def _write_result(
    run: _Run,
    state: _ModelState,
    callbacks: _Callbacks,
    final_step: int,
    fit_seconds: float,
    fit_cpu_seconds: float,
    best_step: int | None,
    recalibration: dict[str, float] | None,
) -> TrainResult:
    """The `TrainResult`; the chief writes it to `logs/summary.json`."""
    trained_steps = final_step - state.resumed_from_step
    output_size = geometry_lib.geometry(run.config.model).output_size
    labelled_pixels = trained_steps * run.config.train.batch_size * output_size**2
    losses, eval_losses = _split_logs(callbacks.training_log.last_logs) if run.chief else ({}, {})
    dense_pearson = callbacks.dense_pearson
    interrupted = callbacks.checkpointer.interrupted
    result = TrainResult(
        model_dir=run.model_dir,
        final_step=final_step,
        resumed_from_step=state.resumed_from_step,
        interrupted=interrupted,
        losses=losses,
        eval_losses=eval_losses,
        wall_seconds=time.monotonic() - run.start_time,
        steps_per_second=trained_steps / fit_seconds if fit_seconds > 0 else 0.0,
        transfer=state.transfer.to_dict() if state.transfer else None,
        frozen_layers=state.frozen,
        labelled_pixels_per_second=labelled_pixels / fit_seconds if fit_seconds > 0 else 0.0,
        labelled_pixels_per_cpu_second=labelled_pixels / fit_cpu_seconds if fit_cpu_seconds > 0 else 0.0,
        pearson=dict(dense_pearson.history[-1]) if dense_pearson is not None and dense_pearson.history else {},
        pearson_split=dense_pearson.split if dense_pearson is not None else "",
        best_step=best_step,
        recalibration=recalibration,
    )
    if run.chief:
        atomic.write_text(
            model_dir_lib.ModelDir(run.model_dir).summary,
            json.dumps(result.to_dict(), indent=2, default=float) + "\n",
        )
    if interrupted:
        run.log(f"Stopped by signal at step {final_step}; checkpoint saved. Run the same command to resume.")
    return result


def _dense_pearson_callback(
    data_dir: str,
    config: config_lib.ExperimentConfig,
    model_dir: str,
    log: Callable[[str], None],
    recalibration_batches: Callable[[], Any] | None = None,
) -> Any:
    """The whole-image Pearson callback, or None when the selection split has no usable image.

    It scores the validation split when the dataset has one, and `train.keep_best`
    selects on it. Without one it scores the evaluation split for monitoring
    only: keep_best is then skipped with a warning (the last weights are kept),
    so no weights are ever chosen on the split that is reported.
    """
    from isl.data import pipeline
    from isl.train import dense_eval

    split = pipeline.selection_split(data_dir)
    try:
        images = dense_eval.load_split_images(data_dir, config, split=split)
    except errors.InputError as error:
        log(f"No whole-image evaluation ({error}).")
        return None
    if not images:
        return None
    keep_best = config.train.keep_best and split == "val"
    if config.train.keep_best and not keep_best:
        log(f"warning: train.keep_best needs a validation split, and {data_dir} has none (isl convert "
            "--val_wells / --val_region); keeping the last weights rather than choosing on the evaluation split.")
    elif keep_best:
        log("train.keep_best selects on the validation split; the evaluation split is only reported.")
    best_dir = model_dir_lib.ModelDir(model_dir).checkpoints if keep_best else None
    return dense_eval.DensePearson(
        config, images, keep_best=keep_best, log=log, best_dir=best_dir,
        recalibration_batches=recalibration_batches, split=split,
    )


def _finish_inference_weights(
    model: keras.Model,
    config: config_lib.ExperimentConfig,
    model_dir: str,
    data_dir: str,
    dataset_fn: Callable[..., tf.data.Dataset],
    dense_pearson: Any,
    log: Callable[[str], None],
) -> tuple[int | None, dict[str, float] | None]:
    """`train.keep_best` then `train.recalibrate_batches`, on the model's weights in place.

    Returns:
        (the step whose weights were kept or None, the recalibration report or None).
    """
    best_step = None
    if dense_pearson is not None and dense_pearson.keep_best:
        best_step = dense_pearson.restore_best(model)
        if best_step is not None:
            log(f"Kept the weights of step {best_step} (best whole-image Pearson r, median, on the "
                f"{dense_pearson.split} split: {dense_pearson.best_value:.3f}).")
    recalibration = None
    batches = config.train.recalibrate_batches
    if batches > 0:
        from isl.train import recalibrate as recalibrate_lib

        dataset = dataset_fn(data_dir, config, split="train", seed=config.train.seed + 7919, deterministic=False)
        recalibration = recalibrate_lib.recalibrate_batch_norm(model, dataset, batches)
        log(f"Recalibrated {recalibration['layers']} batch-norm layers on {recalibration['batches']} training "
            f"batches (mean |shift| of the moving means {recalibration['mean_shift']:.4f}).")
    return best_step, recalibration


def _panel_batch(
    dataset_fn: Callable[..., tf.data.Dataset], data_dir: str, config: config_lib.ExperimentConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """One fixed evaluation batch (at most 16 patches) for the image panels."""
    try:
        dataset = dataset_fn(
            data_dir, config, split="eval", seed=config.train.seed, deterministic=True,
            batch_size=min(16, config.train.batch_size),
        )
        inputs, labels = next(iter(dataset))
    except (errors.InputError, StopIteration, tf.errors.OutOfRangeError):
        return None
    return np.asarray(inputs), np.asarray(labels)
