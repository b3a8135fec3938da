"""`isl predict` for a calibrated U-Net regression: its value as a distribution per pixel.

`isl calibrate` on a `unet_regression` model folder (`isl.eval.regression_calibration`)
stores, per channel, a spread and the read-out's calibration (a spread scale,
conditional histograms of the true levels by predicted value, their weights).
`isl predict` then maps the regression's unclipped value through the
read-out's distribution (`isl.eval.calibration.ReadoutDistribution`) and
writes what a read-out writes: any of median, mean, std and quantiles qNN
(`isl.infer.readout.statistic_images`), the target panel, and with the truth
the calibration TIFFs that `isl evaluate` scores (`calibration_maps`).

The median **and the mean** stay the regression's clipped value, what the
uncalibrated model writes as both: trained on the squared error, the value is
the model's estimate of the mean, and the mixture's own bin mean is a worse
point estimate (on the sample's test rows, Pearson r 0.723 against 0.858 for
DAPI: the conditional histograms group the value into 16 levels). The std, the
quantiles and the calibration TIFFs come from the calibrated distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.eval import regression_calibration
from isl.infer import readout as readout_infer
from isl.model import readout as readout_lib
from isl.model import statistic_names


def check_statistics(statistics: Sequence[str]) -> None:
    """Raises InputError for a statistic a calibrated regression does not give (the read-out's: median, mean, std,
    quantiles qNN)."""
    known, _ = statistic_names.parse_statistic_names(statistics)
    unsupported = [name for name in known if name not in readout_lib.STATISTICS]
    if unsupported:
        raise errors.InputError(f"--statistics={','.join(unsupported)}: a calibrated U-Net regression gives "
                                f"{', '.join(readout_lib.STATISTICS)} and quantiles qNN.")


def write_band(predictor: Any, writer: Any, band0: int, channels: Sequence[str], statistics: Sequence[str],
               value: np.ndarray, spread: np.ndarray | None = None) -> None:
    """Writes one band of rows of a calibrated regression: its statistics and, with the truth, its calibration maps.

    Args:
        predictor: a `unet_regression` model folder with its calibration applied.
        writer: the well's `isl.infer.bands.BandWriter`.
        band0: the band's first image row.
        statistics: read-out statistic names (checked by the caller).
        value: `[rows, w, len(channels)]` unclipped intensities of the band.
        spread: the same shape, the predicted spread (`model.regression_spread`), or None.
    """
    distributions = regression_calibration.distributions(predictor.applied_calibration, channels, value, spread)
    images = readout_infer.statistic_images(distributions, tuple(dict.fromkeys(tuple(statistics) + ("median",))))
    if "mean" in images:  # The regression's own value (MSE: its estimate of the mean), as the median is.
        images["mean"] = np.clip(value, 0.0, 1.0).astype(np.float32)
    readout_infer.write_distribution_band(writer, band0, images, distributions)
