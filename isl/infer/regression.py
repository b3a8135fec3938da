"""Whole-image prediction with the U-Net regression baseline (`model.architecture=unet_regression`).

The regression U-Net has no distribution and no border: it predicts a whole
image in one pass, as fnet and CARE do. The stack is reflection-padded to a
multiple of 2**unet_levels (and by `PAD` pixels of context on each side, so
the 'same' convolutions' zero padding stays away from the image), run once,
cropped back, mapped from standardized values to intensities and clipped to
[0, 1]. `isl predict` writes it as both the median and the mean statistic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import assemble
from isl.data import convert
from isl.data import wells as wells_lib
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib
from isl.infer import regression_distribution
from isl.infer import well as well_lib
from isl.io import prediction_file
from isl.model import geometry as geometry_lib
from isl.model import unet_regression

# Reflected context on each side of the image, in pixels.
PAD = 32
STATISTICS = ("median", "mean")
# Above this many pixels (window plus context) `isl predict` runs the U-Net in tiles of TILE output pixels a side,
# each with `context_pixels` of real image around it: one whole pass costs about 2.3 KB per pixel (10.2 GB for a
# 2304^2 field), so memory would grow with the image. Up to it (the 1024^2 wells) the pass stays whole and exact.
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


def predict_tiled(model: Any, stack: np.ndarray, config: config_lib.ExperimentConfig, clip: bool = True,
                  with_spread: bool = False, whole_pixels: int = WHOLE_PIXELS, tile: int = TILE,
                  embedding: np.ndarray | None = None) -> Any:
    """`predict_image` of a `[num_source_z, H, W]` stack in bounded memory: whole up to `whole_pixels`, else in tiles.

    Each tile of `tile` x `tile` output pixels is predicted from itself plus `context_pixels(config)` of real
    image around it (reflection beyond, as `isl predict --region`), so a tiled image's pixels can differ slightly
    from one whole pass. Memory: one tile's pass plus the `[H, W, T]` result(s). A hybrid's `[H, W, E]`
    `embedding` is cut into the same tiles.

    Returns:
        As `predict_image`: `[H, W, T]` float32 (and, with `with_spread`, the spread or None).
    """
    _, height, width = stack.shape
    if height * width <= whole_pixels:
        return predict_image(model, stack, config, clip=clip, with_spread=with_spread, embedding=embedding)
    context = context_pixels(config)
    values = spread = None
    for row0 in range(0, height, tile):
        for column0 in range(0, width, tile):
            row1, column1 = min(height, row0 + tile), min(width, column0 + tile)
            top, left = max(0, row0 - context), max(0, column0 - context)
            bottom, right = min(height, row1 + context), min(width, column1 + context)
            tile_values, tile_spread = predict_image(
                model, stack[:, top:bottom, left:right], config, clip=clip, with_spread=True,
                embedding=None if embedding is None else embedding[top:bottom, left:right])
            inner = (slice(row0 - top, row1 - top), slice(column0 - left, column1 - left))
            if values is None:
                values = np.empty((height, width, tile_values.shape[-1]), np.float32)
                if tile_spread is not None:
                    spread = np.empty_like(values)
            values[row0:row1, column0:column1] = tile_values[inner]
            if spread is not None:
                spread[row0:row1, column0:column1] = tile_spread[inner]
    return (values, spread) if with_spread else values


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
) -> dict[str, Any]:
    """`isl predict` for the regression baseline: one pass, median/mean files, panel, prediction.json.

    A model folder calibrated by `isl calibrate` (route "regression") predicts a distribution per
    pixel instead (`isl.infer.regression_distribution`): every read-out statistic and, with the
    truth, the calibration TIFFs (`save_calibration`).

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
    well = wells_lib.read_checked_well(config, input_dir)
    height, width = well.inputs.shape[1:]
    row0, row1, column0, column1 = convert.well_window(well, window)
    context = context_pixels(config)
    top, left = max(0, row0 - context), max(0, column0 - context)
    bottom, right = min(height, row1 + context), min(width, column1 + context)
    start = time.perf_counter()
    embedding = hybrid_embedding(predictor, well.inputs, (top, bottom, left, right))
    values, spread = predict_tiled(predictor.model, well.inputs[:, top:bottom, left:right], config,
                                   clip=calibration is None, with_spread=True, embedding=embedding)
    del embedding
    values = values[row0 - top : row1 - top, column0 - left : column1 - left]
    seconds = time.perf_counter() - start
    columns = [config.channels.output_target_channels.index(channel) for channel in channels]
    tiled = (bottom - top) * (right - left) > WHOLE_PIXELS
    num_runs = -(-(bottom - top) // TILE) * -(-(right - left) // TILE) if tiled else 1
    exact = (window is None or (top, left, bottom, right) == (0, 0, height, width)) and not tiled
    if calibration is not None:
        return regression_distribution.write_well(
            predictor, well, input_dir, output_dir, channels, names, values[..., columns],
            (row0, row1, column0, column1), image_format, panels, file_names, panel_bits, save_calibration, seconds,
            exact, context,
            None if spread is None else spread[row0 - top : row1 - top, column0 - left : column1 - left][..., columns])
    well_dir = os.path.join(output_dir, well_lib._safe_name(well.name))
    os.makedirs(well_dir, exist_ok=True)
    images = {name: values[..., columns] for name in names}
    files = well_lib.write_statistics(well_dir, well.metadata, channels, names, images, image_format, file_names)
    region = geometry_lib.OutputRegion(row0, column0, row1 - row0, column1 - column0)
    truth_channels, panel_files = [], {}
    if panels:
        truth_channels, panel_files = well_lib.write_target_panel(well_dir, well, config, channels,
                                                                  values[..., columns], region, panel_bits)
    summary = well_lib.prediction_summary(
        predictor, well, input_dir, channels, names, "reflect", region,
        image_format, files, geometry=None, num_runs=num_runs, exact=exact, seconds=round(seconds, 3),
        context_pixels=context, panels=panel_files,
        truth_channels=truth_channels,
    )
    prediction_file.write_summary(well_dir, summary)
    summary["well_dir"] = well_dir
    return summary


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
