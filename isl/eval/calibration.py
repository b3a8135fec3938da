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

Proper scores (strictly proper: only the true distribution minimises them in
expectation; Gneiting and Raftery 2007):

* **Log score** `-log2 p` in bits per pixel (the NLL in another unit).
* **Information gain** over a marginal `m` (the training data's histogram of
  8-bit intensities per channel, 256 bins): `mean(log2 p - log2 m[t])` bits
  per pixel, the score proposed for virtual staining in "A Proper Scoring Rule
  for Virtual Staining" (arXiv 2602.23305). 0 means the input told the model
  nothing beyond the intensity histogram; positive is better. Predicting the
  marginal itself scores exactly 0.
* **CRPS** (continuous ranked probability score, Matheson and Winkler 1976;
  Hersbach 2000) in intensity units ([0, 1] = 0..255 levels), for the
  step CDF `C_k = P(bin <= k)` of the bins `v_k = k / 255`:
  `CRPS = sum_{k=0}^{254} (C_k - 1[k >= t])^2 / 255`, the integral of the
  squared difference between the predicted CDF and the truth's step. For a
  point forecast it is the absolute error; lower is better.

Every route is scored on the same 256 bins: a route that predicts a normal
distribution N(mu, sigma^2) clipped to [0, 1] (the read-out) is discretised
with the bins' edges at `(k +- 0.5) / 255` (`gaussian_bin_statistics`), so
its log score and information gain are comparable with the heads'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

