"""A ridge read-out of a trained network's frozen core: fine-tuning in minutes (beyond the paper).

The paper adapts a trained network to new data by training with the 256-bin
loss, which takes hours on a few CPU cores. A read-out keeps the network's
core frozen and fits, in closed form, one ridge regression per target channel
from the core's embedding and its local averages:

    e = core(stack)                                   [H, W, E], tiled, reflect-padded by the border
    x = [e, box_r1(e), box_r2(e), ...]                [H, W, F], F = E * (1 + len(radii))
        box_r = mean over the (2r + 1)^2 window around each pixel (reflect-padded)
    prediction = clip(intercept + ((x - mean) / scale) @ weights, 0, 1)     [H, W, T]

Fitting (`isl.train.readout`) accumulates the normal equations well by well,
so memory does not grow with the number of wells. Prediction applies the map
through linearity: a box mean commutes with a map across channels, so each
part costs one `[E, T]` product and T box means instead of E.

Uncertainty: a second ridge regression on the same features predicts the log of
the squared residual (heteroscedastic: where the fit is unsure, it says so), so
every pixel gets a normal distribution N(value, spread^2) clipped to [0, 1]:

    spread = exp((spread_intercept + ((x - mean) / scale) @ spread_weights + LOG_SQUARE_OFFSET) / 2)

Its median is the fitted value (clipped), its quantiles `clip(value + spread * z_p, 0, 1)`.
It is a fitted Gaussian, not the network's 256-bin distribution.

File: `readout.json` in the model directory (`isl.io.model_dir.READOUT_FILE`),
next to the frozen network's `config.json` and `model.weights.h5`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.io import atomic

FORMAT_VERSION = 1
DEFAULT_RADII = (1, 2, 4, 8)
DEFAULT_PENALTY = 100.0
# E[log chi^2_1] = -1.2704: log r^2 of a normal residual underestimates log sigma^2 by this much on average.
LOG_SQUARE_OFFSET = 1.2704
# Statistics a read-out writes (besides quantiles qNN).
STATISTICS = ("median", "mean", "std")


@dataclasses.dataclass(frozen=True)
class Readout:
    """A fitted read-out: standardized features -> target values.

    Attributes:
        targets: the target channels, in output order (T).
        radii: box-mean radii of the context features, in pixels.
        feature_mean: `[F]` training mean of each feature.
        feature_scale: `[F]` training standard deviation of each feature.
        weights: `[F, T]` ridge weights on standardized features.
        intercept: `[T]` training mean of each target.
        penalty: the ridge penalty the weights were fitted with.
        spread_weights: `[F, T]` ridge weights of the log squared residual.
        spread_intercept: `[T]` its intercept.
        record: what the fit saw and scored (wells, pixels, Pearson r, seconds).
    """

    targets: tuple[str, ...]
    radii: tuple[int, ...]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    weights: np.ndarray
    intercept: np.ndarray
    penalty: float
    spread_weights: np.ndarray
    spread_intercept: np.ndarray
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def embedding_size(self) -> int:
        """E: channels of the core embedding the read-out takes."""
        return self.weights.shape[0] // (1 + len(self.radii))

    def folded(self, weights: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardization folded into the weights: x @ (w / s) + (b - (m / s) @ w).

        Returns `[F, K]` float32 weights on the raw features (the embedding's
        E rows first, then E rows per radius) and `[K]` float32 biases.
        """
        scaled = (weights / self.feature_scale[:, np.newaxis]).astype(np.float32)
        bias = (intercept - (self.feature_mean / self.feature_scale) @ weights).astype(np.float32)
        return scaled, bias

    def distribution_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """The value and log-squared-residual maps in one: `[F, 2T]` weights and `[2T]` biases (`folded`)."""
        return self.folded(*self._both())

    def _both(self) -> tuple[np.ndarray, np.ndarray]:
        """`[F, 2T]` value and spread weights side by side, and their `[2T]` intercepts."""
        return (np.concatenate([self.weights, self.spread_weights], axis=1),
                np.concatenate([self.intercept, self.spread_intercept]))

    def _linear(self, embedding: np.ndarray, weights: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """`[H, W, E]` -> `[H, W, T]`: intercept + standardized features @ weights, through linearity."""
        if embedding.ndim != 3 or embedding.shape[-1] != self.embedding_size:
            raise ValueError(f"The read-out takes [H, W, {self.embedding_size}] embeddings; got {embedding.shape}.")
        size = self.embedding_size
        scaled, bias = self.folded(weights, intercept)
        flat = embedding.reshape(-1, size).astype(np.float32)
        result = (flat @ scaled[:size]).reshape(embedding.shape[:2] + (-1,))
        for part, radius in enumerate(self.radii, start=1):
            mapped = flat @ scaled[part * size : (part + 1) * size]
            result += box_mean(mapped.reshape(embedding.shape[:2] + (-1,)), radius)
        return result + bias

    def distribution_of_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`[..., F]` features (`features`, `band_features`) -> (value, spread), each `[..., T]` float32."""
        scaled, bias = self.distribution_maps()
        both = features.astype(np.float32) @ scaled + bias
        value, log_square = np.split(both, 2, axis=-1)
        return value, spread_of(log_square)

    def predict(self, embedding: np.ndarray) -> np.ndarray:
        """`[H, W, E]` core embedding -> `[H, W, T]` float32 target values in [0, 1]."""
        return np.clip(self._linear(embedding, self.weights, self.intercept), 0.0, 1.0)

    def predict_distribution(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`[H, W, E]` -> (value, spread), each `[H, W, T]` float32: the unclipped centre and standard deviation."""
        # One pass over the embedding for both maps: [F, 2T] weights.
        both = self._linear(embedding, *self._both())
        value, log_square = np.split(both, 2, axis=-1)
        return value, spread_of(log_square)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "targets": list(self.targets),
            "radii": list(self.radii),
            "penalty": self.penalty,
            "intercept": self.intercept.tolist(),
            "feature_mean": self.feature_mean.tolist(),
            "feature_scale": self.feature_scale.tolist(),
            "weights": self.weights.tolist(),
            "spread_intercept": self.spread_intercept.tolist(),
            "spread_weights": self.spread_weights.tolist(),
            "record": self.record,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Readout:
        """Raises ValueError or KeyError on a malformed record."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        targets = tuple(str(name) for name in data["targets"])
        radii = tuple(int(radius) for radius in data["radii"])
        weights = np.asarray(data["weights"], np.float64)
        mean = np.asarray(data["feature_mean"], np.float64)
        scale = np.asarray(data["feature_scale"], np.float64)
        intercept = np.asarray(data["intercept"], np.float64)
        spread_weights = np.asarray(data["spread_weights"], np.float64)
        spread_intercept = np.asarray(data["spread_intercept"], np.float64)
        if not targets or weights.shape != (mean.size, len(targets)) or scale.shape != mean.shape:
            raise ValueError(f"weights {weights.shape}, feature_mean {mean.shape}, feature_scale {scale.shape} "
                             f"do not fit {len(targets)} targets")
        if spread_weights.shape != weights.shape or spread_intercept.shape != intercept.shape:
            raise ValueError(f"spread_weights {spread_weights.shape} do not match weights {weights.shape}")
        if intercept.shape != (len(targets),) or mean.size % (1 + len(radii)) or np.any(scale <= 0):
            raise ValueError("intercept, radii or feature_scale do not fit the weights")
        if not all(np.all(np.isfinite(array)) for array in (weights, mean, scale, spread_weights, spread_intercept)):
            raise ValueError("non-finite weights")
        record = dict(data.get("record", {}))
        return cls(targets, radii, mean, scale, weights, intercept, float(data["penalty"]), spread_weights,
                   spread_intercept, record)


def spread_of(log_square: Any) -> Any:
    """Predicted log squared residual `[..., T]` -> standard deviation (numpy, or TF inside a graph)."""
    if isinstance(log_square, np.ndarray):
        return np.exp(0.5 * (np.clip(log_square, -30.0, 10.0) + LOG_SQUARE_OFFSET)).astype(np.float32)
    import tensorflow as tf

    return tf.exp(0.5 * (tf.clip_by_value(log_square, -30.0, 10.0) + LOG_SQUARE_OFFSET))


def save(readout: Readout, path: str) -> None:
    """Writes `readout.json` atomically."""
    atomic.write_text(path, json.dumps(readout.to_json()) + "\n")


def load(path: str) -> Readout:
    """Reads `readout.json`.

    Raises:
        InputError: naming the file, when it is unreadable or malformed.
    """
    try:
        with open(path) as file:
            return Readout.from_json(json.load(file))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise errors.InputError(f"{path}: not a valid read-out ({error}). Fit it again with `isl readout`.") from None


def box_mean(images: np.ndarray, radius: int) -> np.ndarray:
    """`[H, W, C]` -> `[H, W, C]`: the mean over the (2 radius + 1)^2 window, reflect-padded, per channel."""
    if radius < 1:
        return images
    padded = np.pad(images.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    total = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    n = 2 * radius + 1
    window = total[n:, n:] - total[:-n, n:] - total[n:, :-n] + total[:-n, :-n]
    return (window / (n * n)).astype(np.float32)


def features(embedding: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """`[H, W, E]` -> `[H * W, E * (1 + len(radii))]`: the embedding, then its box means (row-major pixels)."""
    parts = [embedding.astype(np.float32)] + [box_mean(embedding, radius) for radius in radii]
    return np.concatenate(parts, axis=-1).reshape(-1, embedding.shape[-1] * len(parts))


def check_radii(radii: Sequence[int]) -> tuple[int, ...]:
    """Validated radii (positive, distinct, increasing). Raises InputError."""
    radii = tuple(int(radius) for radius in radii)
    if any(radius < 1 for radius in radii) or list(radii) != sorted(set(radii)):
        raise errors.InputError(f"--radii must be distinct positive integers in increasing order. Received: {radii}")
    return radii


def pad_index(indices: np.ndarray, size: int, mode: str = "reflect") -> np.ndarray:
    """Where `np.pad(..., mode)` takes each of `indices` (any integers) from an axis of `size`: "reflect" or "edge"."""
    if mode == "edge" or size == 1:
        return np.clip(indices, 0, size - 1)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= size, period - folded, folded)


def band_features(
    embedding: np.ndarray, first_row: int, height: int, row0: int, row1: int, radii: Sequence[int]
) -> np.ndarray:
    """`features` of image rows [row0, row1) from a band of the embedding: `[row1 - row0, W, F]`.

    Args:
        embedding: `[n, W, E]` embedding rows first_row .. first_row + n - 1
            of an image of `height` rows; they must include every row within
            max(radii) of [row0, row1), reflected at the image's edges.
        first_row: the image row of `embedding[0]`.
        height: the image's rows.
        row0, row1: the rows to return.
        radii: the box-mean radii.

    The box means equal `box_mean` of the whole image's embedding (reflect
    padding) to float rounding: rows are reflected about the image's edges,
    not the band's.
    """
    parts = [embedding[row0 - first_row : row1 - first_row].astype(np.float32)]
    mode = "reflect"  # as `box_mean` (numpy reflects a one-pixel axis as its edge)
    for radius in radii:
        index = pad_index(np.arange(row0 - radius, row1 + radius), height, mode) - first_row
        if index.min() < 0 or index.max() >= len(embedding):
            raise ValueError(f"band_features: rows {row0}..{row1} need embedding rows beyond the band's.")
        padded = np.pad(embedding[index].astype(np.float64), ((0, 0), (radius, radius), (0, 0)), mode=mode)
        total = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
        n = 2 * radius + 1
        window = total[n:, n:] - total[:-n, n:] - total[n:, :-n] + total[:-n, :-n]
        parts.append((window / (n * n)).astype(np.float32))
    return np.concatenate(parts, axis=-1)


def feature_bands(
    embedder: Any,
    stack: np.ndarray,
    radii: Sequence[int],
    band_rows: int,
    progress: Callable[[], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """`features` of a whole `[Z, H, W]` stack in bands of at most `band_rows` rows, top to bottom.

    `embedder`: anything with `isl.infer.embedder.Embedder.bands` (the core run in bands of rows, the
    embedding rows a band's box means need held, never the whole embedding).

    Yields:
        (first row, `[rows, W, F]` float32 features).
    """
    for embedding, first, row0, row1 in embedder.bands(stack, max(radii, default=0), band_rows, progress=progress):
        features = band_features(embedding, first, stack.shape[1], row0, row1, radii)
        del embedding  # Not held while the next row of tiles is computed.
        yield row0, features


def check_statistics(statistics: Sequence[str]) -> None:
    """Raises InputError for a name that is not among `STATISTICS` or a quantile qNN."""
    from isl.model import statistic_names

    known, _ = statistic_names.parse_statistic_names(statistics)
    unsupported = [name for name in known if name not in STATISTICS]
    if unsupported:
        raise errors.InputError(
            f"A read-out predicts a normal distribution per pixel: it gives {', '.join(STATISTICS)} and quantiles "
            f"qNN, not {', '.join(unsupported)}."
        )


def statistic_images(
    value: np.ndarray, spread: np.ndarray, statistics: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-pixel statistics of N(value, spread^2) clipped to [0, 1].

    Args:
        value, spread: `[H, W, T]` from `Readout.predict_distribution`.
        statistics: names among `STATISTICS` and quantiles "qNN"
            (`isl.model.statistic_names`).

    Returns:
        name -> `[H, W, T]` float32 in [0, 1] ("std" in intensity units).

    Raises:
        InputError: for a statistic a fitted normal distribution does not give.
    """
    from statistics import NormalDist

    from isl.model import statistic_names

    check_statistics(statistics)
    images = {}
    for name in statistics:
        name = name.strip()
        if name in ("median", "mean"):
            images[name] = np.clip(value, 0.0, 1.0)
        elif name == "std":
            images[name] = np.minimum(spread, 1.0)
        elif name:
            z = NormalDist().inv_cdf(int(name[len(statistic_names.QUANTILE_PREFIX):]) / 100)
            images[name] = np.clip(value + np.float32(z) * spread, 0.0, 1.0)
    return images


def statistic_tensors(value: Any, spread: Any, statistics: Sequence[str]) -> dict[str, Any]:
    """`statistic_images` inside a TF graph (median, mean, std only): name -> `[..., T]` float32."""
    import tensorflow as tf

    check_statistics(statistics)
    unsupported = [name for name in statistics if name not in STATISTICS]
    if unsupported:
        raise errors.InputError(f"A read-out graph gives {', '.join(STATISTICS)}, not {', '.join(unsupported)}.")
    clipped = tf.clip_by_value(value, 0.0, 1.0)
    return {name: tf.minimum(spread, 1.0) if name == "std" else clipped for name in statistics}


def bin_statistic_images(
    distribution: Any, statistics: Sequence[str], chunk: int = 16384
) -> dict[str, np.ndarray]:
    """Per-pixel statistics of a 256-bin distribution per pixel (a calibrated read-out's), by the heads' rules.

    A quantile q is the number of bins whose cumulative probability is < q,
    over 255 (`isl.infer.predict.quantile_indices`, the paper's median rule);
    the mean and std are the bins' moments (bin k at k / 255). The median
    is the read-out's own value (clipped), not the bins' median: `isl calibrate`
    reshapes the distribution's tails and background, and the ridge value
    keeps the better Pearson r (BUILD_NOTES, Session 7, issue 26 follow-up).

    Args:
        distribution: `isl.eval.calibration.ReadoutDistribution` of one channel, `[H, W]`.
        statistics: names among `STATISTICS` and quantiles "qNN".

    Returns:
        name -> `[H, W]` float32 in [0, 1].
    """
    from isl.model import statistic_names

    check_statistics(statistics)
    names = [name.strip() for name in statistics if name.strip()]
    shape = distribution.value.shape
    size = int(np.prod(shape))
    images = {name: np.zeros(size, np.float32) for name in names}
    levels = np.arange(256) / 255.0
    if names == ["median"] * len(names):  # The read-out's value: no bins to build.
        return {name: np.clip(distribution.value, 0.0, 1.0).astype(np.float32) for name in names}
    for first in range(0, size, chunk):
        index = np.arange(first, min(size, first + chunk))
        probabilities = distribution.bin_probabilities(index)
        cumulative = np.cumsum(probabilities, axis=-1)
        mean = probabilities @ levels
        for name in names:
            if name == "median":
                images[name][index] = np.clip(distribution.value.reshape(-1)[index], 0.0, 1.0)
            elif name == "mean":
                images[name][index] = mean
            elif name == "std":
                images[name][index] = np.sqrt(np.maximum(probabilities @ levels**2 - mean**2, 0.0))
            else:
                level = int(name[len(statistic_names.QUANTILE_PREFIX):]) / 100
                images[name][index] = np.minimum((cumulative < level).sum(axis=-1), 255) / 255.0
    return {name: image.reshape(shape) for name, image in images.items()}


def interval_coverage(value: np.ndarray, spread: np.ndarray, truth: np.ndarray, level: float) -> float:
    """The fraction of `truth` inside the central `level` interval of N(value, spread^2) (clipped to [0, 1])."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    low = np.clip(value - z * spread, 0.0, 1.0)
    high = np.clip(value + z * spread, 0.0, 1.0)
    return float(np.mean((truth >= low) & (truth <= high)))
