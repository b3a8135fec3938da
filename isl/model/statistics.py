"""Summary statistics of per-pixel intensity distributions (isl_reference.md §2).

The released `ops.distribution_statistics`: for probabilities p_k over C
classes whose values are v_k = k / (C - 1),

| statistic | definition |
|---|---|
| mode | argmax_k p_k / (C - 1) |
| median | index of the first class whose cumulative probability reaches 0.5, / (C - 1) |
| mean | sum_k p_k v_k |
| std | sqrt(sum_k p_k (v_k - mean)^2) |
| p_nonzero | 1 - p_0 |
| entropy | -sum_k p_k ln(p_k + 1e-7) / ln C |

Only `keras.ops` is used, so the functions work eagerly, inside
`tf.function`s and in exported SavedModels. Everything is computed in
float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from isl.model.statistic_names import STATISTICS  # The names are owned there (keras-free).

# Added inside the logarithm of the entropy, as the released code.
ENTROPY_EPSILON = 1e-7


def probabilities_from_logits(logits):
    """Softmax over the last (class) axis, in float32."""
    return ops.softmax(ops.cast(logits, "float32"), axis=-1)


def distribution_statistics(probabilities, names: Sequence[str] = STATISTICS) -> dict:
    """Summary statistics of categorical distributions over intensity bins.

    Args:
        probabilities: `[..., num_classes]`, each distribution summing to 1.
        names: which statistics, from `STATISTICS`.

    Returns:
        `{name: [...] float32}` in the order of `names`, values in [0, 1].

    Raises:
        ValueError: for an unknown statistic name.
    """
    unknown = [name for name in names if name not in STATISTICS]
    if unknown:
        raise ValueError(f"Unknown statistic(s) {unknown}. Known: {', '.join(STATISTICS)}")
    probabilities = ops.cast(probabilities, "float32")
    num_classes = int(probabilities.shape[-1])
    top = float(max(num_classes - 1, 1))
    values = ops.arange(num_classes, dtype="float32") / top
    results = {}
    mean = None
    if "mean" in names or "std" in names:
        mean = ops.sum(probabilities * values, axis=-1)
    for name in names:
        if name == "mode":
            results[name] = ops.cast(ops.argmax(probabilities, axis=-1), "float32") / top
        elif name == "median":
            below_half = ops.cast(ops.less(ops.cumsum(probabilities, axis=-1), 0.5), "float32")
            # At most C - 1: guards distributions summing to slightly < 1.
            index = ops.minimum(ops.sum(below_half, axis=-1), top)
            results[name] = index / top
        elif name == "mean":
            results[name] = mean
        elif name == "std":
            deviation = values - ops.expand_dims(mean, -1)
            variance = ops.sum(probabilities * deviation * deviation, axis=-1)
            results[name] = ops.sqrt(ops.maximum(variance, 0.0))
        elif name == "p_nonzero":
            results[name] = 1.0 - probabilities[..., 0]
        elif name == "entropy":
            log_terms = probabilities * ops.log(probabilities + ENTROPY_EPSILON)
            results[name] = -ops.sum(log_terms, axis=-1) / math.log(num_classes)
    return results