PROBABILITY_FLOOR = 1e-7
PIT_BINS = 10
PIT_SEED = 0
# Pixels per band of `calibration_metrics` (its float64 temporaries are a few of these).
BAND_PIXELS = 1 << 20
INTERVALS = (0.5, 0.9)
# Add-one smoothing of the marginal histogram: a level never seen in training
# keeps a finite log probability (documented with the information gain).
MARGINAL_PSEUDO_COUNT = 1.0


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
    crps: np.ndarray | None = None,
    true_bins: np.ndarray | None = None,
    marginal: np.ndarray | None = None,
) -> dict[str, float | list[float]]:
    """Proper scores, interval coverage and the PIT histogram over the (masked) pixels.

    Args:
        true_bin_probability: `p` per pixel, any shape, NaN where unknown.
        cdf_below_true: `F` per pixel, the same shape.
        mask: optional boolean selection of pixels.
        num_classes: bins of the distribution (for `normalized_nll`).
        crps: optional CRPS per pixel (same shape), averaged into `crps`.
        true_bins: the true bins `t` per pixel (same shape, int), needed with
            `marginal`.
        marginal: optional `[num_classes]` marginal probabilities (sum 1) for
            the information gain.

    Returns:
        `nll_nats`, `normalized_nll`, `log_score_bits`, `crps` (NaN without
        `crps`), `information_gain_bits` and `marginal_log_score_bits` (NaN
        without `marginal`), `coverage_50`, `coverage_90`, `pit_histogram`
        (fractions in 10 equal bins; 0.1 each if calibrated),
        `pit_max_deviation` (largest |fraction - 0.1|), `num_pixels`.
    """
    probability_all, below_all = np.asarray(true_bin_probability), np.asarray(cdf_below_true)
    if probability_all.shape != below_all.shape:
        raise ValueError(f"Shapes differ: {probability_all.shape} and {below_all.shape}.")
    if marginal is not None and true_bins is None:
        raise ValueError("The information gain needs the true bins with the marginal.")
    # Band by band of rows (the leading axis; C order), drawing the PIT's uniforms in the same order as one
    # whole draw (`pit`), so the figures equal the whole-array ones (sums pooled over bands) and the float64
    # temporaries are one band's.
    rows = probability_all.reshape(probability_all.shape[0] if probability_all.ndim > 1 else 1, -1)
    shape = rows.shape
    flat = {name: None if array is None else np.asarray(array).reshape(shape)
            for name, array in (("below", below_all), ("mask", mask), ("crps", crps), ("bins", true_bins))}
    generator = np.random.default_rng(PIT_SEED)
    marginal_values = None if marginal is None else np.asarray(marginal, dtype=np.float64)
    count, nll_sum, crps_sum, marginal_sum = 0, 0.0, 0.0, 0.0
    inside = dict.fromkeys(INTERVALS, 0)
    histogram = np.zeros(PIT_BINS, np.int64)
    band_rows = max(1, BAND_PIXELS // max(1, shape[1]))
    for start in range(0, shape[0], band_rows):
        band = slice(start, min(start + band_rows, shape[0]))
        probability = rows[band].astype(np.float64)
        below = flat["below"][band].astype(np.float64)
        uniform = generator.random(probability.shape)
        values = np.clip(below + uniform * probability, 0.0, 1.0)
        keep = np.isfinite(probability) & np.isfinite(below)
        if flat["mask"] is not None:
            keep &= flat["mask"][band].astype(bool)
        count += int(keep.sum())
        nll_sum += float((-np.log(np.maximum(probability[keep], PROBABILITY_FLOOR))).sum())
        if flat["crps"] is not None:
            crps_sum += float(flat["crps"][band].astype(np.float64)[keep].sum())
        if marginal_values is not None:
            marginal_sum += float((-np.log2(marginal_values[flat["bins"][band][keep].astype(np.int64)])).sum())
        values = values[keep]
        for interval in INTERVALS:
            low, high = 0.5 - interval / 2, 0.5 + interval / 2
            inside[interval] += int(((values >= low) & (values <= high)).sum())
        histogram += np.histogram(values, bins=PIT_BINS, range=(0.0, 1.0))[0]
    if count == 0:
        nan = math.nan
        return {
            "nll_nats": nan,
            "normalized_nll": nan,
            "log_score_bits": nan,
            "crps": nan,
            "information_gain_bits": nan,
            "marginal_log_score_bits": nan,
            "coverage_50": nan,
            "coverage_90": nan,
            "pit_histogram": [nan] * PIT_BINS,
            "pit_max_deviation": nan,
            "num_pixels": 0,
        }
    nll = nll_sum / count
    result: dict[str, float | list[float]] = {
        "nll_nats": float(nll),
        "normalized_nll": float(nll / math.log(num_classes)),
        "log_score_bits": float(nll / math.log(2)),
        "crps": math.nan,
        "information_gain_bits": math.nan,
        "marginal_log_score_bits": math.nan,
    }
    if crps is not None:
        result["crps"] = float(crps_sum / count)
    if marginal_values is not None:
        result["marginal_log_score_bits"] = float(marginal_sum / count)
        result["information_gain_bits"] = float(marginal_sum / count - nll / math.log(2))
    for interval in INTERVALS:
        result[f"coverage_{round(interval * 100)}"] = float(inside[interval] / count)
    fractions = histogram / count
    result["pit_histogram"] = [float(value) for value in fractions]
    result["pit_max_deviation"] = float(np.abs(fractions - 1.0 / PIT_BINS).max())
    result["num_pixels"] = count
    return result


def true_bins(true_values: np.ndarray, num_classes: int = 256) -> np.ndarray:
    """The 8-bit bin of each true value in [0, 1]: `round(255 * value)`, int64 (NaN -> 0)."""
    scaled = np.round(np.nan_to_num(np.asarray(true_values, dtype=np.float64)) * (num_classes - 1))
    return np.clip(scaled, 0, num_classes - 1).astype(np.int64)


def bin_statistics(probabilities: np.ndarray, true_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of what `isl predict` stores: (p, F) at the true bins.

    Args:
        probabilities: `[..., num_classes]`, each summing to 1.
        true_values: `[...]` in [0, 1].
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    bins = true_bins(true_values, probabilities.shape[-1])[..., np.newaxis]
    probability = np.take_along_axis(probabilities, bins, axis=-1)[..., 0]
    below = np.take_along_axis(np.cumsum(probabilities, axis=-1), bins, axis=-1)[..., 0] - probability
    return probability, below


def discrete_crps(probabilities: np.ndarray, true_values: np.ndarray) -> np.ndarray:
    """CRPS of 256-bin distributions (module docstring), intensity units; `[..., C]`, `[...]` -> `[...]`."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = probabilities.shape[-1]
    cumulative = np.cumsum(probabilities, axis=-1)[..., :-1]
    step = np.arange(num_classes - 1) >= true_bins(true_values, num_classes)[..., np.newaxis]
    return ((cumulative - step) ** 2).sum(axis=-1) / (num_classes - 1)


def gaussian_bin_probabilities(mean: np.ndarray, std: np.ndarray, num_classes: int = 256) -> np.ndarray:
    """N(mean, std^2) clipped to [0, 1], as probabilities of the 8-bit bins: `[...]` -> `[..., C]`.

    Bin k holds `[(k - 0.5) / 255, (k + 0.5) / 255)`; the tails below 0 and
    above 1 fall into the first and last bin (the clipping).
    """
    from scipy.special import ndtr

    top = num_classes - 1
    edges = (np.arange(num_classes - 1) + 0.5) / top  # Upper edges of bins 0..C-2.
    mean = np.asarray(mean, dtype=np.float64)[..., np.newaxis]
    std = np.maximum(np.asarray(std, dtype=np.float64), 1e-6)[..., np.newaxis]
    cumulative = ndtr((edges - mean) / std)
    ones = np.ones(cumulative.shape[:-1] + (1,))
    cumulative = np.concatenate([cumulative, ones], axis=-1)
    return np.diff(cumulative, axis=-1, prepend=0.0)


def mixture_bin_probabilities(
    mean: np.ndarray, std: np.ndarray, weight: np.ndarray | None = None, histograms: np.ndarray | None = None,
    num_classes: int = 256,
) -> np.ndarray:
    """`(1 - w) * gaussian_bin_probabilities(mean, std) + w * histograms`: `[N]` ... -> `[N, C]`.

    The calibrated read-out's distribution (`ReadoutDistribution`):
    its normal curve mixed with a 256-bin histogram per pixel (`histograms`
    `[N, C]`, each summing to 1) with weight `w` `[N]`. Without them, the normal curve alone.
    """
    probabilities = gaussian_bin_probabilities(mean, std, num_classes)
    if weight is None or histograms is None:
        return probabilities
    weight = np.asarray(weight, dtype=np.float64)[..., np.newaxis]
    return (1.0 - weight) * probabilities + weight * np.asarray(histograms, dtype=np.float64)


def gaussian_bin_statistics(
    mean: np.ndarray, std: np.ndarray, true_values: np.ndarray, num_classes: int = 256, chunk: int = 16384,
    weight: np.ndarray | None = None, group: np.ndarray | None = None, histograms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, F, CRPS) at the true bins of `gaussian_bin_probabilities`; float32, the inputs' shape.

    With `weight` and `group` (the inputs' shape) and `histograms` `[G, C]`,
    of `mixture_bin_probabilities` with pixel i's histogram `histograms[group[i]]`
    (a calibrated read-out). NaN where `true_values` is NaN. Computed
    `chunk` pixels at a time (a `[chunk, C]` array), so a whole well needs
    little memory.
    """
    mean, std, truth = (np.asarray(array, dtype=np.float64) for array in (mean, std, true_values))
    shape = truth.shape
    mean, std, truth = (np.broadcast_to(array, shape).reshape(-1) for array in (mean, std, truth))
    mixed = weight is not None and group is not None and histograms is not None
    if mixed:
        weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), shape).reshape(-1)
        group = np.broadcast_to(np.asarray(group), shape).reshape(-1)
        histograms = np.asarray(histograms, dtype=np.float64)
    results = [np.full(truth.size, np.nan, np.float32) for _ in range(3)]
    known = np.flatnonzero(np.isfinite(truth))
    for first in range(0, known.size, chunk):
        index = known[first : first + chunk]
        probabilities = mixture_bin_probabilities(
            mean[index], std[index], weight[index] if mixed else None,
            histograms[group[index]] if mixed else None, num_classes)
        probability, below = bin_statistics(probabilities, truth[index])
        results[0][index] = probability
        results[1][index] = below
        results[2][index] = discrete_crps(probabilities, truth[index])
    return tuple(result.reshape(shape) for result in results)


