"""Fitting a ridge read-out of a frozen core on whole wells (`isl readout`; model: `isl.model.readout`).

The normal equations of the standardized ridge problem are accumulated in
float64, well by well and band by band (`BAND_PIXELS` pixels' features: the
core's embedding is made one row of tiles at a time, `Embedder.rows`, and
the box means per band, `band_features`), so no design matrix of every
pixel's features is ever made; each well is read lazily (`read_well(lazy=True)`: its planes in a
temporary file, the core's rows and each band's targets read as needed), so no well is held whole:

    n, sum x [F], X'X [F, F], X'Y [F, T], sum y [T], sum y^2 [T]
    Z = (X - mean) / scale             (standardized features)
    weights = (Z'Z + penalty I)^-1 Z'(Y - mean y)       [F, T]

The intercept is the targets' mean (not penalized). The spread model (the log
of the squared residual, `isl.model.readout`) is fitted the same way on a
random subsample of the training pixels (at most `SPREAD_PIXELS_PER_WELL` per
well), after the value model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import convert
from isl.data import wells as wells_lib
from isl.infer import embedder as embedder_lib
from isl.model import readout as readout_lib

# Pixels per float64 product when accumulating (about 170 MB of features at F = 320).
CHUNK_PIXELS = 65536
# Pixels per band of features while fitting or scoring (about 84 MB of float32 features at F = 320).
BAND_PIXELS = 65536
# Training pixels per well kept for the spread model's fit.
SPREAD_PIXELS_PER_WELL = 65536
# Added to the squared residual before the log (an 8-bit step is 1/255; (0.5/255)^2 ~ 4e-6).
SQUARE_FLOOR = 4e-6
# Central intervals whose coverage of the truth an evaluation well reports (calibration).
COVERAGE_LEVELS = (0.5, 0.9)


class NormalEquations:
    """Running sums for a ridge regression with T targets on F features."""

    def __init__(self, num_features: int, num_targets: int) -> None:
        self.count = 0
        self.feature_sum = np.zeros(num_features)
        self.gram = np.zeros((num_features, num_features))
        self.cross = np.zeros((num_features, num_targets))
        self.target_sum = np.zeros(num_targets)
        self.target_square_sum = np.zeros(num_targets)

    def add(self, features: np.ndarray, targets: np.ndarray) -> None:
        """Adds `[N, F]` features and `[N, T]` targets (rows are pixels)."""
        for start in range(0, len(features), CHUNK_PIXELS):
            x = features[start : start + CHUNK_PIXELS].astype(np.float64)
            y = targets[start : start + CHUNK_PIXELS].astype(np.float64)
            self.count += len(x)
            self.feature_sum += x.sum(0)
            self.gram += x.T @ x
            self.cross += x.T @ y
            self.target_sum += y.sum(0)
            self.target_square_sum += (y * y).sum(0)

    def solve(self, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(feature mean [F], feature scale [F], weights [F, T], intercept [T], training R^2 [T])."""
        if self.count < 2:
            raise errors.InputError("A read-out needs at least two labelled pixels.")
        n = self.count
        mean = self.feature_sum / n
        target_mean = self.target_sum / n
        covariance = self.gram / n - np.outer(mean, mean)
        scale = np.sqrt(np.maximum(np.diag(covariance), 0.0))
        scale[scale < 1e-6] = 1.0  # A constant feature: centered to 0, its weight stays 0.
        gram = n * covariance / np.outer(scale, scale)
        cross = (self.cross - n * np.outer(mean, target_mean)) / scale[:, np.newaxis]
        weights = np.linalg.solve(gram + penalty * np.eye(len(gram)), cross)
        total = self.target_square_sum - n * target_mean**2
        residual = total - 2 * np.sum(weights * cross, axis=0) + np.sum(weights * (gram @ weights), axis=0)
        r_squared = np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), 0.0)
        return mean, scale, weights, target_mean, r_squared


def _check_targets(well: Any, targets: Sequence[str], directory: str) -> None:
    """Raises InputError naming the folder when a well lacks one of `targets`."""
    missing = [name for name in targets if name not in well.targets]
    if missing:
        have = ", ".join(sorted(well.targets)) or "no target images"
        raise errors.InputError(f"{directory}: no {', '.join(missing)} image to fit the read-out on (it has {have}).")


def _band_targets(well: Any, targets: Sequence[str], row0: int, row1: int, column0: int, column1: int) -> np.ndarray:
    """`[pixels, T]` row-major targets of one window of a well (read from a lazily read well's file)."""
    return np.stack([well.targets[name][row0:row1, column0:column1] for name in targets],
                    axis=-1).reshape(-1, len(targets))


