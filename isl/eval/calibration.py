"""Is the per-pixel uncertainty honest? Calibration of the predicted distributions.

Every pixel of every target channel is a categorical distribution over 256
intensity bins (isl_reference.md §2). `isl predict`, when the well holds the
truth, stores for each pixel two numbers of that distribution, evaluated at
the true bin `t = round(255 * truth)`:

* `p = P(bin = t)`, the probability of the true bin, and
* `F = P(bin < t)`, the cumulative probability strictly below it.

From them:

* **Negative log-likelihood** per pixel, `-ln p` (nats; 0 is perfect and
  `ln 256 = 5.545` is a uniform predictor). `normalized_nll` divides by
  `ln 256`, the paper's loss scale (§2). `p` is floored at 1e-7.
* **Randomized probability integral transform** `PIT = F + U p`, `U`
  uniform on [0, 1] (fixed seed). For a calibrated discrete predictor the PIT
  is exactly uniform on [0, 1] (Czado, Gneiting and Held 2009). The fraction
  of pixels with `0.25 <= PIT <= 0.75` is the coverage of the central 50%
  predictive interval, and `0.05 <= PIT <= 0.95` of the central 90% interval;
  honest intervals give 0.50 and 0.90. The randomization splits the true
  bin's mass as a continuous predictive distribution would, so the interval
  coverage is not inflated by the 8-bit discretization.
"""

from __future__ import annotations

import math

import numpy as np

PROBABILITY_FLOOR = 1e-7
PIT_BINS = 10
PIT_SEED = 0
INTERVALS = (0.5, 0.9)


def pit(true_bin_probability: np.ndarray, cdf_below_true: np.ndarray, seed: int = PIT_SEED) -> np.ndarray:
    """Randomized PIT values, same shape as the inputs (NaN stays NaN)."""
    probability = np.asarray(true_bin_probability, dtype=np.float64)
    below = np.asarray(cdf_below_true, dtype=np.float64)
    uniform = np.random.default_rng(seed).random(probability.shape)
    return np.clip(below + uniform * probability, 0.0, 1.0)


def calibration_metrics(
    true_bin_probability: np.ndarray,
    cdf_below_true: np.ndarray,
    mask: np.ndarray | None = None,
    num_classes: int = 256,
) -> dict[str, float | list[float]]:
    """NLL, interval coverage and the PIT histogram over the (masked) pixels.

    Args:
        true_bin_probability: `p` per pixel, any shape, NaN where unknown.
        cdf_below_true: `F` per pixel, the same shape.
        mask: optional boolean selection of pixels.
        num_classes: bins of the distribution (for `normalized_nll`).

    Returns:
        `nll_nats`, `normalized_nll`, `coverage_50`, `coverage_90`,
        `pit_histogram` (fractions in 10 equal bins; 0.1 each if calibrated),
        `pit_max_deviation` (largest |fraction - 0.1|), `num_pixels`.
    """
    probability = np.asarray(true_bin_probability, dtype=np.float64)
    below = np.asarray(cdf_below_true, dtype=np.float64)
    if probability.shape != below.shape:
        raise ValueError(f"Shapes differ: {probability.shape} and {below.shape}.")
    values = pit(probability, below)
    keep = np.isfinite(probability) & np.isfinite(below)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    count = int(keep.sum())
    if count == 0:
        nan = math.nan
        return {
            "nll_nats": nan,
            "normalized_nll": nan,
            "coverage_50": nan,
            "coverage_90": nan,
            "pit_histogram": [nan] * PIT_BINS,
            "pit_max_deviation": nan,
            "num_pixels": 0,
        }
    nll = -np.log(np.maximum(probability[keep], PROBABILITY_FLOOR))
    values = values[keep]
    result: dict[str, float | list[float]] = {
        "nll_nats": float(nll.mean()),
        "normalized_nll": float(nll.mean() / math.log(num_classes)),
    }
    for interval in INTERVALS:
        low, high = 0.5 - interval / 2, 0.5 + interval / 2
        result[f"coverage_{round(interval * 100)}"] = float(((values >= low) & (values <= high)).mean())
    histogram = np.histogram(values, bins=PIT_BINS, range=(0.0, 1.0))[0] / count
    result["pit_histogram"] = [float(value) for value in histogram]
    result["pit_max_deviation"] = float(np.abs(histogram - 1.0 / PIT_BINS).max())
    result["num_pixels"] = count
    return result


def bin_statistics(probabilities: np.ndarray, true_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of what `isl predict` stores: (p, F) at the true bins.

    Args:
        probabilities: `[..., num_classes]`, each summing to 1.
        true_values: `[...]` in [0, 1].
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    bins = np.clip(np.round(np.asarray(true_values) * (probabilities.shape[-1] - 1)), 0, probabilities.shape[-1] - 1)
    bins = bins.astype(np.int64)[..., np.newaxis]
    probability = np.take_along_axis(probabilities, bins, axis=-1)[..., 0]
    below = np.take_along_axis(np.cumsum(probabilities, axis=-1), bins, axis=-1)[..., 0] - probability
    return probability, below
