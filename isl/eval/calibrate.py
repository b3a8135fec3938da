"""Calibration after training: per channel a temperature (256-bin heads) or a spread scale and histograms (read-out,
and the U-Net regression: `isl.eval.regression_calibration`).

A trained network's distributions can be too sharp (overconfident) or too
wide; on held-out rows of the real sample the shipped heads' 90% intervals held
fewer true values than 90%. Post-hoc calibration (Guo et al. 2017, "On
calibration of modern neural networks") fixes the width without touching
the weights:

* **heads** (256 bins): `p_T = softmax(logits / T)` with one temperature
  `T` per target channel. `T > 1` widens, `T < 1` sharpens; the argmax is
  unchanged, the median moves little.
* **read-out** (a normal distribution per pixel, `isl.model.readout`):
  `N(value, (s * spread)^2)` with one spread scale `s` per channel, mixed
  with conditional histograms of the true levels (`fit_readout`): a
  stain's background level, which holds up to 42% of its pixels, gets
  the mass a smooth curve cannot give it.

Each parameter minimises the mean negative log-likelihood of the true 8-bit
bins over the validation pixels (a strictly proper score, so the fit asks for
honest distributions, not only for a coverage figure), by golden-section
search over its logarithm in `[1/20, 20]`. The read-out's normal distribution
is scored on the same bins (`isl.eval.calibration.gaussian_bin_statistics`).

The marginal histogram that the information gain needs (the training data's
8-bit levels per channel, add-one smoothed) is computed here from the
training wells and region the user names, and stored beside the parameters
(`isl.io.calibration_file`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.data import assemble
from isl.data import convert
from isl.data import wells as wells_lib
from isl.eval import calibration as calibration_lib
from isl.io import calibration_file

# The least number of validation pixels with truth, per channel, to fit on.
MIN_PIXELS = 10_000
# At most this many validation pixels per channel enter the fit (a fixed-seed sample).
MAX_FIT_PIXELS = 200_000
SEARCH_RANGE = (1 / 20, 20.0)
SEARCH_ITERATIONS = 40
SAMPLE_SEED = 0
# The read-out's conditional histograms (`fit_readout`): equal-count groups of the predicted value and of the
# predicted spread, a pseudo count per bin, and rounds of coordinate descent of the weights and the scale.
HISTOGRAM_VALUE_GROUPS = 16
HISTOGRAM_SPREAD_GROUPS = 2
HISTOGRAM_PSEUDO_COUNT = 1.0
HISTOGRAM_ROUNDS = 3
# Output rows of one strip of the heads' run: bounds the `[rows, W, heads, 256]` log-probabilities held.
STRIP_BYTES = 256e6


def golden_section(function: Callable[[float], float], low: float, high: float,
                   iterations: int = SEARCH_ITERATIONS) -> float:
    """The minimiser of a unimodal `function` on [low, high], searched over log x."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = function(math.exp(c)), function(math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = function(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = function(math.exp(d))
    return math.exp((a + b) / 2)


def tempered_nll(log_probabilities: np.ndarray, bins: np.ndarray, temperature: float) -> float:
    """Mean `-ln softmax(log_probabilities / T)[bin]` (nats); `[N, C]`, `[N]`."""
    scaled = log_probabilities.astype(np.float64) / temperature
    top = scaled.max(axis=-1, keepdims=True)
    normaliser = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=-1))
    return float((normaliser - np.take_along_axis(scaled, bins[:, None], axis=-1)[:, 0]).mean())


def fit_temperature(log_probabilities: np.ndarray, bins: np.ndarray) -> float:
    """The temperature minimising `tempered_nll` on these pixels."""
    return golden_section(lambda value: tempered_nll(log_probabilities, bins, value), *SEARCH_RANGE)


def gaussian_bin_probability(value: np.ndarray, spread: np.ndarray, bins: np.ndarray, scale: float,
                             num_classes: int = 256) -> np.ndarray:
    """`P(bin)` of N(value, (scale * spread)^2) clipped to [0, 1] on the 8-bit bins, per pixel `[N]`."""
    from scipy.special import ndtr

    top = num_classes - 1
    sigma = np.maximum(spread.astype(np.float64) * scale, 1e-6)
    upper = np.where(bins >= top, 1.0, ndtr(((bins + 0.5) / top - value) / sigma))
    lower = np.where(bins <= 0, 0.0, ndtr(((bins - 0.5) / top - value) / sigma))
    return upper - lower