def _region_text(region: tuple[tuple[int, int], tuple[int, int]] | None) -> str | None:
    if region is None:
        return None
    return ",".join(f"{start}:{'' if end == -1 else end}" for start, end in region)


def _window_bands(
    embedder: embedder_lib.Embedder,
    well: Any,
    radii: Sequence[int],
    window: tuple[int, int, int, int],
    progress: Callable[[str, int], Callable[[], None]] | None,
    label: str,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """The features of a well's window, in bands of rows: (row0, row1, `[pixels, F]` row-major features).

    The core runs on the window plus its context (`Embedder.crop_for`), so the
    features equal the whole well's there; a band holds about `BAND_PIXELS`
    pixels' features, whatever the well's size.
    """
    top, bottom, left, right = embedder.crop_for(well.inputs.shape[1:], window, max(radii))
    crop = wells_lib.window(well.inputs, top, bottom, left, right)  # Read by rows as the core needs them.
    tick = progress(f"{label} {well.name}", embedder.num_tiles(crop.shape[1:])) if progress else None
    band_rows = max(1, BAND_PIXELS // max(crop.shape[2], 1))
    for row0, features in readout_lib.feature_bands(embedder, crop, radii, band_rows, tick):
        first = max(row0 + top, window[0])
        last = min(row0 + top + len(features), window[1])
        if last <= first:
            continue
        inside = features[first - top - row0 : last - top - row0, window[2] - left : window[3] - left]
        yield first, last, inside.reshape(-1, features.shape[-1])


def _score_well(
    fitted: readout_lib.Readout,
    embedder: embedder_lib.Embedder,
    well: Any,
    directory: str,
    targets: Sequence[str],
    radii: Sequence[int],
    convert_region: tuple[tuple[int, int], tuple[int, int]] | None,
    progress: Callable[[str, int], Callable[[], None]] | None,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Pearson r of the clipped value and the central intervals' coverage, per target, over a well's window.

    Accumulated band by band (`_window_bands`): pooled moments and counts, so
    memory is one band's whatever the well's size.
    """
    from isl.train import dense_eval

    _check_targets(well, targets, directory)
    window = convert.well_window(well, convert_region, "--eval_region")
    moments = [dense_eval.Moments() for _ in targets]
    covered = np.zeros((len(targets), len(COVERAGE_LEVELS)))
    count = 0
    for row0, row1, features in _window_bands(embedder, well, radii, window, progress, "score"):
        value, spread = fitted.distribution_of_features(features)
        band_truth = _band_targets(well, targets, row0, row1, window[2], window[3])
        prediction = np.clip(value, 0.0, 1.0)
        for index in range(len(targets)):
            moments[index].add(prediction[:, index], band_truth[:, index])
            for level_index, level in enumerate(COVERAGE_LEVELS):
                covered[index, level_index] += len(features) * readout_lib.interval_coverage(
                    value[:, index], spread[:, index], band_truth[:, index], level)
        count += len(features)
    scores = {name: round(moments[index].pearson, 4) for index, name in enumerate(targets)}
    fractions = {name: [round(float(covered[index, level] / max(count, 1)), 3)
                        for level in range(len(COVERAGE_LEVELS))] for index, name in enumerate(targets)}
    return scores, fractions


def fit(
    model: Any,
    config: config_lib.ExperimentConfig,
    train_dirs: Sequence[str],
    targets: Sequence[str],
    radii: Sequence[int] = readout_lib.DEFAULT_RADII,
    penalty: float = readout_lib.DEFAULT_PENALTY,
    eval_dirs: Sequence[str] = (),
    progress: Callable[[str, int], Callable[[], None]] | None = None,
    region: tuple[tuple[int, int], tuple[int, int]] | None = None,
    eval_region: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> readout_lib.Readout:
    """Fits a read-out on `train_dirs` (each the folder of one well) and scores it on `eval_dirs`.

    Args:
        model: the trained network (frozen; any input size).
        config: its config (channels, z values, normalization).
        train_dirs: well folders with the transmitted-light stack and every target.
        targets: target channel names, in output order; empty: the model's
            target channels found in the first training well.
        radii: box-mean radii of the context features.
        penalty: ridge penalty (on standardized features).
        eval_dirs: well folders to score (Pearson r per target), optional.
        progress: `progress(label, total_tiles)` returns a callback called once per tile.
        region, eval_region: ((row0, row1), (column0, column1)), -1 = the
            edge (`isl.data.convert.parse_region`): fit on / score only this
            window of every training / evaluation well. The core runs on the
            window plus its context (`Embedder.crop_for`), so the features
            equal the whole well's there.

    Returns:
        The `Readout`; its `record` holds the wells, pixel count, training
        R^2, evaluation Pearson r and seconds.

    Raises:
        InputError: for a missing target image, a bad well folder, or a
            network without a core embedding.
    """
    if not train_dirs:
        raise errors.InputError("Give at least one training well folder (--train_dir).")
    if penalty <= 0:
        raise errors.InputError(f"--penalty must be > 0. Received: {penalty}")
    radii = readout_lib.check_radii(radii)
    known = config.channels.target_channels
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise errors.InputError(f"Unknown target channel {', '.join(unknown)}; the model's channels are "
                                f"{', '.join(known)}.")
    start = time.perf_counter()
    # Every training well is checked before the first (slow) embedding; only the first stays in memory
    # (the others are read again in turn), so memory holds one well whatever their number.
    first_well = wells_lib.read_checked_well(config, train_dirs[0], lazy=True)
    if not targets:
        targets = [name for name in known if name in first_well.targets]
        if not targets:
            raise errors.InputError(f"{train_dirs[0]}: no target images of the model's channels "
                                    f"({', '.join(known)}) to fit the read-out on.")
    _check_targets(first_well, targets, train_dirs[0])
    for directory in train_dirs[1:]:
        _check_targets(wells_lib.read_checked_well(config, directory, lazy=True), targets, directory)
    embedder = embedder_lib.Embedder(model, config)
    num_features = embedder.embedding_size * (1 + len(radii))
    equations = NormalEquations(num_features, len(targets))
    random = np.random.default_rng(0)
    kept_features, kept_targets = [], []
    for index, directory in enumerate(train_dirs):
        well = first_well if index == 0 else wells_lib.read_checked_well(config, directory, lazy=True)
        first_well = None
        window = convert.well_window(well, region, "--region")
        pixels = (window[1] - window[0]) * (window[3] - window[2])
        keep = random.choice(pixels, min(pixels, SPREAD_PIXELS_PER_WELL), replace=False)
        well_features = np.empty((len(keep), num_features), np.float32)
        well_targets = np.empty((len(keep), len(targets)), np.float32)
        position = 0
        for row0, row1, features in _window_bands(embedder, well, radii, window, progress, "embed"):
            band_targets = _band_targets(well, targets, row0, row1, window[2], window[3])
            equations.add(features, band_targets)
            chosen = np.nonzero((keep >= position) & (keep < position + len(features)))[0]
            well_features[chosen] = features[keep[chosen] - position]
            well_targets[chosen] = band_targets[keep[chosen] - position]
            position += len(features)
        kept_features.append(well_features)
        kept_targets.append(well_targets)
        del well
    mean, scale, weights, intercept, r_squared = equations.solve(penalty)
    # The spread: ridge of log(residual^2) on the same standardized features, over the kept pixels.
    kept = np.concatenate(kept_features)
    standardized = ((kept - mean) / scale).astype(np.float32)
    residual = np.concatenate(kept_targets) - (intercept + standardized @ weights)
    spread_equations = NormalEquations(kept.shape[1], len(targets))
    spread_equations.add(kept, np.log(residual**2 + SQUARE_FLOOR).astype(np.float32))
    del kept, standardized
    subsample_mean, subsample_scale, subsample_weights, subsample_intercept, _ = spread_equations.solve(penalty)
    # The same affine map, written on the value model's standardization (x - mean) / scale.
    spread_weights = subsample_weights * (scale / subsample_scale)[:, np.newaxis]
    spread_intercept = subsample_intercept + ((mean - subsample_mean) / subsample_scale) @ subsample_weights
    fitted = readout_lib.Readout(tuple(targets), radii, mean, scale, weights, intercept, float(penalty),
                                 spread_weights, spread_intercept)
    scores: dict[str, dict[str, float]] = {}
    coverage: dict[str, dict[str, list[float]]] = {}
    for directory in eval_dirs:
        scores[directory], coverage[directory] = _score_well(
            fitted, embedder, wells_lib.read_checked_well(config, directory, lazy=True), directory, targets, radii,
            convert_region=eval_region, progress=progress)
    record = {
        "train_dirs": list(train_dirs),
        "region": _region_text(region),
        "eval_region": _region_text(eval_region),
        "normalization": config.data.normalization,
        "channel_map": list(config.data.channel_map),
        "pixels": int(equations.count),
        "train_r_squared": {name: round(float(value), 4) for name, value in zip(targets, r_squared)},
        "eval_pearson_r": scores,
        "eval_interval_coverage": coverage,
        "coverage_levels": list(COVERAGE_LEVELS),
        "embedding_size": embedder.embedding_size,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return dataclasses.replace(fitted, record=record)
