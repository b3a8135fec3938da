"""The ISL training loss (isl_reference.md §2).

Per head (one (z, channel) pair), as the released `util.softmax_cross_entropy`:

1. the label value v in [0, 1] becomes the class round(v * (C - 1)) (TF's
   round, half to even; values outside [0, 1] are clipped to the end bins);
2. sparse softmax cross-entropy of the logits against that class, weighted
   per pixel by the label mask;
3. TF1's SUM_BY_NONZERO_WEIGHTS reduction: the weighted sum over batch, rows
   and columns divided by the number of nonzero weights (0 when there are
   none);
4. divided by ln C, so 0 is perfect and 1 is a uniform predictor.

Total (`launch.total_loss`): 0.5 * mean over the input (autoencoding) heads
+ 0.5 * mean over the target heads, each mean over ALL heads of its group,
present or not. A head whose mask is all zero contributes exactly zero loss
and zero gradient.

Shapes: labels `[batch, rows, columns, num_heads, 2]` (`[..., 0]` value,
`[..., 1]` mask weight); logits `[batch, rows, columns, num_heads, C]`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from isl import config as config_lib


def class_labels(values, num_classes: int):
    """Values in [0, 1] -> int32 bins round(v * (num_classes - 1)), clipped."""
    bins = ops.round(ops.cast(values, "float32") * float(num_classes - 1))
    return ops.cast(ops.clip(bins, 0.0, float(num_classes - 1)), "int32")


def per_head_losses(labels, logits):
    """The loss of each head, `[num_heads]` float32 (steps 1-4 above).

    Args:
        labels: `[batch, rows, columns, num_heads, 2]` value and mask.
        logits: `[batch, rows, columns, num_heads, num_classes]`.
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "float32")
    num_classes = int(logits.shape[-1])
    targets = class_labels(labels[..., 0], num_classes)
    weights = labels[..., 1]
    cross_entropy = ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    weighted_sum = ops.sum(cross_entropy * weights, axis=(0, 1, 2))
    nonzero = ops.sum(ops.cast(ops.not_equal(weights, 0.0), "float32"), axis=(0, 1, 2))
    return weighted_sum / ops.maximum(nonzero, 1.0) / math.log(num_classes)


def total_loss(head_losses, num_input_heads: int):
    """0.5 * mean(input heads) + 0.5 * mean(target heads), a scalar.

    `head_losses` is `[num_heads]`, input heads first. With no target heads
    (an option beyond the paper) the total is the mean of the input heads.
    """
    num_heads = int(head_losses.shape[0])
    if not 0 < num_input_heads <= num_heads:
        raise ValueError(f"num_input_heads must be in 1..{num_heads}. Received: {num_input_heads}")
    input_mean = ops.mean(head_losses[:num_input_heads])
    if num_input_heads == num_heads:
        return input_mean
    return 0.5 * input_mean + 0.5 * ops.mean(head_losses[num_input_heads:])


# Log-spreads (standardized units) are clipped to this range in `gaussian_nll`: e^-5 to e^5.
LOG_SPREAD_RANGE = (-5.0, 5.0)
# beta-NLL (Seitzer et al. 2022): each pixel's NLL is weighted by s^(2 beta), without gradient through the weight,
# so a large predicted spread does not starve the mean of gradient. 0: the plain NLL (with it, the recipe's mean had
# learned nothing by step 200 on the sample: val Pearson r -0.17..0.03); 1: the mean gets exactly the MSE's
# gradient, and the spread is pulled towards the squared residual.
GAUSSIAN_NLL_BETA = 1.0


def gaussian_nll(standardized, mean, log_spread, weights, beta: float = GAUSSIAN_NLL_BETA):
    """Mean (beta-weighted) Gaussian negative log-likelihood (nats, without ln sqrt(2 pi)) over weighted pixels.

    `s^(2 beta) * (0.5 * ((y - mean) / s)^2 + ln s)` with `s = exp(log_spread)`
    and the factor `s^(2 beta)` held constant in the gradient: the
    heteroscedastic regression of Nix & Weigend (1994) / Kendall & Gal
    (2017) with the beta-NLL of Seitzer et al. (2022), on per-channel
    standardized targets. All arguments `[..., T]` float32; `weights` 1
    where the target is labelled, else 0.
    """
    log_spread = ops.clip(log_spread, *LOG_SPREAD_RANGE)
    nll = 0.5 * ops.square((standardized - mean) * ops.exp(-log_spread)) + log_spread
    if beta:
        nll = nll * ops.stop_gradient(ops.exp(2.0 * beta * log_spread))
    return ops.sum(nll * weights) / ops.maximum(ops.sum(weights), 1.0)


@keras.saving.register_keras_serializable(package="isl")
class ISLLoss(keras.losses.Loss):
    """The paper's total loss as a Keras loss on `(labels, logits)`.

    Args:
        channels: the vocabulary; only its head counts are used.
        num_input_heads, num_target_heads: instead of `channels`
            (used by `from_config`).
    """

    def __init__(
        self,
        channels: config_lib.ChannelConfig | None = None,
        *,
        num_input_heads: int | None = None,
        num_target_heads: int | None = None,
        name: str = "isl_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if channels is not None:
            num_input_heads = channels.num_input_heads
            num_target_heads = channels.num_target_heads
        if num_input_heads is None or num_target_heads is None:
            raise ValueError("ISLLoss needs `channels` or both head counts.")
        self.num_input_heads = int(num_input_heads)
        self.num_target_heads = int(num_target_heads)

    def call(self, y_true, y_pred):
        head_losses = per_head_losses(y_true, y_pred)
        return total_loss(head_losses, self.num_input_heads)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_input_heads=self.num_input_heads, num_target_heads=self.num_target_heads)
        return config