def gaussian_nll(value: np.ndarray, spread: np.ndarray, bins: np.ndarray, scale: float,
                 num_classes: int = 256, weight: np.ndarray | None = None,
                 histogram_probability: np.ndarray | None = None) -> float:
    """Mean `-ln P(bin)` of N(value, (scale * spread)^2) clipped to [0, 1] on the 8-bit bins (nats).

    With `weight` and `histogram_probability` (`[N]`: each pixel's histogram's
    probability of its true bin), of the mixture `(1 - w) N + w H`.
    """
    probability = gaussian_bin_probability(value, spread, bins, scale, num_classes)
    if weight is not None and histogram_probability is not None:
        probability = (1.0 - weight) * probability + weight * histogram_probability
    return float(-np.log(np.maximum(probability, calibration_lib.PROBABILITY_FLOOR)).mean())


def fit_spread_scale(value: np.ndarray, spread: np.ndarray, bins: np.ndarray, weight: np.ndarray | None = None,
                     histogram_probability: np.ndarray | None = None) -> float:
    """The spread scale minimising `gaussian_nll` on these pixels (of the mixture, if given)."""
    return golden_section(
        lambda scale: gaussian_nll(value, spread, bins, scale, weight=weight,
                                   histogram_probability=histogram_probability), *SEARCH_RANGE)


def fit_mixture_weight(probability: np.ndarray, histogram_probability: np.ndarray) -> float:
    """The weight `w` in [0, 1] maximising `mean ln((1 - w) p + w h)` over these pixels.

    The log-likelihood is concave in `w`, so the root of its derivative
    `mean((h - p) / ((1 - w) p + w h))` is found by bisection (0 or 1 when the
    derivative does not change sign).

    Args:
        probability: `[N]`, the normal curve's probability of each true bin.
        histogram_probability: `[N]`, the histogram's (positive).
    """
    if probability.size == 0:
        return 0.0
    p = np.maximum(probability.astype(np.float64), calibration_lib.PROBABILITY_FLOOR)
    h = np.maximum(histogram_probability.astype(np.float64), calibration_lib.PROBABILITY_FLOOR)

    def slope(weight: float) -> float:
        return float(((h - p) / ((1.0 - weight) * p + weight * h)).mean())

    low, high = 0.0, 1.0
    if slope(low) <= 0:
        return 0.0
    if slope(high) >= 0:
        return 1.0
    for _ in range(SEARCH_ITERATIONS + 10):
        middle = (low + high) / 2
        low, high = (middle, high) if slope(middle) > 0 else (low, middle)
    return (low + high) / 2


def equal_count_edges(values: np.ndarray, groups: int) -> list[float]:
    """Interior edges of `groups` equal-count groups of `values` (distinct, increasing; fewer when tied)."""
    return [float(edge) for edge in np.unique(np.quantile(values, np.arange(1, groups) / groups))]


def group_histograms(bins: np.ndarray, group: np.ndarray, num_groups: int,
                     pseudo_count: float = HISTOGRAM_PSEUDO_COUNT, num_classes: int = 256) -> np.ndarray:
    """`[num_groups, C]`: per group, the histogram of its true bins, `pseudo_count` added to every bin."""
    counts = np.zeros((num_groups, num_classes))
    np.add.at(counts, (group, bins), 1.0)
    counts += pseudo_count
    return counts / counts.sum(axis=1, keepdims=True)


