"""`isl calibrate` for the U-Net regression (`model.architecture=unet_regression`): a distribution per pixel.

The regression U-Net predicts one value per pixel and no spread. Calibration
turns that value into the read-out's per-pixel distribution
(`isl.eval.calibration.ReadoutDistribution`) with the read-out's machinery
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

from collections.abc import Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib

# The least spread (intensity units): one 8-bit level.
MIN_SPREAD = 1.0 / 255.0
ROUTE = "regression"


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
        result.append(calibration_lib.ReadoutDistribution.of(parameters, value[..., index],
                                                              spread_array(parameters, value[..., index], predicted)))
    return result
