"""`isl predict` for a model directory with a ridge read-out (`readout.json`, from `isl readout`).

The frozen core runs over the whole well in tiles (`isl.infer.embedder.Embedder`,
reflect-padded by the network's border, so the output keeps the input's height
and width) and the read-out maps the embedding to a fitted normal distribution per pixel
and target channel (`isl.model.readout`): its median, mean, std and quantiles
are written as the paper model's statistics are, so `isl evaluate` scores it
like the paper's model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl import progress as progress_lib
from isl.data import assemble
from isl.data import convert
from isl.data import wells as wells_lib
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib
from isl.infer import embedder as embedder_lib
from isl.infer import well as well_lib
from isl.io import prediction_file
from isl.model import geometry as geometry_lib
from isl.model import readout as readout_lib


def choose_channels(readout: readout_lib.Readout, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The requested channels (default: all the read-out's). Raises InputError for one it does not predict."""
    if not requested:
        return readout.targets
    unknown = [channel for channel in requested if channel not in readout.targets]
    if unknown:
        raise errors.InputError(f"The read-out does not predict {', '.join(unknown)}; it predicts "
                                f"{', '.join(readout.targets)}.")
    return tuple(requested)


def embedder_of(predictor: Any) -> embedder_lib.Embedder:
    """The predictor's tiled core runner (built once)."""
    if predictor.readout_embedder is None:
        predictor.readout_embedder = embedder_lib.Embedder(predictor.model, predictor.config)
    return predictor.readout_embedder


def predict_well(
    predictor: Any,
    input_dir: str,
    output_dir: str,
    channels: Sequence[str] | None,
    statistics: Sequence[str] = ("median",),
    image_format: str = "png",
    progress_enabled: bool = True,
    border_mode: str = "reflect",
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
    panels: bool = True,
    file_names: str = "lab",
    save_calibration: bool = True,
    panel_bits: int = 16,
) -> dict[str, Any]:
    """Predicts one well with the read-out; writes one image per channel and statistic, and prediction.json.

    With the truth in the well, also the calibration TIFFs of the heads
    (`isl.infer.well.CALIBRATION_STATISTICS`) from each pixel's normal
    distribution on the 256 bins (`calibration_maps`), so `isl evaluate`
    scores both routes alike.

    Args:
        predictor: from `isl.infer.kinds.registry.load_predictor`, with `readout` set.
        input_dir: the folder of one well.
        output_dir: parent folder of the per-well output folders.
        channels: the read-out's target channels to write (default: all).
        statistics: median, mean, std and quantiles qNN (`readout.statistic_images`).
        image_format: "png" or "tiff" (16-bit either way).
        progress_enabled: show a progress line (tiles) on stderr.
        border_mode: only "reflect" (others raise InputError).
        window: ((row0, row1), (column0, column1)), -1 = the edge: predict only
            this window; the core runs on the window plus the network's border
            and the largest box-mean radius, so the pixels equal the whole
            well's prediction.
        file_names: output file names, "lab" or "short" (`isl.infer.well.output_name`).
        panels: write `target_error_panel.png` (median, truth, error) when
            the well holds truth for a written channel.
        save_calibration: write the calibration TIFFs when the well holds truth.
        panel_bits: 16 or 8 (`isl.eval.panels.write_panel`).
    """
    if predictor.model is None or predictor.readout is None:
        raise errors.InputError(f"{predictor.source}: a read-out is predicted from its model directory (--model_dir).")
    readout = predictor.readout
    chosen = choose_channels(readout, channels)
    names = tuple(dict.fromkeys(name.strip() for name in statistics if name.strip())) or ("median",)
    readout_lib.check_statistics(names)
    if border_mode != "reflect":
        raise errors.InputError(
            f"{predictor.source}: a read-out keeps the input's height and width (reflected borders); "
            f"--border={border_mode} applies to the network's own heads."
        )
    well = wells_lib.read_checked_well(predictor.config, input_dir)
    embedder = embedder_of(predictor)
    height, width = well.inputs.shape[1:]
    row0, row1, column0, column1 = convert.well_window(well, window)
    top, bottom, left, right = embedder.crop_for((height, width), (row0, row1, column0, column1), max(readout.radii))
    crop = well.inputs[:, top:bottom, left:right]
    start = time.perf_counter()
    num_tiles = embedder.num_tiles(crop.shape[1:])
    with progress_lib.Progress(num_tiles, f"predict {well.name}", enabled=progress_enabled) as bar:
        embedding = embedder(crop, lambda: bar.update(1))
    columns = [readout.targets.index(channel) for channel in chosen]
    value, spread = readout.predict_distribution(embedding)
    inside = (slice(row0 - top, row1 - top), slice(column0 - left, column1 - left))
    value, spread = value[inside][..., columns], spread[inside][..., columns]
    distributions = calibrated_distributions(predictor.applied_calibration, chosen, value, spread)
    images = statistic_images(distributions, tuple(dict.fromkeys(names + ("median",))))
    seconds = time.perf_counter() - start
    region = geometry_lib.OutputRegion(row0, column0, row1 - row0, column1 - column0)
    return write_distribution_well(
        predictor, well, input_dir, output_dir, chosen, names, images, distributions, region, image_format, panels,
        file_names, panel_bits, save_calibration,
        num_runs=num_tiles, seconds=round(seconds, 3), exact=True, readout=True,
    )


