"""The training step: the loss on the replicas, the compiled model, and Keras's step under a strategy.

`compile_model` compiles a built model as `isl train` trains it: the
optimizer of `isl.train.schedule`, the paper's loss (or the regression
baseline's) wrapped in `ReplicaScaledLoss` so that N replicas take the
one-device step of the global batch, per-head loss metrics, and the fixes
Keras's `fit` needs under tf.distribute strategies (metrics built from
zeros, scalar step outputs under MultiWorkerMirroredStrategy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl.model import geometry as geometry_lib
from isl.model import losses as losses_lib
from isl.model import unet_regression
from isl.train import callbacks as callbacks_lib
from isl.train import schedule


def training_loss(config: config_lib.ExperimentConfig) -> keras.losses.Loss:
    """The paper's loss, or the regression baseline's MSE on standardized targets (foreground-weighted with
    `train.regression_foreground_weight`)."""
    if config.model.architecture == "unet_regression":
        return unet_regression.RegressionLoss(
            config.channels.num_input_heads, config.model.regression_target_mean, config.model.regression_target_std,
            foreground_weight=config.train.regression_foreground_weight,
        )
    return losses_lib.ISLLoss(config.channels)


def set_synchronized_batch_norm(model: keras.Model) -> int:
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
        optimizer=schedule.make_optimizer(config.train),
        loss=ReplicaScaledLoss(losses_lib.ISLLoss(config.channels)),
        jit_compile=False,
    )


def compile_model(
    model: keras.Model, config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy, total_steps: int
) -> keras.optimizers.Optimizer:
    """Compiles with the optimizer, `ReplicaScaledLoss` and per-head metrics, and builds their state.

    Called under the strategy's scope. Batch norm is synchronised across
    replicas with `train.sync_batch_norm`; the optimizer slots, the loss and
    the metrics are built before `fit` so a checkpoint can restore them.

    Returns:
        The optimizer (its schedule sized for `total_steps`).
    """
    if strategy.num_replicas_in_sync > 1 and config.train.sync_batch_norm:
        set_synchronized_batch_norm(model)
    optimizer = schedule.make_optimizer(config.train, total_steps)
    regression = config.model.architecture == "unet_regression"
    model.compile(
        optimizer=optimizer,
        loss=ReplicaScaledLoss(training_loss(config)),
        metrics=[] if regression else [callbacks_lib.PerHeadLosses(config.channels.head_names)],
        jit_compile=bool(config.train.jit_compile),
    )
    optimizer.build(model.trainable_variables)
    input_size = geometry_lib.geometry(config.model).input_size
    build_metrics_without_data(model, strategy, config, input_size)
    fix_multi_worker_output_reduction(model, strategy)
    return optimizer


def build_metrics_without_data(
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
        np.zeros((1, input_size, input_size,
                  channels.num_input_features + unet_regression.input_embedding_size(config.model)), np.float32),
        np.zeros((1, output_size, output_size, channels.num_heads, 2), np.float32),
    )

    def symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
        with strategy.scope():
            model._symbolic_build(data_batch=sample)

    model._maybe_symbolic_build = symbolic_build


def scalar_outputs_as_vectors(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wraps a train/test step so that every scalar it returns has shape `[1]`."""

    def wrapped(data: Any) -> Any:
        return tf.nest.map_structure(
            lambda value: tf.reshape(value, [1]) if value.shape.rank == 0 else value, step(data)
        )

    return wrapped


def fix_multi_worker_output_reduction(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
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
    model.train_step = scalar_outputs_as_vectors(model.train_step)
    model.test_step = scalar_outputs_as_vectors(model.test_step)
