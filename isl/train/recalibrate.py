"""Batch-norm recalibration ("precise BN"): an option beyond the paper.

The paper's batch norm keeps exponential moving averages with momentum
0.999 (§1.2), a horizon of about a thousand steps. After a short training
run (a few thousand steps on a CPU) the averages still hold a large part of
their initial values (0.999**1200 = 30% after 1,200 steps) and of the
statistics of early, very different weights, so inference-mode outputs are
off although the weights are good. Recalibration replaces every batch-norm
layer's moving mean and variance by the plain average, over `num_batches`
training batches, of the batch statistics the current weights produce
(Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021). Weights are not
touched. BUILD_NOTES.md (Real-data reproduction) measures its effect.

Method: every batch-norm layer gets momentum 0, so one training-mode forward
pass leaves that batch's mean and variance in its moving statistics; those
are read after each batch and averaged. Momenta are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch-norm layer of `model`, nested models included."""
    layers = model._flatten_layers(include_self=False)
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batch_norm(
    model: keras.Model,
    batches: Iterable[Any],
    num_batches: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Sets every batch-norm layer's moving statistics to their average over batches.

    Args:
        model: a built model (weights are left unchanged).
        batches: yields `(inputs, labels)` or `inputs`; inputs
            `[batch, H, W, 2Z]` float32 training patches.
        num_batches: how many batches to average (>= 1).
        progress: called as progress(done, num_batches) after each batch.

    Returns:
        `{"layers": L, "batches": N, "mean_shift": m, "variance_ratio": r}`:
        the mean absolute change of the moving means and the median ratio of
        new to old moving variances, to show how far the averages had been.

    Raises:
        ValueError: if `num_batches` < 1, the model has no batch norm, or
            `batches` runs out before yielding one batch.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1. Received: {num_batches}")
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("The model has no batch-norm layer to recalibrate.")
    old_means = [np.asarray(layer.moving_mean) for layer in layers]
    old_variances = [np.asarray(layer.moving_variance) for layer in layers]
    momenta = [layer.momentum for layer in layers]
    sums_mean = [np.zeros_like(value, dtype=np.float64) for value in old_means]
    sums_variance = [np.zeros_like(value, dtype=np.float64) for value in old_variances]
    for layer in layers:
        layer.momentum = 0.0

    @tf.function
    def forward(inputs):
        model(inputs, training=True)

    done = 0
    try:
        for batch in batches:
            if done >= num_batches:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(inputs)
            for index, layer in enumerate(layers):
                sums_mean[index] += np.asarray(layer.moving_mean, dtype=np.float64)
                sums_variance[index] += np.asarray(layer.moving_variance, dtype=np.float64)
            done += 1
            if progress:
                progress(done, num_batches)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if not done:
        for layer, mean, variance in zip(layers, old_means, old_variances):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise ValueError("The data yielded no batch; nothing was recalibrated.")
    shifts, ratios = [], []
    for index, layer in enumerate(layers):
        mean = (sums_mean[index] / done).astype(old_means[index].dtype)
        variance = (sums_variance[index] / done).astype(old_variances[index].dtype)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        shifts.append(np.abs(mean - old_means[index]).mean())
        ratios.append(np.median(variance / np.maximum(old_variances[index], 1e-12)))
    return {
        "layers": len(layers),
        "batches": done,
        "mean_shift": float(np.mean(shifts)),
        "variance_ratio": float(np.median(ratios)),
    }
