"""Image metrics of a prediction against the truth; NumPy only, model-agnostic.

The paper's accuracy figure is Pearson's r of the median prediction against
the ground truth on test wells (isl_reference.md §6.1, §8.1 #14). The released
code computes none of these; they are written here from their textbook
definitions. Images are float arrays in [0, 1] (data range 1). A boolean
`mask` restricts a metric to the pixels where the truth exists.
"""

from __future__ import annotations

import math

import numpy as np

# SSIM constants (Wang et al. 2004): 11-tap Gaussian window, sigma 1.5.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _select(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"Prediction {prediction.shape} and truth {truth.shape} differ in shape.")
    keep = np.isfinite(prediction) & np.isfinite(truth)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    return prediction[keep], truth[keep]


def pearson(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson's r over the (masked) pixels; NaN if either image is constant."""
    x, y = _select(prediction, truth, mask)
    if x.size < 2:
        return math.nan
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denominator == 0:
        return math.nan
    return float(np.dot(x, y) / denominator)


def mae(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error."""
    x, y = _select(prediction, truth, mask)
    return float(np.abs(x - y).mean()) if x.size else math.nan


def rmse(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root mean squared error."""
    x, y = _select(prediction, truth, mask)
    return float(np.sqrt(np.square(x - y).mean())) if x.size else math.nan


def psnr(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, `10 log10(range^2 / MSE)`; inf if equal."""
    error = rmse(prediction, truth, mask)
    if math.isnan(error):
        return math.nan
    if error == 0:
        return math.inf
    return float(20 * math.log10(data_range / error))


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    window = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return window / window.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D image with a 1-D window."""
    size = len(window)
    rows = sum(window[k] * image[k : image.shape[0] - size + 1 + k] for k in range(size))
    return sum(window[k] * rows[:, k : rows.shape[1] - size + 1 + k] for k in range(size))


def ssim_map(prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """The SSIM map of two 2-D images over the 'valid' window positions.

    Gaussian window of 11 taps, sigma 1.5, K1 = 0.01, K2 = 0.03 (Wang et al.
    2004). Returns `[height - 10, width - 10]`.
    """
    x = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"SSIM needs two 2-D images of one shape; got {x.shape} and {y.shape}.")
    if min(x.shape) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} px per side; got {x.shape}.")
    window = _gaussian_window()
    mean_x = _filter_valid(x, window)
    mean_y = _filter_valid(y, window)
    variance_x = _filter_valid(x * x, window) - mean_x**2
    variance_y = _filter_valid(y * y, window) - mean_y**2
    covariance = _filter_valid(x * y, window) - mean_x * mean_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (variance_x + variance_y + c2)
    )


def ssim(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Mean SSIM; with a mask, over the window centres inside the mask."""
    prediction = np.nan_to_num(np.asarray(prediction, dtype=np.float64))
    truth = np.nan_to_num(np.asarray(truth, dtype=np.float64))
    if min(prediction.shape) < 2 * SSIM_RADIUS + 1:
        return math.nan
    values = ssim_map(prediction, truth, data_range)
    if mask is not None:
        centre = np.asarray(mask, dtype=bool)[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]
        values = values[centre]
    return float(values.mean()) if values.size else math.nan


# Rows per band of the band-wise figures: their float64 temporaries stay a few bands' worth for any image size.
BAND_ROWS = 256


def row_bands(height: int, rows: int = BAND_ROWS) -> list[slice]:
    """Slices of at most `rows` rows covering `height`."""
    return [slice(start, min(start + rows, height)) for start in range(0, height, rows)]


def image_metrics(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, band_rows: int = BAND_ROWS
) -> dict[str, float]:
    """Pearson r, MAE, RMSE, PSNR and SSIM of one 2-D image pair `[h, w]`, computed band by band of rows.

    The same figures as `pearson`, `mae`, `rmse`, `psnr` and `ssim` of the
    whole images (to float64 rounding: sums are pooled over bands), with
    float64 temporaries of one band instead of several whole images.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"Prediction {prediction.shape} and truth {truth.shape} differ in shape.")
    if prediction.ndim != 2:
        prediction, truth = prediction.reshape(1, -1), truth.reshape(1, -1)
        mask = None if mask is None else np.asarray(mask).reshape(1, -1)
    bands = row_bands(prediction.shape[0], band_rows)

    def kept(band: slice) -> tuple[np.ndarray, np.ndarray]:
        return _select(prediction[band], truth[band], None if mask is None else np.asarray(mask)[band])

    count, sums = 0, np.zeros(4)  # x, y, |x - y|, (x - y)^2
    for band in bands:
        x, y = kept(band)
        count += x.size
        sums += (x.sum(), y.sum(), np.abs(x - y).sum(), np.square(x - y).sum())
    nan = math.nan
    error = math.sqrt(sums[3] / count) if count else nan
    result = {
        "pearson_r": nan,
        "mae": float(sums[2] / count) if count else nan,
        "rmse": error,
        "psnr_db": nan if math.isnan(error) else (math.inf if error == 0 else float(20 * math.log10(1.0 / error))),
        "ssim": _banded_ssim(prediction, truth, mask, band_rows),
        "num_pixels": int(count),
    }
    if count >= 2:
        mean_x, mean_y = sums[0] / count, sums[1] / count
        moments = np.zeros(3)  # xx, yy, xy about the means
        for band in bands:
            x, y = kept(band)
            x, y = x - mean_x, y - mean_y
            moments += (np.dot(x, x), np.dot(y, y), np.dot(x, y))
        denominator = math.sqrt(float(moments[0]) * float(moments[1]))
        result["pearson_r"] = float(moments[2] / denominator) if denominator else nan
    return result


def _banded_ssim(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None, band_rows: int) -> float:
    """`ssim` over bands of the SSIM map's rows (each band reads its rows plus the window's 2 x radius)."""
    height, width = prediction.shape
    if min(height, width) < 2 * SSIM_RADIUS + 1:
        return math.nan
    total, count = 0.0, 0
    for band in row_bands(height - 2 * SSIM_RADIUS, band_rows):
        rows = slice(band.start, band.stop + 2 * SSIM_RADIUS)
        x = np.nan_to_num(np.asarray(prediction[rows], dtype=np.float64))
        y = np.nan_to_num(np.asarray(truth[rows], dtype=np.float64))
        values = ssim_map(x, y)
        if mask is not None:
            centre = np.asarray(mask, dtype=bool)[band.start + SSIM_RADIUS : band.stop + SSIM_RADIUS,
                                                  SSIM_RADIUS : width - SSIM_RADIUS]
            values = values[centre]
        total += float(values.sum())
        count += values.size
    return total / count if count else math.nan


def histogram_2d(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, bins: int = 128,
    band_rows: int = BAND_ROWS,
) -> np.ndarray:
    """Counts `[bins, bins]`: rows are predicted value bins, columns true ones (counted band by band of rows)."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.ndim != 2:
        prediction, truth = prediction.reshape(1, -1), truth.reshape(1, -1)
        mask = None if mask is None else np.asarray(mask).reshape(1, -1)
    counts = np.zeros((bins, bins))
    for band in row_bands(prediction.shape[0], band_rows):
        x, y = _select(prediction[band], truth[band], None if mask is None else np.asarray(mask)[band])
        counts += np.histogram2d(np.clip(x, 0, 1), np.clip(y, 0, 1), bins=bins, range=((0, 1), (0, 1)))[0]
    return counts
