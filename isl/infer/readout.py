"""`isl predict` for a model directory with a ridge read-out (`readout.json`, from `isl readout`).

The frozen core runs over the well in tiles (`isl.infer.embedder.Embedder`,
reflect-padded by the network's border, so the output keeps the input's height
and width) and the read-out maps the embedding to a fitted normal distribution per pixel
and target channel (`isl.model.readout`): its median, mean, std and quantiles
are written as the paper model's statistics are, so `isl evaluate` scores it
like the paper's model. `isl predict` reads the well lazily and works band by
band (`distribution_bands`: the core's rows of tiles, the embedding rows the box
means need, one band's distributions; written by `isl.infer.bands.BandWriter`),
so its memory does not grow with the image area.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl import progress as progress_lib
from isl.data import convert
from isl.data import wells as wells_lib
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib
from isl.infer import bands as bands_lib
from isl.infer import embedder as embedder_lib
from isl.infer import well as well_lib
from isl.io import prediction_file
from isl.model import geometry as geometry_lib
from isl.model import readout as readout_lib


# One core tile's pass, per input pixel (float32, batch norm folded): the shipped read-out's `isl predict` peaked at
# 2.44 GB on the 1024 x 768 sample with every whole-image array (about 0.5 GB) and TensorFlow (about 0.9 GB), which
# leaves about 1.0 GB for its 506-px tiles.
CORE_BYTES_PER_INPUT_PIXEL = 4.0e3
# The fewest output rows of a band (`fit_band_rows` lowers them no further).
MIN_BAND_ROWS = 16


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
    available_bytes: float | None = None,
) -> dict[str, Any]:
    """Predicts one well with the read-out; writes one image per channel and statistic, and prediction.json.

    With the truth in the well, also the calibration TIFFs of the heads
    (`isl.infer.well.CALIBRATION_STATISTICS`) from each pixel's normal
    distribution on the 256 bins (`band_maps`), so `isl evaluate`
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
        available_bytes: the free memory the expected peak must fit (None: psutil's).
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
    well = wells_lib.read_checked_well(predictor.config, input_dir, lazy=True)  # Read by windows, never held whole.
    embedder = embedder_of(predictor)
    height, width = well.inputs.shape[1:]
    row0, row1, column0, column1 = convert.well_window(well, window)
    crop = embedder.crop_for((height, width), (row0, row1, column0, column1), max(readout.radii, default=0))
    top, bottom, left, right = crop
    region = geometry_lib.OutputRegion(row0, column0, row1 - row0, column1 - column0)
    rows, expected = fit_band_rows(readout, embedder, right - left, column1 - column0, len(chosen), len(names), well,
                                   panels)
    print(bands_lib.check_memory(expected, f"core tiles of {embedder.input_size} px and their embedding rows",
                                 "predict a narrower --region (the bands span its width)", available_bytes),
          flush=True)
    well_dir = os.path.join(output_dir, well_lib._safe_name(well.name))
    writer = bands_lib.BandWriter(well_dir, well, predictor.config, chosen, names, region, image_format, file_names,
                                  panels, save_calibration, panel_bits)
    columns = [readout.targets.index(channel) for channel in chosen]
    wanted = tuple(dict.fromkeys(names + ("median",)))
    start = time.perf_counter()
    num_tiles = embedder.num_tiles((bottom - top, right - left))
    try:
        with progress_lib.Progress(num_tiles, f"predict {well.name}", enabled=progress_enabled) as bar:
            for band0, value, spread in distribution_bands(predictor, well.inputs, crop, (row0, row1, column0, column1),
                                                           rows, lambda: bar.update(1)):
                value, spread = value[..., columns], spread[..., columns]
                distributions = calibrated_distributions(predictor.applied_calibration, chosen, value, spread)
                write_distribution_band(writer, band0, statistic_images(distributions, wanted), distributions)
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - start
    panel_files = writer.commit()
    summary = well_lib.prediction_summary(
        predictor, well, input_dir, chosen, names, "reflect", region, image_format, writer.files, geometry=None,
        panels=panel_files, truth_channels=writer.truth_channels, calibration_files=writer.calibration_files,
        num_runs=num_tiles, seconds=round(seconds, 3), exact=True, readout=True,
    )
    prediction_file.write_summary(well_dir, summary)
    summary["well_dir"] = well_dir
    return summary


def band_bytes_per_pixel(readout: readout_lib.Readout, num_channels: int, num_statistics: int) -> float:
    """The bytes one output pixel of a band holds: its embedding rows (with the box means' float64 sums over the
    mapped values) and its distributions, statistics and maps."""
    targets = 2 * len(readout.targets)
    return 4.0 * readout.embedding_size * 2 + 8.0 * targets * 4 + num_channels * (4.0 * (4 + num_statistics) + 96.0)


def band_rows_of(readout: readout_lib.Readout, width: int, num_channels: int, num_statistics: int) -> int:
    """The output rows of one band (`isl.infer.bands.band_rows`)."""
    return bands_lib.band_rows(width, band_bytes_per_pixel(readout, num_channels, num_statistics),
                               minimum=MIN_BAND_ROWS)


def embedder_bytes(embedder: embedder_lib.Embedder, width: int, band_rows: int | None = None, radius: int = 0
                   ) -> float:
    """The core's part: one tile's pass (`CORE_BYTES_PER_INPUT_PIXEL`) plus the embedding rows held and its
    network input rows.

    Args:
        band_rows, radius: the output bands of `Embedder.bands` (it holds a row of tiles and, at the hand-over,
            twice the carry of at most `band_rows + 2 radius` rows); None: a whole window's embedding joined
            (`Embedder.__call__`, the ensemble's blocks), modelled as two rows of tiles.
    """
    tile = embedder.input_size**2 * CORE_BYTES_PER_INPUT_PIXEL
    held_rows = 2 * embedder.stride if band_rows is None else embedder.stride + 2 * (band_rows + 2 * radius)
    band = held_rows * (width + embedder.output_size) * embedder.embedding_size * 4.0
    # The raw rows of a row of tiles (at most num_z_values planes) and one tile's network input (2 channels per z).
    inputs = (embedder.input_size * (width + 2 * embedder.border + embedder.output_size) * embedder.num_z_values * 4
              + embedder.input_size**2 * 2 * embedder.num_z_values * 4)
    return tile + band + inputs


def fit_band_rows(readout: readout_lib.Readout, embedder: embedder_lib.Embedder, crop_width: int, width: int,
                  num_channels: int, num_statistics: int, well: Any, panels: bool) -> tuple[int, dict[str, float]]:
    """The output rows of a band and the modelled peak (`isl.infer.bands.expected_peak`): `band_rows_of`'s,
    lowered by quarters down to 16 until the peak fits `isl.infer.well.TARGET_PEAK_BYTES`.

    The bands span the crop's width, so their arrays and the embedding rows held grow with it: the whole width of
    a 4096² well modelled 3.26 GB with `band_rows_of`'s 87 rows, 2.93 GB with 48 (measured on 512 x 4096: 3.09 GB
    before `Embedder.bands` and this, 2.47 GB after). Shorter bands cost no network work (the rows of tiles stay
    the same), only more, smaller NumPy steps.

    Args:
        crop_width: the core's input columns (the window and its context); width: the window's (written) columns.
    """
    radius = max(readout.radii, default=0)
    per_pixel = band_bytes_per_pixel(readout, num_channels, num_statistics)

    def peak(rows: int) -> dict[str, float]:
        return bands_lib.expected_peak(embedder_bytes(embedder, crop_width, rows, radius),
                                       rows * crop_width * per_pixel, well, width, panels)

    return bands_lib.fit_rows(band_rows_of(readout, crop_width, num_channels, num_statistics), MIN_BAND_ROWS, peak)


def band_distribution(readout: readout_lib.Readout, embedding: np.ndarray, first: int, height: int, row0: int,
                      row1: int) -> tuple[np.ndarray, np.ndarray]:
    """`readout.predict_distribution` of image rows [row0, row1) from a band of the embedding.

    Args:
        embedding: `[n, W, E]` embedding rows first .. first + n - 1 of an image of `height` rows; they must
            include every row within max(radii) of [row0, row1), reflected at the image's edges.

    Returns:
        (value, spread), each `[row1 - row0, W, T]` float32: the whole image's to float rounding (the box means
        are summed over the band's rows, reflected about the image's edges as `box_mean` reflects them).
    """
    size = readout.embedding_size
    scaled, bias = readout.distribution_maps()
    band = embedding[row0 - first : row1 - first]
    result = (band.reshape(-1, size).astype(np.float32) @ scaled[:size]).reshape(band.shape[:2] + (-1,))
    for part, radius in enumerate(readout.radii, start=1):
        index = readout_lib.pad_index(np.arange(row0 - radius, row1 + radius), height, "reflect") - first
        if index.min() < 0 or index.max() >= len(embedding):
            raise ValueError(f"band_distribution: rows {row0}..{row1} need embedding rows beyond the band's.")
        rows = embedding[index]
        mapped = (rows.reshape(-1, size).astype(np.float32) @ scaled[part * size : (part + 1) * size]
                  ).reshape(rows.shape[:2] + (-1,))
        padded = np.pad(mapped.astype(np.float64), ((0, 0), (radius, radius), (0, 0)), mode="reflect")
        total = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
        n = 2 * radius + 1
        window = total[n:, n:] - total[:-n, n:] - total[n:, :-n] + total[:-n, :-n]
        result += (window / (n * n)).astype(np.float32)
    value, log_square = np.split(result + bias, 2, axis=-1)
    return value, readout_lib.spread_of(log_square)


def distribution_bands(
    predictor: Any, stack: Any, crop: tuple[int, int, int, int], window: tuple[int, int, int, int], rows: int,
    progress: Callable[[], None] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The read-out's (value, spread) over `window` of a `[Z, H, W]` stack in bands of at most `rows` rows.

    The core runs over `crop` (`Embedder.crop_for` of the window) band by band (`Embedder.rows`, reading the crop
    lazily from a `SpilledStack`); the embedding rows a band's box means need are kept, never the whole embedding.
    The pixels equal `readout.predict_distribution` of the whole crop's embedding to float rounding.

    Yields:
        (first image row, `[n, w, T]` value, `[n, w, T]` spread), w = the window's columns, T = the read-out's targets.
    """
    from isl.data import wells as wells_lib

    readout = predictor.readout
    embedder = embedder_of(predictor)
    top, bottom, left, right = crop
    row0, row1, column0, column1 = window
    inside = slice(column0 - left, column1 - left)
    for embedding, first, band0, band1 in embedder.bands(wells_lib.window(stack, top, bottom, left, right),
                                                         max(readout.radii, default=0), rows, row0 - top, row1 - top,
                                                         progress):
        value, spread = band_distribution(readout, embedding, first, bottom - top, band0, band1)
        del embedding  # Not held while the next row of tiles is computed (`Embedder.bands` drops its buffer).
        yield band0 + top, value[:, inside], spread[:, inside]


def write_distribution_band(writer: Any, band0: int, images: dict[str, np.ndarray],
                            distributions: Sequence[calibration_lib.ReadoutDistribution]) -> None:
    """Writes one band of a well predicted as per-pixel distributions (read-out, calibrated regression): its
    statistics, and with the truth its calibration maps (`band_maps`), through an `isl.infer.bands.BandWriter`.

    Args:
        images: statistic -> `[n, w, len(channels)]`, "median" among them.
        distributions: per channel, over the band (`calibrated_distributions`).
    """
    count = images["median"].shape[0]
    truth = writer.truth(band0, band0 + count) if (writer.with_maps or writer.with_panel) else None
    maps = band_maps(distributions, *truth) if writer.with_maps else None
    writer.write(band0, images, maps, truth)


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


def band_maps(distributions: Sequence[calibration_lib.ReadoutDistribution], truth: np.ndarray, masks: np.ndarray
              ) -> dict[str, np.ndarray]:
    """The calibration maps of each channel's distribution over a band.

    Args:
        distributions: per channel, `[n, w]` (`calibrated_distributions`): N(value, spread^2) clipped to [0, 1], or
            its mixture with conditional histograms.
        truth, masks: `[n, w, len(channels)]`, the band's truth (`isl.infer.bands.BandWriter.truth`).

    Returns:
        key -> `[n, w, len(channels)]` float32, NaN where the truth is missing, keys as
        `isl.infer.well.CALIBRATION_STATISTICS`.
    """
    keys = tuple(well_lib.CALIBRATION_STATISTICS)
    maps = {key: np.full(truth.shape, np.nan, np.float32) for key in keys}
    for index, distribution in enumerate(distributions):
        known = masks[..., index]
        if not known.any():
            continue
        for key, image in zip(keys, distribution.bin_statistics(np.where(known, truth[..., index], np.nan))):
            maps[key][..., index] = image
    return maps


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