def marginal_histogram(
    true_values: np.ndarray, num_classes: int = 256, pseudo_count: float = MARGINAL_PSEUDO_COUNT
) -> tuple[np.ndarray, int]:
    """The marginal distribution of 8-bit levels: (probabilities `[C]` summing to 1, pixels counted).

    Args:
        true_values: values in [0, 1], any shape; NaN are skipped.
        pseudo_count: added to every bin's count (add-one smoothing).
    """
    values = np.asarray(true_values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    counts = np.bincount(true_bins(values, num_classes), minlength=num_classes).astype(np.float64) + pseudo_count
    return counts / counts.sum(), int(values.size)


@dataclasses.dataclass(frozen=True)
class ReadoutDistribution:
    """One read-out channel's per-pixel distribution, as `isl calibrate` shaped it.

    `(1 - w) * N(value, spread^2) + w * H[g]` on the 8-bit bins (clipped to
    [0, 1], `mixture_bin_probabilities`): `spread` the
    read-out's times the spread scale; `g` the pixel's group, by its
    predicted value (cut at `value_edges`) and spread (cut at
    `spread_edges`); `H[g]` the histogram of the true levels of the
    validation pixels of that group and `w` its weight, both fitted by
    `isl calibrate`. Without histograms (an uncalibrated read-out, or an
    older record with only a spread scale), the normal curve alone.

    Its parameters are read and checked by `isl.io.calibration_file`. The one place the calibration shapes
    the read-out's distribution:
    `isl predict`'s statistics and calibration maps and `isl calibrate`'s
    validation figures all come from here.
    """

    value: np.ndarray  # Any shape, the read-out's centre (unclipped).
    spread: np.ndarray  # The same shape, scaled.
    weight: np.ndarray | None = None  # The same shape, in [0, 1].
    group: np.ndarray | None = None  # The same shape, int: a row of `histograms`.
    histograms: np.ndarray | None = None  # [groups, 256].

    @classmethod
    def of(cls, parameters: dict[str, Any], value: np.ndarray, spread: np.ndarray) -> ReadoutDistribution:
        """From a channel's `channels` entry (empty: uncalibrated) and the read-out's value and spread."""
        value = np.asarray(value)
        scaled = np.asarray(spread) * np.float32(parameters.get("spread_scale", 1.0))
        if "histograms" not in parameters:
            return cls(value, scaled)
        group = histogram_group(parameters, value, np.asarray(spread))
        weight = np.asarray(parameters["histogram_weights"], np.float32)[group]
        return cls(value, scaled, weight, group, np.asarray(parameters["histograms"], np.float64))

    @property
    def mixed(self) -> bool:
        return self.histograms is not None

    def bin_statistics(self, true_values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p, F, CRPS) at the true bins, as `gaussian_bin_statistics`."""
        return gaussian_bin_statistics(self.value, self.spread, true_values, weight=self.weight,
                                                       group=self.group, histograms=self.histograms)

    def bin_probabilities(self, index: np.ndarray) -> np.ndarray:
        """`[len(index), 256]` probabilities of the pixels at these flat indices."""
        mixed = self.mixed
        return mixture_bin_probabilities(
            self.value.reshape(-1)[index], self.spread.reshape(-1)[index],
            self.weight.reshape(-1)[index] if mixed else None,
            self.histograms[self.group.reshape(-1)[index]] if mixed else None)


def histogram_group(parameters: dict[str, Any], value: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Each pixel's group: `digitize(value, value_edges) * (len(spread_edges) + 1) + digitize(spread, ...)`.

    `value` and `spread` as the read-out predicts them (before the spread scale).
    """
    spread_groups = len(parameters["spread_edges"]) + 1
    return (np.digitize(value, np.asarray(parameters["value_edges"], np.float64)) * spread_groups
            + np.digitize(spread, np.asarray(parameters["spread_edges"], np.float64)))