def fit_readout(
    value: np.ndarray, spread: np.ndarray, bins: np.ndarray, histograms: bool = True,
    value_groups: int = HISTOGRAM_VALUE_GROUPS, spread_groups: int = HISTOGRAM_SPREAD_GROUPS,
) -> dict[str, Any]:
    """A read-out channel's calibration: its spread scale and, with `histograms`, conditional histograms.

    Without histograms: the spread scale minimising `gaussian_nll`. With them
    (`isl.eval.calibration.ReadoutDistribution`): the pixels are grouped by
    their predicted value (`value_groups` equal-count groups) and spread
    (`spread_groups`); per group, the histogram of the true 8-bit levels
    (`group_histograms`, +1 per bin) is mixed with the normal curve, with a
    weight per group. The stains' background level (up to 42% of a
    channel's pixels on one level) then gets the mass a smooth curve cannot
    give it. The weights and the scale minimise the NLL by coordinate descent
    (`HISTOGRAM_ROUNDS` rounds), each pixel's histogram probability
    **cross-fitted**: the first half of the pixels (in the order given, the
    top rows of the split) is scored by the second half's histograms and vice
    versa, so a weight measures how well a group's histogram carries to
    other rows, not how well it fits its own pixels (which would always
    favour `w = 1`). The stored histograms are those of all the pixels.

    Args:
        value, spread, bins: `[N]`, the read-out's value, spread and the true bins.

    Returns:
        The channel's parameters (`isl.io.calibration_file`).
    """
    scale = fit_spread_scale(value, spread, bins)
    if not histograms:
        return {"spread_scale": round(scale, 5)}
    parameters: dict[str, Any] = {"value_edges": equal_count_edges(value, value_groups),
                                  "spread_edges": equal_count_edges(spread, spread_groups)}
    num_groups = (len(parameters["value_edges"]) + 1) * (len(parameters["spread_edges"]) + 1)
    group = calibration_lib.histogram_group(parameters, value, spread)
    second = np.arange(len(bins)) >= len(bins) // 2
    first_table = group_histograms(bins[~second], group[~second], num_groups)
    second_table = group_histograms(bins[second], group[second], num_groups)
    crossed = np.where(second, first_table[group, bins], second_table[group, bins])
    weights = np.zeros(num_groups)
    for round_index in range(HISTOGRAM_ROUNDS):
        if round_index:
            scale = fit_spread_scale(value, spread, bins, weights[group], crossed)
        probability = gaussian_bin_probability(value, spread, bins, scale)
        weights = np.array([fit_mixture_weight(probability[group == index], crossed[group == index])
                            for index in range(num_groups)])
    table = group_histograms(bins, group, num_groups)
    return {"spread_scale": round(scale, 5), **parameters,
            "histogram_weights": [round(float(weight), 5) for weight in weights],
            "histograms": [[round(float(probability), 8) for probability in row] for row in table]}


def _sample(count: int, limit: int = MAX_FIT_PIXELS) -> np.ndarray:
    """Indices of at most `limit` of `count` items (all of them when fewer), fixed seed, sorted."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(count, limit, replace=False))


def region_window(spec: str, well: Any, flag: str) -> tuple[int, int, int, int]:
    """A "r0:r1,c0:c1" region (`isl.data.convert.parse_region`) resolved on a well: (r0, r1, c0, c1)."""
    return convert.well_window(well, convert.parse_region(spec, flag), flag)


def marginal(
    train_dirs: Sequence[str], region: str, config: Any, channels: Sequence[str]
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per channel, the training wells' 8-bit histogram inside `region` (add-one smoothed) and its pixel count.

    Raises:
        InputError: when a channel has no labelled pixel there.
    """

    collected: dict[str, list[np.ndarray]] = {channel: [] for channel in channels}
    for directory in train_dirs:
        well = wells_lib.read_checked_well(config, directory)  # As the model reads wells (map, normalisation).
        values, known = _truth(config, well, channels, region_window(region, well, "--train_region"))
        for index, channel in enumerate(channels):
            collected[channel].append(values[..., index][known[..., index]])
    histograms, counts = {}, {}
    for channel, parts in collected.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.size == 0:
            raise errors.InputError(f"--train_dir {', '.join(train_dirs)} has no {channel} truth inside "
                                    f"--train_region={region}: the marginal histogram needs the training labels.")
        histogram, counts[channel] = calibration_lib.marginal_histogram(values)
        histograms[channel] = [float(value) for value in histogram]
    return histograms, counts


