"""`isl calibrate` for the U-Net regression (`model.architecture=unet_regression`): a distribution per pixel.

The regression U-Net predicts one value per pixel and no spread. Calibration
turns that value into the read-out's per-pixel distribution
(`isl.io.calibration_file.ReadoutDistribution`) with the read-out's machinery
(`isl.eval.calibrate.fit_readout`):

* the **spread** is one number per channel, the root-mean-square error of the
  (clipped) value on the validation pixels (`base_spread`, stored as
  `"spread"`), since the model predicts none; a model trained with
  `model.regression_spread` (recipe `unet_regression_spread`) predicts its
  own spread per pixel, and `"spread"` is then 1 (a factor on it);
* a **spread scale** `s` on it and **conditional histograms** of the true
  8-bit levels, grouped by the predicted value (16 equal-count groups) and,
  for a predicted spread, by that spread (2 groups; one when it is constant),
  each mixed with the normal curve `N(value, (s * spread)^2)` with a weight
  fitted out of sample (cross-fitted halves), exactly as for a read-out.

The value is the network's output de-standardised but **not clipped** (a
background pixel predicted at -0.02 is surer than one at 0.0), so the value
groups separate the background; the median written by `isl predict` is the
clipped value, the uncalibrated regression's median, so its Pearson r is
unchanged. The prediction runs over the validation window plus the same
context `isl predict --region` reads (`isl.infer.regression.context_pixels`),
so the fitted values are the ones `isl predict` later maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib

# The least spread (intensity units): one 8-bit level.
MIN_SPREAD = 1.0 / 255.0
ROUTE = "regression"


def window_values(predictor: Any, well: Any, window: tuple[int, int, int, int]
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(`[h, w, T]` unclipped intensities, `[h, w, T]` predicted spread or None) over `window` (r0, r1, c0, c1).

    T = the config's output target channels. As `isl predict --region` runs it:
    the window plus `context_pixels` of real image around it, one pass.
    """
    from isl.infer import regression

    config = predictor.config
    height, width = well.inputs.shape[1:]
    row0, row1, column0, column1 = window
    context = regression.context_pixels(config)
    top, left = max(0, row0 - context), max(0, column0 - context)
    bottom, right = min(height, row1 + context), min(width, column1 + context)
    values, spread = regression.predict_image(predictor.model, well.inputs[:, top:bottom, left:right], config,
                                              clip=False, with_spread=True)
    inside = (slice(row0 - top, row1 - top), slice(column0 - left, column1 - left))
    return values[inside], None if spread is None else spread[inside]


def collect(
    predictor: Any, well: Any, window: tuple[int, int, int, int], channels: Sequence[str],
    progress: Callable[[], None] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Per channel, (unclipped value, predicted spread or None, true bins), each `[N]`, of the validation pixels.

    At most `calibrate.MAX_FIT_PIXELS` per channel (the fixed-seed sample), in row order.
    """
    values, spread = window_values(predictor, well, window)
    if progress is not None:
        progress()
    truth, masks = calibrate_lib._truth(predictor.config, well, channels, window)
    targets = predictor.config.channels.output_target_channels
    collected = {}
    for index, channel in enumerate(channels):
        known = masks[..., index]
        bins = calibration_lib.true_bins(truth[..., index][known])
        keep = calibrate_lib._sample(len(bins))
        column = targets.index(channel)
        collected[channel] = (values[..., column][known][keep].astype(np.float64),
                              None if spread is None else spread[..., column][known][keep].astype(np.float64),
                              bins[keep])
    return collected


def base_spread(value: np.ndarray, bins: np.ndarray) -> float:
    """The root-mean-square error of the clipped value against the true levels (at least `MIN_SPREAD`)."""
    if value.size == 0:
        raise errors.InputError("No labelled validation pixel to fit the regression's spread on.")
    error = np.clip(value, 0.0, 1.0) - bins / 255.0
    return max(float(np.sqrt(np.mean(error**2))), MIN_SPREAD)


def spread_array(parameters: dict[str, Any], value: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
    """The channel's spread per pixel, shaped like `value`: `"spread"` times the predicted spread (if any)."""
    if predicted is None:
        return np.full(np.shape(value), float(parameters["spread"]), np.float32)
    return (np.asarray(predicted) * float(parameters["spread"])).astype(np.float32)


def fit(value: np.ndarray, bins: np.ndarray, histograms: bool = True,
        predicted: np.ndarray | None = None) -> dict[str, Any]:
    """One channel's parameters: `spread` (`base_spread`, or 1 with a `predicted` spread) and `fit_readout`'s."""
    if predicted is not None:
        parameters = calibrate_lib.fit_readout(value, predicted, bins, histograms)
        return {"spread": 1.0, **parameters}
    spread = base_spread(value, bins)
    parameters = calibrate_lib.fit_readout(value, np.full_like(value, spread), bins, histograms, spread_groups=1)
    return {"spread": round(spread, 6), **parameters}


def scores(value: np.ndarray, bins: np.ndarray, parameters: dict[str, Any],
           histogram: np.ndarray, predicted: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Validation figures: before (N(value, spread^2): the RMS error, or the predicted spread) and after."""
    spread = spread_array(parameters, value, predicted)
    return {"before": calibrate_lib._scores_readout(value, spread, bins, {}, histogram),
            "after": calibrate_lib._scores_readout(value, spread, bins, parameters, histogram)}


def distributions(calibration: Any, channels: Sequence[str], value: np.ndarray,
                  spread: np.ndarray | None = None) -> list[Any]:
    """Per channel, the calibrated regression's per-pixel distribution (`ReadoutDistribution`).

    Args:
        calibration: the applied `calibration_file.Calibration` (route "regression").
        value: `[H, W, len(channels)]` unclipped intensities (`window_values`).
        spread: the same shape, the predicted spread (`model.regression_spread`), or None.

    Raises:
        InputError: for a channel the calibration does not cover.
    """
    from isl.io import calibration_file

    missing = [channel for channel in channels if "spread" not in calibration.channels.get(channel, {})]
    if missing:
        calibrated = ",".join(calibration.channels)
        raise errors.InputError(f"calibration.json has no regression spread for {', '.join(missing)}: run isl "
                                f"calibrate for them, predict the calibrated ones (--channels={calibrated}), or "
                                "predict with --nocalibration.")
    result = []
    for index, channel in enumerate(channels):
        parameters = calibration.channels[channel]
        predicted = None if spread is None else spread[..., index]
        result.append(calibration_file.ReadoutDistribution.of(parameters, value[..., index],
                                                              spread_array(parameters, value[..., index], predicted)))
    return result