def write_distribution_well(
    predictor: Any,
    well: Any,
    input_dir: str,
    output_dir: str,
    channels: Sequence[str],
    statistics: Sequence[str],
    images: dict[str, np.ndarray],
    distributions: Sequence[calibration_lib.ReadoutDistribution],
    region: geometry_lib.OutputRegion,
    image_format: str,
    panels: bool,
    file_names: str,
    panel_bits: int,
    save_calibration: bool,
    **summary_fields: Any,
) -> dict[str, Any]:
    """Writes a well predicted as per-pixel distributions (read-out, calibrated regression): statistics, panel,
    calibration TIFFs (with truth) and prediction.json.

    Args:
        images: statistic -> `[region.height, region.width, len(channels)]`, "median" among them.
        distributions: per channel, over `region` (`calibrated_distributions`).
        summary_fields: the route's own `well.prediction_summary` arguments (num_runs, seconds, exact, ...).

    Returns:
        The contents of `prediction.json` plus `well_dir`.
    """
    well_dir = os.path.join(output_dir, well_lib._safe_name(well.name))
    os.makedirs(well_dir, exist_ok=True)
    files = well_lib.write_statistics(well_dir, well.metadata, channels, statistics, images, image_format, file_names)
    truth_channels, panel_files, calibration_files = [], {}, {}
    if panels:
        truth_channels, panel_files = well_lib.write_target_panel(well_dir, well, predictor.config, channels,
                                                                  images["median"], region, panel_bits)
    if save_calibration:
        truth_channels, maps = calibration_maps(predictor.config, well, channels, distributions, region)
        calibration_files = well_lib.write_calibration_maps(well_dir, well.metadata, channels, truth_channels, maps,
                                                            file_names)
    summary = well_lib.prediction_summary(
        predictor, well, input_dir, channels, statistics, "reflect", region, image_format, files, geometry=None,
        panels=panel_files, truth_channels=truth_channels, calibration_files=calibration_files, **summary_fields,
    )
    prediction_file.write_summary(well_dir, summary)
    summary["well_dir"] = well_dir
    return summary


def calibrated_distributions(
    calibration: Any, channels: Sequence[str], value: np.ndarray, spread: np.ndarray
) -> list[calibration_lib.ReadoutDistribution]:
    """Per channel, the read-out's per-pixel distribution as `isl calibrate` shaped it.

    Args:
        calibration: the applied `calibration_file.Calibration`, or None (as fitted).
        value, spread: `[H, W, len(channels)]`, from `Readout.predict_distribution`.
    """
    return [calibration_lib.ReadoutDistribution.of(
        {} if calibration is None else calibration.channels.get(channel, {}), value[..., index], spread[..., index])
        for index, channel in enumerate(channels)]


def statistic_images(
    distributions: Sequence[calibration_lib.ReadoutDistribution], statistics: Sequence[str]
) -> dict[str, np.ndarray]:
    """name -> `[H, W, len(distributions)]` float32: each channel's statistics (`readout_lib.statistic_images`,
    or `readout_lib.bin_statistic_images` for one with conditional histograms)."""
    per_channel = []
    for distribution in distributions:
        if distribution.mixed:
            per_channel.append(readout_lib.bin_statistic_images(distribution, statistics))
        else:
            images = readout_lib.statistic_images(distribution.value[..., None], distribution.spread[..., None],
                                                  statistics)
            per_channel.append({name: image[..., 0] for name, image in images.items()})
    return {name: np.stack([images[name] for images in per_channel], axis=-1).astype(np.float32)
            for name in per_channel[0]}


def calibration_maps(
    config: config_lib.ExperimentConfig, well: Any, channels: Sequence[str],
    distributions: Sequence[calibration_lib.ReadoutDistribution], region: geometry_lib.OutputRegion | None = None,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The channels with truth and their calibration maps of each channel's distribution.

    Args:
        distributions: per channel, `[H, W]` over `region` of the well (None: the whole well)
            (`calibrated_distributions`): N(value, spread^2) clipped to [0, 1], or its mixture with
            conditional histograms.

    Returns:
        (channels with any labelled pixel, key -> `[H, W, len(channels)]` float32,
        NaN where the truth is missing), keys as `isl.infer.well.CALIBRATION_STATISTICS`.
    """
    shape = distributions[0].value.shape + (len(channels),)
    values, masks = assemble.target_window(well.targets, config.channels, tuple(well.inputs.shape[1:]), channels,
                                           None if region is None else region.bounds)
    keys = ("true_bin_probability", "cdf_below_true", "crps")
    maps = {key: np.full(shape, np.nan, np.float32) for key in keys}
    truth_channels = []
    for index, channel in enumerate(channels):
        known = masks[..., index]
        if not known.any():
            continue
        truth_channels.append(channel)
        truth = np.where(known, values[..., index], np.nan)
        for key, image in zip(keys, distributions[index].bin_statistics(truth)):
            maps[key][..., index] = image
    return truth_channels, maps


def collect_readout(
    predictor: Any, well: Any, window: tuple[int, int, int, int], channels: Sequence[str],
    progress: Callable[[], None] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per channel, (value, spread, true bins), each `[N]`, of the validation pixels with truth (read-out).

    The frozen core runs over the whole well, as `isl predict` does for a read-out.
    """
    embedding = embedder_of(predictor)(well.inputs, progress)
    value, spread = predictor.readout.predict_distribution(embedding)
    values, masks = calibrate_lib._truth(predictor.config, well, channels)
    row0, row1, column0, column1 = window
    collected = {}
    for index, channel in enumerate(channels):
        column = predictor.readout.targets.index(channel)
        known = masks[row0:row1, column0:column1, index]
        bins = calibration_lib.true_bins(values[row0:row1, column0:column1, index][known])
        keep = calibrate_lib._sample(len(bins))
        collected[channel] = (value[row0:row1, column0:column1, column][known][keep].astype(np.float64),
                              spread[row0:row1, column0:column1, column][known][keep].astype(np.float64), bins[keep])
    return collected