def _truth(config: Any, well: Any, channels: Sequence[str], window: tuple[int, int, int, int] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """`[h, w, len(channels)]` truth values and boolean masks of a well, inside `window` (None: all of it)."""
    return assemble.target_window(well.targets, config.channels, tuple(well.inputs.shape[1:]), channels, window)


def _scores_heads(log_probabilities: np.ndarray, bins: np.ndarray, temperature: float,
                  histogram: np.ndarray) -> dict[str, float]:
    """Validation figures of the tempered heads (`isl.eval.calibration.calibration_metrics`)."""
    scaled = log_probabilities.astype(np.float64) / temperature
    probabilities = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    probability, below = calibration_lib.bin_statistics(probabilities, bins / (probabilities.shape[-1] - 1))
    crps = calibration_lib.discrete_crps(probabilities, bins / (probabilities.shape[-1] - 1))
    return _summary(calibration_lib.calibration_metrics(probability, below, crps=crps, true_bins=bins,
                                                        marginal=histogram))


def _scores_readout(value: np.ndarray, spread: np.ndarray, bins: np.ndarray, parameters: dict[str, Any],
                    histogram: np.ndarray) -> dict[str, float]:
    """Validation figures of the calibrated read-out (`parameters` as `calibration_lib.ReadoutDistribution`)."""
    distribution = calibration_lib.ReadoutDistribution.of(parameters, value, spread)
    probability, below, crps = distribution.bin_statistics(bins / 255)
    return _summary(calibration_lib.calibration_metrics(probability, below, crps=crps, true_bins=bins,
                                                        marginal=histogram))


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    keys = ("nll_nats", "information_gain_bits", "crps", "coverage_50", "coverage_90")
    return {key: round(float(metrics[key]), 5) for key in keys}


def calibrate(
    predictor: Any,
    well: Any,
    chosen: Sequence[str],
    kind: Any,
    data_dir: str,
    region: str,
    train_dirs: Sequence[str],
    train_region: str,
    requested: bool = False,
    min_pixels: int = MIN_PIXELS,
    progress: Callable[[], None] | None = None,
    readout_histograms: bool = True,
) -> calibration_file.Calibration:
    """Fits the calibration of a loaded model folder on a validation region (`isl.infer.kinds.registry.calibrate`).

    Args:
        predictor: the model folder, loaded with `apply_calibration=False`.
        well: the validation well, read as the model reads it.
        chosen: the target channels (the kind's `choose_channels`).
        kind: the folder's model kind (`isl.infer.kinds.base.ModelKind`): its `calibration_route`, and
            `calibration_data` / `fit_calibration` (collecting and fitting per channel).
        data_dir: the folder of the validation well (recorded).
        region: "r0:r1,c0:c1", the validation pixels.
        train_dirs, train_region: where the training labels are, for the marginal histogram.
        requested: the channels were named by the user (else those without truth are dropped).
        min_pixels: the least validation pixels with truth per channel.
        readout_histograms: a normal curve is mixed with conditional histograms of the true levels
            (`fit_readout`); False: the spread scale only.

    Raises:
        InputError: for a split without truth or with fewer than `min_pixels` labelled pixels.
    """
    start = time.perf_counter()
    window = region_window(region, well, "--region")
    _, masks = _truth(predictor.config, well, chosen)
    row0, row1, column0, column1 = window
    counts = {channel: int(masks[row0:row1, column0:column1, index].sum()) for index, channel in enumerate(chosen)}
    if not any(counts.values()):
        raise errors.InputError(f"{data_dir}: no truth of {', '.join(chosen)} inside --region={region}; "
                                "calibration needs the real stains of the validation split.")
    if not requested:  # By default, the channels the split has truth for.
        chosen = tuple(channel for channel in chosen if counts[channel])
        counts = {channel: counts[channel] for channel in chosen}
    short = {channel: count for channel, count in counts.items() if count < min_pixels}
    if short:
        raise errors.InputError(
            f"{data_dir} --region={region}: too few labelled pixels to calibrate ("
            + ", ".join(f"{channel} {count:,}" for channel, count in short.items())
            + f"; at least {min_pixels:,} per channel, --min_pixels).")
    histograms, marginal_counts = marginal(train_dirs, train_region, predictor.config, chosen)
    collected = kind.calibration_data(predictor, well, window, chosen, progress)
    parameters, scores = {}, {}
    for channel, data in collected.items():
        parameters[channel], scores[channel] = kind.fit_calibration(data, np.asarray(histograms[channel]),
                                                                    readout_histograms)
    return calibration_file.Calibration(
        route=kind.calibration_route,
        channels=parameters,
        marginal=histograms,
        marginal_source={"dirs": list(train_dirs), "region": train_region,
                         "num_pixels": marginal_counts, "pseudo_count": calibration_lib.MARGINAL_PSEUDO_COUNT},
        fitted_on={"dir": data_dir, "region": region, "num_pixels": counts,
                   "model_fingerprint": calibration_file.fingerprint(predictor.source),
                   "fit_pixels": {channel: int(len(collected[channel][-1])) for channel in chosen},
                   "seconds": round(time.perf_counter() - start, 1)},
        scores=scores,
    )
