"""`isl calibrate` for the U-Net regression (`model.architecture=unet_regression`): a distribution per pixel.

The regression U-Net predicts one value per pixel and no spread. Calibration
turns that value into the read-out's per-pixel distribution
(`isl.io.calibration_file.ReadoutDistribution`) with the read-out's machinery
(`isl.eval.calibrate.fit_readout`):

* the **spread** is one number per channel, the root-mean-square error of the
  (clipped) value on the validation pixels (`base_spread`, stored as
  `"spread"`), since the model predicts none;
* a **spread scale** `s` on it and **conditional histograms** of the true
  8-bit levels, grouped by the predicted value (16 equal-count groups; one
  spread group, the spread being constant), each mixed with the normal curve
  `N(value, (s * spread)^2)` with a weight fitted out of sample (cross-fitted
  halves), exactly as for a read-out.

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


def window_values(predictor: Any, well: Any, window: tuple[int, int, int, int]) -> np.ndarray:
    """`[h, w, T]` float32: the regression's unclipped intensities over `window` (r0, r1, c0, c1) of a well.

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
    values = regression.predict_image(predictor.model, well.inputs[:, top:bottom, left:right], config, clip=False)
    return values[row0 - top : row1 - top, column0 - left : column1 - left]


def collect(
    predictor: Any, well: Any, window: tuple[int, int, int, int], channels: Sequence[str],
    progress: Callable[[], None] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per channel, (unclipped value, true bins), each `[N]`, of the validation pixels with truth.

    At most `calibrate.MAX_FIT_PIXELS` per channel (the fixed-seed sample), in row order.
    """
    values = window_values(predictor, well, window)
    if progress is not None:
        progress()
    truth, masks = calibrate_lib._truth(predictor.config, well, channels, window)
    targets = predictor.config.channels.output_target_channels
    collected = {}
    for index, channel in enumerate(channels):
        known = masks[..., index]
        bins = calibration_lib.true_bins(truth[..., index][known])
        keep = calibrate_lib._sample(len(bins))
        collected[channel] = (values[..., targets.index(channel)][known][keep].astype(np.float64), bins[keep])
    return collected


def base_spread(value: np.ndarray, bins: np.ndarray) -> float:
    """The root-mean-square error of the clipped value against the true levels (at least `MIN_SPREAD`)."""
    if value.size == 0:
        raise errors.InputError("No labelled validation pixel to fit the regression's spread on.")
    error = np.clip(value, 0.0, 1.0) - bins / 255.0
    return max(float(np.sqrt(np.mean(error**2))), MIN_SPREAD)


def spread_array(parameters: dict[str, Any], value: np.ndarray) -> np.ndarray:
    """The channel's constant spread, shaped like `value` (float32)."""
    return np.full(np.shape(value), float(parameters["spread"]), np.float32)


def fit(value: np.ndarray, bins: np.ndarray, histograms: bool = True) -> dict[str, Any]:
    """One channel's parameters: `spread` (`base_spread`) and `fit_readout`'s on that constant spread."""
    spread = base_spread(value, bins)
    parameters = calibrate_lib.fit_readout(value, np.full_like(value, spread), bins, histograms, spread_groups=1)
    return {"spread": round(spread, 6), **parameters}


def scores(value: np.ndarray, bins: np.ndarray, parameters: dict[str, Any],
           histogram: np.ndarray) -> dict[str, dict[str, float]]:
    """Validation figures: before (N(value, spread^2), the RMS error as the spread) and after calibration."""
    spread = spread_array(parameters, value)
    return {"before": calibrate_lib._scores_readout(value, spread, bins, {}, histogram),
            "after": calibrate_lib._scores_readout(value, spread, bins, parameters, histogram)}


def distributions(calibration: Any, channels: Sequence[str], value: np.ndarray) -> list[Any]:
    """Per channel, the calibrated regression's per-pixel distribution (`ReadoutDistribution`).

    Args:
        calibration: the applied `calibration_file.Calibration` (route "regression").
        value: `[H, W, len(channels)]` unclipped intensities (`window_values`).

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
        result.append(calibration_file.ReadoutDistribution.of(parameters, value[..., index],
                                                              spread_array(parameters, value[..., index])))
    return result
