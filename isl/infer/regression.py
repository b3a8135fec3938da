"""Whole-image prediction with the U-Net regression baseline (`model.architecture=unet_regression`).

The regression U-Net has no distribution and no border: it predicts a whole
image in one pass, as fnet and CARE do. The stack is reflection-padded to a
multiple of 2**unet_levels (and by `PAD` pixels of context on each side, so
the 'same' convolutions' zero padding stays away from the image), run once,
cropped back, mapped from standardized values to intensities and clipped to
[0, 1]. `isl predict` writes it as both the median and the mean statistic.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import assemble
from isl.data import convert
from isl.data import wells as wells_lib
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib
from isl.infer import bands as bands_lib
from isl.infer import regression_distribution
from isl.infer import well as well_lib
from isl.io import prediction_file
from isl.model import geometry as geometry_lib
from isl.model import unet_regression

# Reflected context on each side of the image, in pixels.
PAD = 32
STATISTICS = ("median", "mean")
# One U-Net pass costs about this many bytes per padded input pixel and per `model.unet_filters` (measured:
# 2.22 GB peak for the 1088 x 832 padded pass of the 16-filter shipped model on the 1024 x 768 sample, of which
# about 0.5 GB is TensorFlow; 10.2 GB for a 2304^2 field of a 32-filter model). `isl predict` runs the U-Net in
# tiles whose pass fits `PASS_BYTES` (each with `context_pixels` of real image around it, aligned with the
# window's pooling grid, so the pixels equal one whole pass's: BUILD_NOTES, Session 10, issue 25); a window whose
# pass fits runs whole, as before.
PASS_BYTES_PER_PIXEL_PER_FILTER = 110.0
PASS_BYTES = 1.7e9
# The smallest tile side (output pixels) `isl predict` uses, however small the budget.
MIN_TILE = 128
# Kept for callers that give no budget: the old whole-pass limit and tile side.
WHOLE_PIXELS = 1024 * 1024
TILE = 512


def predict_image(model: Any, stack: np.ndarray, config: config_lib.ExperimentConfig,
                  clip: bool = True, with_spread: bool = False, embedding: np.ndarray | None = None) -> Any:
    """Predicts every target channel of a whole image.

    Args:
        model: the regression model, built with a free input size.
        stack: `[num_source_z, height, width]` float32 in [0, 1].
        config: the model's config (z values, levels, standardization).
        clip: clip to [0, 1] (False: the de-standardised value as is, the centre of a calibrated
            regression's distribution, `isl.eval.regression_calibration`).
        with_spread: also return the predicted spread (`model.regression_spread`; None without).
        embedding: the hybrid's (`model.hybrid_features`) `[height, width, E]` frozen-core embedding of
            the same pixels, padded like the stack and appended to the network input; None otherwise.

    Returns:
        `[height, width, T]` float32 intensities in [0, 1] (unclipped with `clip=False`),
        T = output target channels; with `with_spread`, (that, `[height, width, T]` spread or None).
    """
    if stack.ndim != 3:
        raise errors.InputError(f"A source stack must be [num_source_z, height, width]; got shape {stack.shape}.")
    if not config.model.regression_target_mean:
        raise errors.InputError("This U-Net regression model has no target statistics in its config.json "
                                "(model.regression_target_mean); was it trained with isl train?")
    _, height, width = stack.shape
    factor = 2**config.model.unet_levels
    padded_height = -(-(height + 2 * PAD) // factor) * factor
    padded_width = -(-(width + 2 * PAD) // factor) * factor
    top, left = PAD, PAD
    bottom, right = padded_height - height - top, padded_width - width - left
    mode = "reflect" if min(height, width) > PAD else "edge"
    padded = np.pad(stack, ((0, 0), (top, bottom), (left, right)), mode=mode)
    inputs = assemble.network_input(padded, config.channels.num_z_values)
    wanted = unet_regression.input_embedding_size(config.model)
    if wanted:
        if embedding is None or embedding.shape != (height, width, wanted):
            raise errors.InputError(f"The hybrid U-Net needs the [{height}, {width}, {wanted}] embedding of its "
                                    f"input; got {None if embedding is None else embedding.shape}.")
        padded_embedding = np.pad(np.asarray(embedding, np.float32), ((top, bottom), (left, right), (0, 0)),
                                  mode=mode)
        inputs = np.concatenate([inputs, padded_embedding], axis=-1)
        del padded_embedding
    outputs = np.asarray(model(inputs[np.newaxis], training=False))[0, top : top + height, left : left + width]
    values = unet_regression.destandardize(outputs, config.model, clip=clip)
    if not with_spread:
        return values
    spread = unet_regression.destandardized_spread(outputs, config.model) if config.model.regression_spread else None
    return values, spread


def receptive_radius(config: config_lib.ExperimentConfig) -> int:
    """An upper bound on how far (pixels) a U-Net output pixel sees: 3x3 convolutions, 2x2 pools and 2x2 transposed
    convolutions over `model.unet_levels` levels (2 convolutions per level each way, 2 at the bottom)."""
    scale = 2**config.model.unet_levels
    return 8 * scale - 6


def pass_bytes(config: config_lib.ExperimentConfig, height: int, width: int) -> float:
    """The modelled memory of one U-Net pass over `height` x `width` input pixels (padded as `predict_image` pads)."""
    factor = 2**config.model.unet_levels
    padded = (-(-(height + 2 * PAD) // factor) * factor) * (-(-(width + 2 * PAD) // factor) * factor)
    return padded * PASS_BYTES_PER_PIXEL_PER_FILTER * config.model.unet_filters


def tile_side(config: config_lib.ExperimentConfig, budget: float | None = None) -> int:
    """The output tile side (a multiple of 2**unet_levels, at least `MIN_TILE`) whose pass, with
    `context_pixels` on each side, fits `budget` bytes."""
    factor = 2**config.model.unet_levels
    context = context_pixels(config)
    budget = PASS_BYTES if budget is None else budget
    side = int((budget / (PASS_BYTES_PER_PIXEL_PER_FILTER * config.model.unet_filters)) ** 0.5)
    tile = (side - 2 * (context + PAD + factor)) // factor * factor
    return max(MIN_TILE, tile)


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How a window is run: `crop` (r0, r1, c0, c1) the window plus `context_pixels` of real image (clipped to the
    image), and tiles of `tile` x `tile_columns` output pixels (`whole`: one pass over the crop)."""

    window: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]
    tile: int
    whole: bool
    tile_columns: int = 0  # 0: `tile`.

    @property
    def columns(self) -> int:
        return self.tile_columns or self.tile

    @property
    def num_runs(self) -> int:
        if self.whole:
            return 1
        row0, row1, column0, column1 = self.window
        return -(-(row1 - row0) // self.tile) * -(-(column1 - column0) // self.columns)


def plan_window(config: config_lib.ExperimentConfig, shape: tuple[int, int], window: tuple[int, int, int, int],
                budget: float | None = None, image_grid: bool = False) -> TilePlan:
    """The tiles of `window` in an image of `shape` (H, W): one pass when the window plus its context fits
    `budget` (as before), else tiles of `tile_side(config, budget)`.

    `image_grid`: start the crop on the image's pooling grid (a multiple of 2**unet_levels), so windows cut
    anywhere from one image (an ensemble's blocks) all see the grid one whole pass over the image sees.
    """
    height, width = shape
    row0, row1, column0, column1 = window
    context = context_pixels(config)
    budget = PASS_BYTES if budget is None else budget
    crop = (max(0, row0 - context), min(height, row1 + context), max(0, column0 - context),
            min(width, column1 + context))
    if image_grid:
        factor = 2**config.model.unet_levels
        crop = (crop[0] // factor * factor, crop[1], crop[2] // factor * factor, crop[3])
    whole = pass_bytes(config, crop[1] - crop[0], crop[3] - crop[2]) <= budget
    if whole:
        return TilePlan(window, crop, max(row1 - row0, column1 - column0), True)
    side = tile_side(config, budget)
    return TilePlan(window, crop, balanced_tile(row1 - row0, side), False, balanced_tile(column1 - column0, side))


def balanced_tile(length: int, side: int) -> int:
    """The tile length (<= `side`) that cuts `length` into as many tiles as `side` needs, all of one size (smaller
    passes than `side`-long tiles and a short last one)."""
    return -(-length // -(-length // side))


def value_bands(model: Any, stack: Any, config: config_lib.ExperimentConfig, plan: TilePlan, clip: bool = True,
                embedding_fn: Callable[[tuple[int, int, int, int]], np.ndarray | None] | None = None,
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """`predict_image` of `plan.window` of a `[num_source_z, H, W]` stack (an array, or a lazily read well's
    `SpilledStack`), one band of tile rows at a time, top to bottom.

    Each tile is predicted from itself plus `context_pixels(config)` of real image around it (clipped to
    `plan.crop`), its input starting on the crop's pooling grid (a multiple of 2**unet_levels from the crop's
    corner, the context widened to reach it). As the context exceeds the U-Net's reach (`receptive_radius`), each
    tile's pixels equal one whole pass over the crop, to float rounding; a tile's pass is bounded by the plan.
    `embedding_fn` gives a hybrid's `[h, w, E]` embedding of an input window (r0, r1, c0, c1) (`hybrid_embedding`).

    Yields:
        (first image row, `[rows, w, T]` float32 values (clipped with `clip`), `[rows, w, T]` spread or None).
    """
    row0, row1, column0, column1 = plan.window
    crop_top, crop_bottom, crop_left, crop_right = plan.crop
    if plan.whole:
        values, spread = predict_image(model, np.asarray(stack[:, crop_top:crop_bottom, crop_left:crop_right]),
                                       config, clip=clip, with_spread=True,
                                       embedding=None if embedding_fn is None else embedding_fn(plan.crop))
        inside = (slice(row0 - crop_top, row1 - crop_top), slice(column0 - crop_left, column1 - crop_left))
        yield row0, values[inside], None if spread is None else spread[inside]
        return
    factor = 2**config.model.unet_levels
    context = context_pixels(config)

    def start(first: int, origin: int) -> int:  # The tile's input start: context back, on the crop's grid.
        return origin + (max(origin, first - context) - origin) // factor * factor

    for band0 in range(row0, row1, plan.tile):
        band1 = min(row1, band0 + plan.tile)
        top, bottom = start(band0, crop_top), min(crop_bottom, band1 + context)
        values = spread = None
        for tile0 in range(column0, column1, plan.columns):
            tile1 = min(column1, tile0 + plan.columns)
            left, right = start(tile0, crop_left), min(crop_right, tile1 + context)
            tile_values, tile_spread = predict_image(
                model, np.asarray(stack[:, top:bottom, left:right]), config, clip=clip, with_spread=True,
                embedding=None if embedding_fn is None else embedding_fn((top, bottom, left, right)))
            inner = (slice(band0 - top, band1 - top), slice(tile0 - left, tile1 - left))
            if values is None:
                values = np.empty((band1 - band0, column1 - column0, tile_values.shape[-1]), np.float32)
                spread = None if tile_spread is None else np.empty_like(values)
            values[:, tile0 - column0 : tile1 - column0] = tile_values[inner]
            if spread is not None:
                spread[:, tile0 - column0 : tile1 - column0] = tile_spread[inner]
        yield band0, values, spread


def predict_window(model: Any, stack: Any, config: config_lib.ExperimentConfig, window: tuple[int, int, int, int],
                   clip: bool = True, budget: float | None = None,
                   embedding_fn: Callable[[tuple[int, int, int, int]], np.ndarray | None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """(`[h, w, T]` values, spread or None) of `window` (r0, r1, c0, c1) of a `[num_source_z, H, W]` stack
    (`value_bands` of a crop on the image's pooling grid, its pass bounded by `budget`): any window's pixels are
    those of one whole pass over the image, to float rounding."""
    plan = plan_window(config, tuple(stack.shape[1:]), window, budget, image_grid=True)
    bands = list(value_bands(model, stack, config, plan, clip, embedding_fn))
    values = np.concatenate([band for _, band, _ in bands], axis=0)
    spread = None if bands[0][2] is None else np.concatenate([band for _, _, band in bands], axis=0)
    return values, spread


def predict_tiled(model: Any, stack: np.ndarray, config: config_lib.ExperimentConfig, clip: bool = True,
                  with_spread: bool = False, whole_pixels: int = WHOLE_PIXELS, tile: int = TILE,
                  embedding: np.ndarray | None = None) -> Any:
    """`predict_image` of a `[num_source_z, H, W]` stack in bounded memory: whole up to `whole_pixels`, else in tiles
    of `tile` output pixels, each with `context_pixels` around it (`value_bands`: the pixels of one whole pass). A
    hybrid's `[H, W, E]` `embedding` is cut into the same tiles.

    Returns:
        As `predict_image`: `[H, W, T]` float32 (and, with `with_spread`, the spread or None).
    """
    _, height, width = stack.shape
    if height * width <= whole_pixels:
        return predict_image(model, np.asarray(stack), config, clip=clip, with_spread=with_spread, embedding=embedding)
    window = (0, height, 0, width)
    plan = TilePlan(window, window, tile, False)
    cut = None if embedding is None else (lambda crop: embedding[crop[0] : crop[1], crop[2] : crop[3]])
    bands = list(value_bands(model, stack, config, plan, clip, cut))
    values = np.concatenate([band for _, band, _ in bands], axis=0)
    spread = None if bands[0][2] is None else np.concatenate([band for _, _, band in bands], axis=0)
    return (values, spread) if with_spread else values


def band_bytes_per_pixel(num_channels: int, num_statistics: int, distribution: bool) -> float:
    """The bytes one output pixel of a band holds while it is written (values, spread, statistics, maps, truth and
    the distribution's float64 temporaries)."""
    return num_channels * (4.0 * (4 + num_statistics) + (96.0 if distribution else 8.0))


def predict_well(
    predictor: Any,
    input_dir: str,
    output_dir: str,
    channels: Sequence[str],
    image_format: str = "png",
    statistics: Sequence[str] = STATISTICS,
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
    panels: bool = True,
    file_names: str = "lab",
    panel_bits: int = 16,
    save_calibration: bool = True,
    available_bytes: float | None = None,
) -> dict[str, Any]:
    """`isl predict` for the regression baseline: median/mean files, panel, prediction.json, band by band.

    The well is read lazily (by windows) and predicted one band of tile rows at a time (`value_bands`); each band is
    written through `isl.infer.bands.BandWriter` (row writers, the streamed panel), so memory is one tile's pass
    plus one band, whatever the image area. A model folder calibrated by `isl calibrate` (route "regression")
    predicts a distribution per pixel instead (`isl.infer.regression_distribution`): every read-out statistic
    and, with the truth, the calibration TIFFs (`save_calibration`), also band by band.

    Args:
        predictor: from `isl.infer.kinds.registry.load_predictor` (a model directory).
        input_dir: the folder of one well.
        output_dir: parent folder of the per-well output folders.
        channels: the target channels to write.
        image_format: "png" or "tiff" (16-bit either way).
        statistics: "median" and/or "mean" (the same image: the regression
            has no distribution); anything else raises InputError.
        window: ((row0, row1), (column0, column1)), -1 = the edge: predict
            only this window, from the window plus `context_pixels(config)`
            of real image around it (the 'same' convolutions see the rest as
            reflection, so pixels can differ slightly from the whole image's).
        file_names: output file names, "lab" or "short" (`isl.infer.well.output_name`).
        panels: write `target_error_panel.png` when the well holds truth.
        save_calibration: a calibrated model: write the calibration TIFFs when the well holds truth.
        available_bytes: the free memory the expected peak must fit (None: psutil's).
    """
    if predictor.model is None:
        raise errors.InputError(f"{predictor.source}: the U-Net regression is predicted from its model directory "
                                "(--model_dir), not from an exported SavedModel.")
    names = tuple(dict.fromkeys(name.strip() for name in statistics if name.strip())) or ("median",)
    calibration = predictor.applied_calibration
    unsupported = [name for name in names if name not in STATISTICS]
    if unsupported and calibration is None:
        raise errors.InputError(
            f"--statistics={','.join(unsupported)}: the U-Net regression predicts one value per pixel, written as "
            f"{' and '.join(STATISTICS)}; it has no distribution for other statistics (isl calibrate gives it one)."
        )
    if calibration is not None:
        regression_distribution.check_statistics(names)
    config = predictor.config
    well = wells_lib.read_checked_well(config, input_dir, lazy=True)  # Read by windows, never held whole.
    height, width = well.inputs.shape[1:]
    row0, row1, column0, column1 = convert.well_window(well, window)
    plan = plan_window(config, (height, width), (row0, row1, column0, column1))
    context = context_pixels(config)
    region = geometry_lib.OutputRegion(row0, column0, row1 - row0, column1 - column0)
    with_maps = calibration is not None and save_calibration
    per_pixel = band_bytes_per_pixel(len(channels), len(names), calibration is not None)
    plan, expected = fit_band_rows(config, plan, (height, width), per_pixel, well, panels)
    what = "one U-Net pass" if plan.whole else f"U-Net tiles of {plan.tile} x {plan.columns} px"
    print(bands_lib.check_memory(expected, what, "predict a narrower --region (the bands span its width)",
                                 available_bytes), flush=True)
    columns = [config.channels.output_target_channels.index(channel) for channel in channels]
    exact = (window is None or plan.crop == (0, height, 0, width)) and (plan.whole or
                                                                        context >= receptive_radius(config))
    well_dir = os.path.join(output_dir, well_lib._safe_name(well.name))
    writer = bands_lib.BandWriter(well_dir, well, config, channels, names, region, image_format, file_names, panels,
                                  with_maps, panel_bits)
    network_seconds = distribution_seconds = 0.0
    try:
        start = time.perf_counter()
        for band0, values, spread in value_bands(
                predictor.model, well.inputs, config, plan, clip=calibration is None,
                embedding_fn=lambda crop: hybrid_embedding(predictor, well.inputs, crop)):
            network_seconds += time.perf_counter() - start
            values = values[..., columns]
            if calibration is None:
                writer.write(band0, {name: values for name in dict.fromkeys(names + ("median",))})
            else:
                start = time.perf_counter()
                regression_distribution.write_band(predictor, writer, band0, channels, names, values,
                                                   None if spread is None else spread[..., columns])
                distribution_seconds += time.perf_counter() - start
            start = time.perf_counter()
    except BaseException:
        writer.abort()
        raise
    panel_files = writer.commit()
    seconds = network_seconds + distribution_seconds
    summary = well_lib.prediction_summary(
        predictor, well, input_dir, channels, names, "reflect", region,
        image_format, writer.files, geometry=None, num_runs=plan.num_runs, exact=exact, seconds=round(seconds, 3),
        context_pixels=context, panels=panel_files, truth_channels=writer.truth_channels,
        **({"calibration_files": writer.calibration_files} if calibration is not None else {}),
    )
    prediction_file.write_summary(well_dir, summary)
    summary["well_dir"] = well_dir
    return summary


def band_expected_peak(config: config_lib.ExperimentConfig, plan: TilePlan, shape: tuple[int, int],
                       bytes_per_pixel: float, well: Any, panels: bool) -> dict[str, float]:
    """The modelled peak (`isl.infer.bands.expected_peak`'s parts) of predicting `plan` of an image of `shape`
    (H, W): one tile's pass and one band of `plan.tile` rows across the window at `bytes_per_pixel`."""
    height, width = shape
    row0, row1, column0, column1 = plan.window
    reach = 2 * (context_pixels(config) + 2**config.model.unet_levels)
    network = (pass_bytes(config, plan.crop[1] - plan.crop[0], plan.crop[3] - plan.crop[2]) if plan.whole
               else pass_bytes(config, min(plan.tile + reach, height), min(plan.columns + reach, width)))
    band_pixels = min(plan.tile, row1 - row0) * (column1 - column0)
    return bands_lib.expected_peak(network, band_pixels * bytes_per_pixel, well, column1 - column0, panels)


def fit_band_rows(config: config_lib.ExperimentConfig, plan: TilePlan, shape: tuple[int, int],
                  bytes_per_pixel: float, well: Any, panels: bool) -> tuple[TilePlan, dict[str, float]]:
    """`plan` with its tile rows (the band height) lowered, in balanced steps down to `MIN_TILE`, until the
    modelled peak fits `well.TARGET_PEAK_BYTES`; and that peak (`band_expected_peak`).

    The bands span the window's width, so on a wide window with a distribution (about 0.5 KB a pixel for 4
    channels) a square tile's band outgrew the target: a 4096-px-wide calibrated U-Net modelled 3.8 GB with
    586-row bands (session 11). Shorter bands mean more, shorter passes (more context recomputed), the same pixels.
    """
    if plan.whole:
        return plan, band_expected_peak(config, plan, shape, bytes_per_pixel, well, panels)

    def with_rows(rows: int) -> TilePlan:
        return plan if rows == plan.tile else dataclasses.replace(plan, tile=rows, tile_columns=plan.columns)

    length = plan.window[1] - plan.window[0]
    rows, expected = bands_lib.fit_rows(
        plan.tile, MIN_TILE, lambda rows: band_expected_peak(config, with_rows(rows), shape, bytes_per_pixel, well,
                                                             panels),
        adjust=lambda rows: balanced_tile(length, rows))
    return with_rows(rows), expected


def hybrid_embedding(predictor: Any, stack: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray | None:
    """A hybrid's (`model.hybrid_features`) `[r1 - r0, c1 - c0, E]` embedding of the `[Z, H, W]` stack on `window`
    (r0, r1, c0, c1), as the whole image's (`isl.infer.hybrid.window_embedding`); None for a plain U-Net."""
    if not unet_regression.input_embedding_size(predictor.config.model):
        return None
    from isl.infer import hybrid

    row0, row1, column0, column1 = window
    return hybrid.window_embedding(hybrid.predictor_embedder(predictor), stack, (row0, row1, column0, column1))


def context_pixels(config: config_lib.ExperimentConfig) -> int:
    """Real image read around a `--region` window: the training patch side (the most context training showed)."""
    return max(config.model.output_size, PAD)


def window_values(predictor: Any, well: Any, window: tuple[int, int, int, int]
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(`[h, w, T]` unclipped intensities, `[h, w, T]` predicted spread or None) over `window` (r0, r1, c0, c1).

    T = the config's output target channels. As `isl predict --region` runs it:
    the window plus `context_pixels` of real image around it, one pass.
    """
    config = predictor.config
    height, width = well.inputs.shape[1:]
    row0, row1, column0, column1 = window
    context = context_pixels(config)
    top, left = max(0, row0 - context), max(0, column0 - context)
    bottom, right = min(height, row1 + context), min(width, column1 + context)
    values, spread = predict_image(predictor.model, well.inputs[:, top:bottom, left:right], config,
                                   clip=False, with_spread=True,
                                   embedding=hybrid_embedding(predictor, well.inputs, (top, bottom, left, right)))
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
