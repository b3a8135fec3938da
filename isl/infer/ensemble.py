"""Ensembles of model folders and test-time augmentation (`isl ensemble`, `isl predict --tta`).

An ensemble is a model folder holding only `ensemble.json`: its members (other
model folders, referenced by path and checked by fingerprint) and per-channel
weights fitted on a validation window (`fit`). Every member predicts the same
window of the same well, read with the one data contract they share, and the
ensemble combines, per target channel:

* **values**: each member's point value (its estimate of the mean: the heads'
  mean statistic, the read-out's and the U-Net regression's value, clipped to
  [0, 1]) standardised by its validation mean and standard deviation, summed
  with non-negative weights and mapped back with the truth's validation mean:
  `clip(mean_y + sum_m w_m (v_m - mu_m) / sigma_m, 0, 1)`. The weights are the
  non-negative least squares fit of the centred truth on the standardised
  values (the best linear combination, which is also the best validation
  Pearson r of any non-negative one);
* **mixture**: the members' per-pixel distributions over the 256 bins
  (`[h, w, 256]` per channel: the heads' softmax, a read-out's or a calibrated
  regression's `ReadoutDistribution`) mixed with weights on the simplex that
  maximise the validation log score (EM on the probabilities of the true bins).

`combination` names what is written: "mixture" (every statistic from the
mixture), "values" (median = mean = the combined value; no distribution) or
"both" (median and mean from the values, std, quantiles and the calibration
TIFFs from the mixture, as a calibrated U-Net regression writes its value and
its distribution).

Test-time augmentation (`tta`) predicts each member on the eight dihedral
transforms of the whole stack (`TRANSFORMS`: four rotations by 90 degrees, each
with and without a left-right mirror) and maps each prediction back before
averaging values and bin probabilities. The transformed window is the image of
the wanted window, so every member keeps its own geometry (tiles, borders, the
8-px phase of the paper network) in the transformed image and the pixels come
back aligned exactly (tested with a tiny model whose answer is known).

The well is predicted in bands of `BAND_ROWS` output rows (each member reads its
own context around a band), so the `[rows, width, channels, 256]` bins of one
band, not of the whole well, are held at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import errors

ENSEMBLE_FILE = "ensemble.json"
FORMAT_VERSION = 1
COMBINATIONS = ("mixture", "values", "both")
NUM_CLASSES = 256
BAND_ROWS = 256
# The heads' tile side (input pixels; rounded down to a valid size, at least the model's smallest).
HEADS_TILE = 512
# What an ensemble writes: the read-out's statistics (median, mean, std) and quantiles qNN.
STATISTICS = ("median", "mean", "std")
# (quarter turns counter-clockwise, mirror left-right first): the dihedral group of the square.
TRANSFORMS: tuple[tuple[int, bool], ...] = tuple((turns, mirror) for mirror in (False, True) for turns in range(4))
# The data contract every member must share: (what it is called in a message, how it is read from a config).
CONTRACT: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("input channel", lambda config: config.channels.input_channel),
    ("input modalities", lambda config: tuple(config.channels.input_modalities)),
    ("z count (channels.num_z_values)", lambda config: config.channels.num_z_values),
    ("normalisation (data.normalization)", lambda config: config.data.normalization),
    ("channel map (data.channel_map)", lambda config: tuple(config.data.channel_map)),
)


# ----------------------------------------------------------------------------------------------------------------
# Dihedral transforms.


def transform(array: np.ndarray, turns: int, mirror: bool, axes: tuple[int, int]) -> np.ndarray:
    """`array` mirrored left-right (along `axes[1]`) if `mirror`, then turned `turns` quarter turns (`np.rot90`)."""
    if mirror:
        array = np.flip(array, axis=axes[1])
    return np.rot90(array, turns, axes=axes)


def untransform(array: np.ndarray, turns: int, mirror: bool, axes: tuple[int, int]) -> np.ndarray:
    """The inverse of `transform`."""
    array = np.rot90(array, -turns, axes=axes)
    if mirror:
        array = np.flip(array, axis=axes[1])
    return array


def transformed_window(shape: tuple[int, int], window: tuple[int, int, int, int], turns: int, mirror: bool
                       ) -> tuple[int, int, int, int]:
    """Where the window (r0, r1, c0, c1) of an image of `shape` lies in the transformed image."""
    height, width = shape
    row0, row1, column0, column1 = window
    if mirror:
        column0, column1 = width - column1, width - column0
    return {0: (row0, row1, column0, column1), 1: (width - column1, width - column0, row0, row1),
            2: (height - row1, height - row0, width - column1, width - column0),
            3: (column0, column1, height - row1, height - row0)}[turns % 4]


# ----------------------------------------------------------------------------------------------------------------
# Members.


@dataclasses.dataclass
class Member:
    """One model folder as an ensemble member.

    Attributes:
        model_dir: the folder.
        predictor: the registry's `load_predictor(model_dir)` (its calibration applied); its kind
            (`isl.infer.kinds.base.ModelKind.predict_window`) predicts a window for the ensemble.
        kind: the kind's label (`ModelKind.label`: "heads", "readout", "calibrated_regression", "unet_regression").
        channels: the target channels it predicts.
        has_distribution: whether it gives bin probabilities (`ModelKind.distribution`).
    """

    model_dir: str
    predictor: Any
    kind: str
    channels: tuple[str, ...]
    has_distribution: bool = True

    @property
    def config(self) -> Any:
        return self.predictor.config

    def predict(self, stack: np.ndarray, window: tuple[int, int, int, int], channels: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """(point values `[h, w, C]` in [0, 1], bin probabilities `[h, w, C, 256]` float32 or None) of `window`.

        Args:
            stack: the whole `[num_source_z, H, W]` stack in [0, 1] (context is read around the window).
            window: (row0, row1, column0, column1) in image pixels.
            channels: target channels (C of them), all among `self.channels`.
        """
        return self.predictor.kind.predict_window(self.predictor, stack, window, channels)


# How each kind predicts a window (`ModelKind.predict_window` calls these; the kind decides which).


def heads_window(predictor: Any, stack: np.ndarray, window: tuple[int, int, int, int], channels: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The 256-bin heads: (their mean `[h, w, C]`, their softmax `[h, w, C, 256]`), exact, in `HEADS_TILE` tiles."""
    from isl.infer import graph as graph_lib
    from isl.infer import predict as predict_lib
    from isl.infer import tiling

    config = predictor.config
    targets = config.channels.output_target_channels
    heads = tuple(config.channels.num_input_heads + targets.index(channel) for channel in channels)
    key = ("ensemble_window", heads)
    if key not in predictor._run_functions:
        network = predict_lib.Network.from_keras(graph_lib.inference_model(predictor.model), heads)
        predictor._run_functions[key] = predict_lib.make_run_function(
            network, ("mean",), with_distributions=True, temperatures=predictor.head_temperatures(heads))
    tile = max(HEADS_TILE, tiling.smallest_tile_size(predictor.geometry, "exact"))
    # `predict_image`'s run, its bands of rows written straight into the window's arrays (no list of bands joined
    # into a second copy of the bins).
    region, wanted, plan = predict_lib.plan_image(tuple(stack.shape[1:]), predictor.geometry, "reflect", tile,
                                                  "exact", window)
    mean = np.empty((wanted.height, wanted.width, len(heads)), np.float32)
    bins = np.empty((wanted.height, wanted.width, len(heads), NUM_CLASSES), np.float32)

    def on_rows(row0: int, images: dict[str, np.ndarray]) -> None:
        count = images["mean"].shape[0]
        mean[row0 : row0 + count] = images["mean"]
        bins[row0 : row0 + count] = images["distribution"]

    predict_lib.stream_image(plan, region, wanted, stack,
                             predict_lib._default_network_input(config.channels.num_z_values),
                             predictor._run_functions[key], on_rows)
    return mean, bins


def readout_window(predictor: Any, stack: np.ndarray, window: tuple[int, int, int, int], channels: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A ridge read-out: (its value clipped to [0, 1], its calibrated distribution's bins)."""
    from isl.infer import readout as readout_infer

    readout = predictor.readout
    embedder = readout_infer.embedder_of(predictor)
    height, width = stack.shape[1:]
    top, bottom, left, right = embedder.crop_for((height, width), window, max(readout.radii))
    value, spread = readout.predict_distribution(embedder(stack[:, top:bottom, left:right]))
    row0, row1, column0, column1 = window
    inside = (slice(row0 - top, row1 - top), slice(column0 - left, column1 - left))
    columns = [readout.targets.index(channel) for channel in channels]
    value, spread = value[inside][..., columns], spread[inside][..., columns]
    distributions = readout_infer.calibrated_distributions(predictor.applied_calibration, channels, value, spread)
    return np.clip(value, 0.0, 1.0).astype(np.float32), dense_probabilities(distributions)


def regression_window(predictor: Any, stack: np.ndarray, window: tuple[int, int, int, int],
                      channels: Sequence[str], with_distribution: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The U-Net regression: (its value clipped to [0, 1], its calibrated distribution's bins or None)."""
    from isl.eval import regression_calibration
    from isl.infer import regression

    config = predictor.config
    values, spread = regression.predict_window(
        predictor.model, stack, config, window, clip=False,
        embedding_fn=lambda crop: regression.hybrid_embedding(predictor, stack, crop))
    columns = [config.channels.output_target_channels.index(channel) for channel in channels]
    values = values[..., columns]
    point = np.clip(values, 0.0, 1.0).astype(np.float32)
    if not with_distribution:
        return point, None
    spread = None if spread is None else spread[..., columns]
    distributions = regression_calibration.distributions(predictor.applied_calibration, channels, values, spread)
    return point, dense_probabilities(distributions)


# `dense_probabilities` builds the bins of this many pixels at a time: each chunk's float64 temporaries (the normal
# curve's CDF, its concatenation and difference, the histograms and the mixture, about `DENSE_TEMPORARIES` arrays
# of `[chunk, 256]`) come on top of the block's bins. 65,536 pixels made them about 0.8 GB, the ensemble's
# unmodelled peak (session 11); 8,192 make them about 0.1 GB at the same speed.
DENSE_CHUNK_PIXELS = 8192
DENSE_TEMPORARIES = 6


def dense_chunk_bytes() -> float:
    """Modelled bytes of one `dense_probabilities` chunk's float64 temporaries."""
    return DENSE_TEMPORARIES * DENSE_CHUNK_PIXELS * NUM_CLASSES * 8.0


def dense_probabilities(distributions: Sequence[Any], chunk: int = DENSE_CHUNK_PIXELS) -> np.ndarray:
    """`[h, w, C, 256]` float32 bin probabilities of per-channel `ReadoutDistribution`s over `[h, w]`, `chunk` pixels
    at a time (`DENSE_CHUNK_PIXELS`)."""
    shape = distributions[0].value.shape
    count = int(np.prod(shape))
    result = np.empty((count, len(distributions), NUM_CLASSES), np.float32)
    for index, distribution in enumerate(distributions):
        for start in range(0, count, chunk):
            flat = np.arange(start, min(count, start + chunk))
            result[start : start + len(flat), index] = distribution.bin_probabilities(flat)
    return result.reshape(shape + (len(distributions), NUM_CLASSES))


def member_of(model_dir: str, predictor: Any) -> Member:
    """A loaded model folder as a member (its kind's label, channels and whether it has a distribution).

    Raises:
        InputError: an exported SavedModel (no model folder).
    """
    if predictor.signature is not None:
        raise errors.InputError(f"{predictor.source}: an exported SavedModel cannot be an ensemble member or run "
                                "with --tta; use its model folder.")
    kind = predictor.kind
    return Member(model_dir, predictor, kind.label(predictor), tuple(kind.choose_channels(predictor, None)),
                  kind.distribution(predictor))


def load_member(model_dir: str, open_folder: Callable[..., Any], apply_calibration: bool = True,
                precision: str = "") -> Member:
    """Opens one member folder with `open_folder` (the registry's `load_predictor`, so a member is any kind), in
    `precision` ("": as trained; `isl export` loads float32).

    Raises:
        InputError: naming the member when it is no model folder, or an ensemble.
    """
    if not os.path.isdir(model_dir):
        raise errors.InputError(f"member {model_dir}: not a folder.")
    if os.path.isfile(os.path.join(model_dir, ENSEMBLE_FILE)):
        raise errors.InputError(f"member {model_dir}: an ensemble cannot be a member of an ensemble; list its "
                                "members instead.")
    try:
        predictor = open_folder(model_dir, apply_calibration=apply_calibration, precision=precision)
    except errors.InputError as error:
        raise errors.InputError(f"member {model_dir}: {error}") from None
    return member_of(model_dir, predictor)


def check_members(members: Sequence[Member], channels: Sequence[str] | None = None) -> tuple[str, ...]:
    """The ensemble's channels (`channels`, or the first member's); raises InputError naming the member and the
    mismatch when members differ in their data contract (`CONTRACT`) or one lacks a channel."""
    if not members:
        raise errors.InputError("An ensemble needs at least one --member.")
    first = members[0]
    for member in members[1:]:
        for name, read in CONTRACT:
            if read(member.config) != read(first.config):
                raise errors.InputError(
                    f"member {member.model_dir}: its {name} is {read(member.config)!r}, but member "
                    f"{first.model_dir} has {read(first.config)!r}; every member must read the wells alike.")
    chosen = tuple(channels) if channels else first.channels
    for member in members:
        missing = [channel for channel in chosen if channel not in member.channels]
        if missing:
            raise errors.InputError(f"member {member.model_dir}: it does not predict {', '.join(missing)} (its "
                                    f"targets: {', '.join(member.channels)}); every member must predict "
                                    f"{', '.join(chosen)}.")
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# Predicting with members, with or without test-time augmentation.


class TransformedStack:
    """A dihedral transform (`transform`) of a `[Z, H, W]` stack (an array or a lazily read well's `SpilledStack`),
    read by windows: each read maps the wanted pixels back to the source and transforms only them, so no transformed
    copy of the whole stack is made (`--tta` of a large well stays bounded).

    Takes slices and `np.ix_`-style index arrays on each axis (as `isl.infer.predict.stream_image` reads).
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, stack: Any, turns: int, mirror: bool) -> None:
        self.stack, self.turns, self.mirror = stack, turns % 4, mirror
        planes, height, width = stack.shape
        self.shape = (planes, width, height) if self.turns % 2 else (planes, height, width)

    @staticmethod
    def _indices(key: Any, size: int) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(size)[key]
        indices = np.asarray(key)
        if indices.dtype == bool or indices.ndim == 0:
            raise TypeError("TransformedStack takes slices or np.ix_-style index arrays")
        indices = indices.reshape(-1).astype(np.int64)
        return np.where(indices < 0, indices + size, indices)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        planes, rows, columns = (self._indices(item, size) for item, size in zip(key, self.shape))
        _, height, width = self.stack.shape
        # Where transformed pixel (i, j) comes from in the mirrored image m (np.rot90's counter-clockwise turns).
        swap = self.turns % 2 == 1
        source_rows, source_columns = {0: (rows, columns), 1: (columns, width - 1 - rows),
                                       2: (height - 1 - rows, width - 1 - columns),
                                       3: (height - 1 - columns, rows)}[self.turns]
        if self.mirror:
            source_columns = width - 1 - source_columns
        block = np.asarray(self.stack[np.ix_(planes, source_rows, source_columns)], np.float32)
        return np.ascontiguousarray(block.transpose(0, 2, 1)) if swap else block

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self[:, :, :]
        return array if dtype is None else array.astype(dtype)


def member_window(member: Member, stack: Any, window: tuple[int, int, int, int], channels: Sequence[str],
                  tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """`Member.predict`, or with `tta` the mean of its eight dihedral predictions mapped back (values and bins).

    Each transformed prediction reads its window of the transformed stack (`TransformedStack`), so nothing of the
    whole stack's size is copied.
    """
    if not tta:
        return member.predict(stack, window, channels)
    shape = tuple(stack.shape[1:])
    value_sum = probability_sum = None
    for turns, mirror in TRANSFORMS:
        moved = stack if (turns, mirror) == (0, False) else TransformedStack(stack, turns, mirror)
        value, probabilities = member.predict(moved, transformed_window(shape, window, turns, mirror), channels)
        value = untransform(value, turns, mirror, (0, 1))
        value_sum = value.astype(np.float64) if value_sum is None else value_sum + value
        if probabilities is not None:
            probabilities = untransform(probabilities, turns, mirror, (0, 1))
            probability_sum = (probabilities.copy() if probability_sum is None else
                               np.add(probability_sum, probabilities, out=probability_sum))
        del probabilities
    count = len(TRANSFORMS)
    mean_probabilities = None if probability_sum is None else np.divide(probability_sum, np.float32(count),
                                                                        out=probability_sum)
    return (value_sum / count).astype(np.float32), mean_probabilities


# ----------------------------------------------------------------------------------------------------------------
# The ensemble.


@dataclasses.dataclass
class Ensemble:
    """Members and their per-channel weights (`ensemble.json`).

    Attributes:
        source: the ensemble folder (None: one in memory, e.g. `--tta` of a plain model folder).
        members: the loaded members.
        channels: the target channels it predicts.
        combination: "mixture", "values" or "both" (module docstring).
        weights: channel -> {"values": {"weights", "means", "stds", "intercept"},
            "mixture": {"weights"}} (the members' order).
        record: the rest of ensemble.json (validation figures, fitted_on).
    """

    source: str | None
    members: list[Member]
    channels: tuple[str, ...]
    combination: str
    weights: dict[str, dict[str, Any]]
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> Any:
        """The first member's config (all members share the data contract, `check_members`)."""
        return self.members[0].config

    @property
    def with_distribution(self) -> bool:
        return self.combination != "values"

    def combine(self, outputs: Sequence[tuple[np.ndarray, np.ndarray | None]]
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(combined values `[h, w, C]` or None, mixed bins `[h, w, C, 256]` or None) of the members' outputs."""
        mixture = None
        for member, (_, probabilities) in enumerate(outputs):
            mixture = self.add_to_mixture(mixture, member, probabilities)
        return self.combine_values([value for value, _ in outputs]), mixture

    def add_to_mixture(self, mixture: np.ndarray | None, member: int, probabilities: np.ndarray | None
                       ) -> np.ndarray | None:
        """`mixture` `[h, w, C, 256]` (None: zeros) plus member `member`'s weighted bins; None for "values"."""
        if self.combination not in ("mixture", "both"):
            return None
        if mixture is None:
            mixture = np.zeros(probabilities.shape, np.float32)
        for index, channel in enumerate(self.channels):
            weight = self.weights[channel]["mixture"]["weights"][member]
            if weight:
                mixture[..., index, :] += np.float32(weight) * probabilities[..., index, :]
        return mixture

    def combine_values(self, member_values: Sequence[np.ndarray]) -> np.ndarray | None:
        """The combined value `[h, w, C]` of the members' values (each `[h, w, C]`); None for "mixture"."""
        values = None
        outputs = [(value, None) for value in member_values]
        if self.combination in ("values", "both"):
            values = np.zeros(outputs[0][0].shape, np.float32)
            for index, channel in enumerate(self.channels):
                part = self.weights[channel]["values"]
                combined = np.full(values.shape[:2], part["intercept"], np.float64)
                for member, (value, _) in enumerate(outputs):
                    if part["weights"][member]:
                        combined += part["weights"][member] * (value[..., index] - part["means"][member]) \
                            / part["stds"][member]
                values[..., index] = np.clip(combined, 0.0, 1.0)
        return values

    def calibration_record(self) -> dict[str, Any]:
        """What `prediction.json` records as the calibration: the weights and the marginal of `isl evaluate`'s
        information gain (a member's `calibration.json`, `fit`)."""
        return {
            "applied": True,
            "route": "ensemble",
            "channels": self.weights,
            "marginal": self.record.get("marginal", {}),
            "marginal_source": self.record.get("marginal_source", ""),
        }


def single(member: Member, channels: Sequence[str]) -> Ensemble:
    """A one-member ensemble (`isl predict --tta` of a plain model folder): the member's own statistics.

    Its combination follows what the member's kind writes: "values" without a distribution, "both" when the kind
    writes its value as the median and the mean (`ModelKind.default_statistics`, a calibrated U-Net regression),
    else "mixture" (every statistic from the distribution, as the heads and a read-out)."""
    predictor = member.predictor
    if not member.has_distribution:
        combination = "values"
    else:
        combination = "mixture" if predictor.kind.default_statistics(predictor) is None else "both"
    weights = {channel: {"values": {"weights": [1.0], "means": [0.0], "stds": [1.0], "intercept": 0.0},
                         "mixture": {"weights": [1.0]}} for channel in channels}
    calibration = member.predictor.calibration_record() or {}
    record = {"marginal": calibration.get("marginal", {}), "marginal_source": calibration.get("marginal_source", "")}
    return Ensemble(None, [member], tuple(channels), combination, weights, record)


def default_combination(members: Sequence[Member]) -> str:
    """"both" when every member gives a distribution, else "values"."""
    return "both" if all(member.has_distribution for member in members) else "values"


def check_combination(combination: str, members: Sequence[Member]) -> None:
    if combination not in COMBINATIONS:
        raise errors.InputError(f"--combination={combination}: use one of {', '.join(COMBINATIONS)}.")
    if combination != "values":
        lacking = [member.model_dir for member in members if not member.has_distribution]
        if lacking:
            raise errors.InputError(
                f"member {lacking[0]}: a U-Net regression without calibration.json has no distribution to mix "
                f"(--combination={combination}); run isl calibrate on it, or use --combination=values.")


def bands(row0: int, row1: int, rows: int = BAND_ROWS) -> list[tuple[int, int]]:
    return [(start, min(row1, start + rows)) for start in range(row0, row1, rows)]


def fit(members: Sequence[Member], well: Any, window: tuple[int, int, int, int], channels: Sequence[str],
        combination: str, tta: bool = False, progress: Callable[[str], None] | None = None) -> Ensemble:
    """Fits the per-channel weights on the validation `window` (r0, r1, c0, c1) of `well` (with its truth).

    Values: non-negative least squares of the centred truth on the standardised member values. Mixture: EM on the
    members' probabilities of the true bins (the weights on the simplex with the best mean log score).

    Raises:
        InputError: when a channel has no labelled pixel in the window.
    """
    from isl.data import assemble
    from isl.eval import calibration as calibration_lib

    config = members[0].config
    start = time.perf_counter()
    collected: dict[str, dict[str, list]] = {channel: {"y": [], "values": [], "probabilities": []}
                                             for channel in channels}
    for band0, band1 in bands(window[0], window[1]):
        band = (band0, band1, window[2], window[3])
        truth, masks = assemble.target_window(well.targets, config.channels, tuple(well.inputs.shape[1:]), channels,
                                              band)
        outputs = []
        for member in members:
            if progress is not None:
                progress(f"rows {band0}:{band1}, member {member.model_dir}")
            outputs.append(member_window(member, well.inputs, band, channels, tta))
        for index, channel in enumerate(channels):
            known = masks[..., index]
            if not known.any():
                continue
            bins = calibration_lib.true_bins(truth[..., index][known])
            collected[channel]["y"].append(truth[..., index][known].astype(np.float64))
            collected[channel]["values"].append(np.stack([value[..., index][known] for value, _ in outputs], -1))
            if all(probabilities is not None for _, probabilities in outputs):
                collected[channel]["probabilities"].append(np.stack(
                    [np.take_along_axis(probabilities[..., index, :][known], bins[:, None], -1)[:, 0]
                     for _, probabilities in outputs], -1))
    weights, scores = {}, {}
    for channel in channels:
        if not collected[channel]["y"]:
            raise errors.InputError(f"{channel}: no labelled pixel in the validation window to fit the weights on.")
        y = np.concatenate(collected[channel]["y"])
        values = np.concatenate(collected[channel]["values"]).astype(np.float64)
        weights[channel] = {"values": fit_values(values, y)}
        probabilities = collected[channel]["probabilities"]
        true_probabilities = np.concatenate(probabilities) if probabilities else None
        if true_probabilities is not None:
            weights[channel]["mixture"] = {"weights": [round(float(w), 6) for w in fit_mixture(true_probabilities)]}
        scores[channel] = validation_scores(values, y, true_probabilities, weights[channel])
    marginal, marginal_source = {}, ""
    for member in members:
        record = member.predictor.calibration_record() or {}
        if all(channel in (record.get("marginal") or {}) for channel in channels):
            marginal = {channel: record["marginal"][channel] for channel in channels}
            marginal_source = f"{member.model_dir}: {record.get('marginal_source', '')}"
            break
    record = {"validation": scores, "marginal": marginal, "marginal_source": marginal_source,
              "fitted_on": {"window": list(window), "well": well.metadata.get("directory", well.name), "tta": tta,
                            "seconds": round(time.perf_counter() - start, 1)}}
    return Ensemble(None, list(members), tuple(channels), combination, weights, record)


def fit_values(values: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Standardised weights: `values` `[N, M]`, truth `[N]` -> {"weights", "means", "stds", "intercept"}."""
    from scipy import optimize

    means, stds = values.mean(axis=0), np.maximum(values.std(axis=0), 1e-6)
    standardised = (values - means) / stds
    weights, _ = optimize.nnls(standardised, y - y.mean())
    return {"weights": [round(float(w), 6) for w in weights], "means": [float(m) for m in means],
            "stds": [float(s) for s in stds], "intercept": float(y.mean())}


def fit_mixture(true_probabilities: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Mixture weights `[M]` maximising `mean log(sum_m w_m p_m)` over `[N, M]` true-bin probabilities (EM)."""
    probabilities = np.maximum(true_probabilities.astype(np.float64), 1e-12)
    count = probabilities.shape[1]
    weights = np.full(count, 1.0 / count)
    for _ in range(iterations):
        responsibility = probabilities * weights
        responsibility /= responsibility.sum(axis=1, keepdims=True)
        updated = responsibility.mean(axis=0)
        if np.max(np.abs(updated - weights)) < 1e-7:
            weights = updated
            break
        weights = updated
    return weights


def validation_scores(values: np.ndarray, y: np.ndarray, true_probabilities: np.ndarray | None,
                      weights: dict[str, Any]) -> dict[str, Any]:
    """Validation Pearson r of each member's value and of the combined value; the mean log2 probability of the true
    bin (`*_log_score_bits`; higher is better) of each member and of the mixture when all have distributions."""
    part = weights["values"]
    combined = np.clip(part["intercept"] + ((values - part["means"]) / part["stds"]) @ np.asarray(part["weights"]),
                       0.0, 1.0)
    scores: dict[str, Any] = {
        "members_pearson": [round(pearson(values[:, m], y), 4) for m in range(values.shape[1])],
        "values_pearson": round(pearson(combined, y), 4),
    }
    if true_probabilities is not None:
        logs = np.log2(np.maximum(true_probabilities, 1e-12))
        mixed = np.log2(np.maximum(true_probabilities @ np.asarray(weights["mixture"]["weights"]), 1e-12))
        scores["members_log_score_bits"] = [round(float(x), 4) for x in logs.mean(axis=0)]
        scores["mixture_log_score_bits"] = round(float(mixed.mean()), 4)
    return scores


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# ensemble.json.


def is_ensemble(model_dir: str | None) -> bool:
    return bool(model_dir) and os.path.isfile(os.path.join(model_dir, ENSEMBLE_FILE))


def member_reference(output_dir: str, model_dir: str) -> str:
    """How ensemble.json names a member: relative to the ensemble folder (both can move together), else absolute."""
    absolute = os.path.abspath(model_dir)
    try:
        return os.path.relpath(absolute, os.path.abspath(output_dir))
    except ValueError:  # Another drive (Windows).
        return absolute


def to_json(ensemble: Ensemble, output_dir: str) -> dict[str, Any]:
    from isl.io import calibration_file

    return {
        "format_version": FORMAT_VERSION,
        "combination": ensemble.combination,
        "channels": list(ensemble.channels),
        "members": [{"path": member_reference(output_dir, member.model_dir), "kind": member.kind,
                     "fingerprint": calibration_file.fingerprint(member.model_dir),
                     "calibration_fingerprint": _calibration_fingerprint(member.model_dir)}
                    for member in ensemble.members],
        "weights": ensemble.weights,
        **ensemble.record,
    }


def _calibration_fingerprint(model_dir: str) -> str:
    import hashlib

    from isl.io import calibration_file

    path = calibration_file.path(model_dir)
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def write(ensemble: Ensemble, output_dir: str) -> str:
    """Writes `output_dir/ensemble.json` atomically; returns its path."""
    from isl.io import atomic

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ENSEMBLE_FILE)
    atomic.write_text(path, json.dumps(to_json(ensemble, output_dir), indent=2) + "\n")
    ensemble.source = output_dir
    return path


def load(model_dir: str, open_folder: Callable[..., Any], precision: str = "") -> Ensemble:
    """Opens an ensemble folder: its members (resolved relative to it, opened with `open_folder`, the registry's
    `load_predictor`, in `precision`: "" as trained), checked against their fingerprints.

    Raises:
        InputError: a damaged ensemble.json, a member missing or changed since the fit, or members that no longer
            share the data contract.
    """
    from isl.io import calibration_file

    path = os.path.join(model_dir, ENSEMBLE_FILE)
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
        combination, channels = data["combination"], tuple(data["channels"])
        references, weights = data["members"], data["weights"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise errors.InputError(f"{path}: not a readable ensemble ({type(error).__name__}: {error}); write it "
                                "again with isl ensemble.") from None
    members = []
    for reference in references:
        member_dir = os.path.normpath(os.path.join(model_dir, reference["path"]))
        if not os.path.isdir(member_dir):
            raise errors.InputError(f"{path}: member {member_dir} is missing (moved or deleted?); move it back or "
                                    "run isl ensemble again.")
        if calibration_file.fingerprint(member_dir) != reference.get("fingerprint") or \
                _calibration_fingerprint(member_dir) != reference.get("calibration_fingerprint", ""):
            raise errors.InputError(f"{path}: member {member_dir} changed since the ensemble was fitted (its weights, "
                                    "read-out or calibration.json); run isl ensemble again.")
        members.append(load_member(member_dir, open_folder, precision=precision))
    check_members(members, channels)
    check_combination(combination, members)
    record = {key: value for key, value in data.items()
              if key not in ("format_version", "combination", "channels", "members", "weights")}
    return Ensemble(model_dir, members, channels, combination, weights, record)


# ----------------------------------------------------------------------------------------------------------------
# Statistics of 256-bin distributions and the well writer.


def check_statistics(statistics: Sequence[str], with_distribution: bool) -> tuple[str, ...]:
    """The statistic names to write; raises InputError for one an ensemble (or a values-only one) does not give."""
    from isl.model import statistic_names

    names = tuple(dict.fromkeys(name.strip() for name in statistics if name.strip())) or ("median",)
    known, _ = statistic_names.parse_statistic_names(names)
    allowed = STATISTICS if with_distribution else ("median", "mean")
    unsupported = [name for name in known if name not in allowed]
    quantiles = [name for name in names if name not in known]
    if unsupported or (quantiles and not with_distribution):
        what = (f"{', '.join(STATISTICS)} and quantiles qNN" if with_distribution
                else "median and mean (the combined value; --combination=values has no distribution)")
        raise errors.InputError(f"--statistics={','.join(unsupported + quantiles)}: this ensemble gives {what}.")
    return names


def bin_statistic_images(probabilities: np.ndarray, statistics: Sequence[str]) -> dict[str, np.ndarray]:
    """name -> `[...]` float32 in [0, 1] of `[..., 256]` bin probabilities: median and quantiles qNN (the first bin
    whose cumulative probability reaches q, over 255, as the heads'), mean and std."""
    from isl.model import statistic_names

    levels = np.arange(NUM_CLASSES, dtype=np.float64) / (NUM_CLASSES - 1)
    total = probabilities.sum(axis=-1, dtype=np.float64)
    images: dict[str, np.ndarray] = {}
    mean = (probabilities @ levels) / total
    cumulative = None
    for name in statistics:
        if name == "mean":
            images[name] = mean.astype(np.float32)
        elif name == "std":
            second = (probabilities @ (levels * levels)) / total
            images[name] = np.sqrt(np.maximum(second - mean * mean, 0.0)).astype(np.float32)
        else:
            q = 0.5 if name == "median" else statistic_names.parse_statistic_names([name])[1][0]
            if cumulative is None:
                cumulative = np.cumsum(probabilities, axis=-1, dtype=np.float64) / total[..., None]
            index = np.argmax(cumulative >= q - 1e-9, axis=-1)
            images[name] = (index / (NUM_CLASSES - 1)).astype(np.float32)
    return images


def calibration_maps(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """`isl.infer.well.CALIBRATION_STATISTICS` maps of `[..., 256]` bins at `truth` `[...]` (NaN: unknown), as the
    heads' run function computes them: p of the true bin, the CDF below it and the CRPS."""
    from isl.eval import calibration as calibration_lib

    known = ~np.isnan(truth)
    shape = truth.shape
    maps = {key: np.full(shape, np.nan, np.float32) for key in ("true_bin_probability", "cdf_below_true", "crps")}
    if not known.any():
        return maps
    p = probabilities[known].astype(np.float64)
    p /= p.sum(axis=-1, keepdims=True)
    bins = calibration_lib.true_bins(truth[known])
    cumulative = np.cumsum(p, axis=-1)
    maps["true_bin_probability"][known] = np.take_along_axis(p, bins[:, None], -1)[:, 0]
    below = np.where(bins > 0, np.take_along_axis(cumulative, np.maximum(bins - 1, 0)[:, None], -1)[:, 0], 0.0)
    maps["cdf_below_true"][known] = below
    step = (np.arange(NUM_CLASSES)[None, :] >= bins[:, None]).astype(np.float64)
    difference = (cumulative - step)[:, :-1]
    maps["crps"][known] = (difference * difference).sum(axis=-1) / (NUM_CLASSES - 1)
    return maps


@dataclasses.dataclass
class _Source:
    """The `isl.infer.well.prediction_summary` view of an ensemble (source, config, calibration record)."""

    source: str
    config: Any
    ensemble: Ensemble

    def calibration_record(self) -> dict[str, Any]:
        return self.ensemble.calibration_record()


# The members' bins of one block aim at this many bytes (`block_shape`); the statistics and maps of the mixture are
# computed `STATISTIC_PIXELS` pixels at a time (their float64 cumulative sums).
BLOCK_BYTES = 0.25e9
STATISTIC_PIXELS = 16384


def _predict_block(ensemble: Ensemble, stack: Any, block: tuple[int, int, int, int], indices: Sequence[int],
                   tta: bool, progress: Callable[[str], None] | None, images: dict[str, np.ndarray],
                   maps: dict[str, np.ndarray] | None, truth: tuple[np.ndarray, np.ndarray] | None,
                   offset: int) -> None:
    """Every member's prediction of `block` (r0, r1, c0, c1), combined into the band's `images` (and `maps`, with the
    band's `truth`) at columns `offset` onwards."""
    band0, band1, block0, block1 = block
    member_values, mixture = [], None
    for index, member in enumerate(ensemble.members):  # One member's bins at a time, added to the mixture.
        if progress is not None:
            progress(f"rows {band0}:{band1}, columns {block0}:{block1}, member {member.model_dir}"
                     + (" (8 transforms)" if tta else ""))
        value, probabilities = member_window(member, stack, block, ensemble.channels, tta)
        member_values.append(value)
        mixture = ensemble.add_to_mixture(mixture, index, probabilities)
        del probabilities
    values = ensemble.combine_values(member_values)
    columns = slice(offset, offset + block1 - block0)
    rows_per_chunk = max(1, STATISTIC_PIXELS // (block1 - block0))
    if mixture is not None:
        for position, index in enumerate(indices):  # Channel by channel, in chunks: the cumulative sums are float64.
            for first in range(0, band1 - band0, rows_per_chunk):
                part = slice(first, min(band1 - band0, first + rows_per_chunk))
                bins = mixture[part, :, index, :]
                for name, image in bin_statistic_images(bins, tuple(images)).items():
                    images[name][part, columns, position] = image
                if maps is not None:
                    known = truth[1][part, columns, position]
                    if known.any():
                        true_values = np.where(known, truth[0][part, columns, position], np.nan)
                        for key, image in calibration_maps(bins, true_values).items():
                            maps[key][part, columns, position] = image
    if values is not None:  # "values" and "both": the median and the mean are the combined value.
        for name in ("median", "mean"):
            if name in images:
                images[name][:, columns] = values[..., indices]


def block_shape(num_channels: int, width: int) -> tuple[int, int]:
    """(rows, columns) of one block the members predict at once: `BAND_ROWS` rows and as many columns (at most the
    window's `width`, in equal blocks) as keep one block's bins `[rows, columns, C, 256]` within `BLOCK_BYTES`."""
    columns = max(64, int(BLOCK_BYTES // (BAND_ROWS * num_channels * NUM_CLASSES * 4)))
    blocks = -(-width // columns)
    return BAND_ROWS, -(-width // blocks)


def expected_peak(ensemble: Ensemble, window: tuple[int, int, int, int], chosen: Sequence[str], names: Sequence[str],
                  tta: bool, well: Any, panels: bool) -> tuple[dict[str, float], str]:
    """The modelled peak of `predict_well` (`isl.infer.bands.expected_peak`'s parts) and how the members run.

    network: the largest member pass over one block with its context; rows: the block's bins (a member's, its
    `--tta` sum, the mixture and the statistics' float64 chunks) and one band's statistics and maps.
    """
    from isl.infer import bands as bands_lib
    from isl.infer import predict as predict_lib
    from isl.infer import readout as readout_infer
    from isl.infer import regression
    from isl.infer import tiling

    row0, row1, column0, column1 = window
    width = column1 - column0
    rows, columns = block_shape(len(ensemble.channels), width)
    rows = min(rows, row1 - row0)
    network = 0.0
    for member in ensemble.members:
        predictor = member.predictor
        if predictor.readout is not None:
            part = readout_infer.embedder_bytes(readout_infer.embedder_of(predictor), columns)
        elif predictor.config.model.architecture == "unet_regression":
            context = 2 * regression.context_pixels(predictor.config)
            part = min(regression.pass_bytes(predictor.config, rows + context, columns + context),
                       regression.PASS_BYTES)
        else:  # One tile's activations, and the stitcher's rows (about two row runs) of the block's bins.
            per_input, _ = predict_lib.memory_per_pixel(predictor.config.model, len(ensemble.channels), NUM_CLASSES,
                                                        predictor.compute_dtype)
            side = max(HEADS_TILE, tiling.smallest_tile_size(predictor.geometry, "exact"))
            run_rows = side - 2 * predictor.geometry.border
            part = side * side * per_input + 2 * run_rows * columns * len(ensemble.channels) * NUM_CLASSES * 4.0
        network = max(network, part)
    bins = rows * columns * len(ensemble.channels) * NUM_CLASSES * 4.0
    # One band's statistics and maps, and the temporaries of the members' bins being built.
    band = rows * width * len(chosen) * 4.0 * (len(names) + 6) + dense_chunk_bytes()
    # A member's bins, the mixture, and with --tta the sum and one transform's.
    parts = bands_lib.expected_peak(network, (2 + (2 if tta else 0)) * bins + band, well, width, panels)
    return parts, f"members in blocks of {rows} x {columns} px"


def predict_well(
    ensemble: Ensemble,
    input_dir: str,
    output_dir: str,
    channels: Sequence[str] | None = None,
    statistics: Sequence[str] = ("median",),
    image_format: str = "png",
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
    panels: bool = True,
    file_names: str = "lab",
    panel_bits: int = 16,
    save_calibration: bool = True,
    tta: bool = False,
    progress: Callable[[str], None] | None = None,
    available_bytes: float | None = None,
) -> dict[str, Any]:
    """Predicts one well (or `window`) with the ensemble into `output_dir/<well>/`; returns prediction.json's contents
    plus `well_dir`.

    Writes what a read-out writes: the statistic images, the target panel (median, truth, error) and, with the truth
    and a distribution, the calibration TIFFs that `isl evaluate` scores. The well is read lazily; every member
    predicts one block (`block_shape`: a band of rows, cut in columns) at a time, and each band is written through
    `isl.infer.bands.BandWriter`, so memory is one block's bins and one band's rows, whatever the image area.
    """
    import dataclasses as dataclasses_lib

    from isl.data import convert
    from isl.data import wells as wells_lib
    from isl.infer import bands as bands_lib
    from isl.infer import well as well_lib
    from isl.io import prediction_file
    from isl.model import geometry as geometry_lib

    chosen = tuple(channels) if channels else ensemble.channels
    unknown = [channel for channel in chosen if channel not in ensemble.channels]
    if unknown:
        raise errors.InputError(f"--channels: the ensemble does not predict {', '.join(unknown)}; it predicts "
                                f"{', '.join(ensemble.channels)}.")
    names = check_statistics(statistics, ensemble.with_distribution)
    config = ensemble.config
    well = wells_lib.read_checked_well(config, input_dir, lazy=True)  # Read by windows, never held whole.
    row0, row1, column0, column1 = convert.well_window(well, window)
    height, width = row1 - row0, column1 - column0
    expected, what = expected_peak(ensemble, (row0, row1, column0, column1), chosen, names, tta, well, panels)
    print(bands_lib.check_memory(expected, what, "predict a narrower --region (the bands span its width)",
                                 available_bytes), flush=True)
    indices = [ensemble.channels.index(channel) for channel in chosen]
    wanted = tuple(dict.fromkeys(names + ("median",)))
    region = geometry_lib.OutputRegion(row0, column0, height, width)
    well_dir = os.path.join(output_dir, well_lib._safe_name(well.name))
    writer = bands_lib.BandWriter(well_dir, well, config, chosen, names, region, image_format, file_names, panels,
                                  ensemble.with_distribution and save_calibration, panel_bits)
    _, block_columns = block_shape(len(ensemble.channels), width)
    start = time.perf_counter()
    try:
        for band0, band1 in bands(row0, row1, BAND_ROWS):
            images = {name: np.zeros((band1 - band0, width, len(chosen)), np.float32) for name in wanted}
            truth = writer.truth(band0, band1) if (writer.with_maps or writer.with_panel) else None
            maps = ({key: np.full((band1 - band0, width, len(chosen)), np.nan, np.float32)
                     for key in ("true_bin_probability", "cdf_below_true", "crps")} if writer.with_maps else None)
            for block0 in range(column0, column1, block_columns):
                block1 = min(column1, block0 + block_columns)
                block = (band0, band1, block0, block1)
                _predict_block(ensemble, well.inputs, block, indices, tta, progress, images, maps, truth,
                               block0 - column0)
            writer.write(band0, images, maps, truth)
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - start
    panel_files = writer.commit()
    source = _Source(ensemble.source or ensemble.members[0].model_dir,
                     dataclasses_lib.replace(config, name=f"ensemble of {len(ensemble.members)}"), ensemble)
    summary = well_lib.prediction_summary(
        source, well, input_dir, chosen, names, "reflect", region, image_format, writer.files, geometry=None,
        panels=panel_files, truth_channels=writer.truth_channels, calibration_files=writer.calibration_files,
        num_runs=len(ensemble.members) * (len(TRANSFORMS) if tta else 1), exact=False,
        seconds=round(seconds, 3), ensemble={
            "members": [member.model_dir for member in ensemble.members],
            "kinds": [member.kind for member in ensemble.members],
            "combination": ensemble.combination, "tta": tta},
    )
    summary["architecture"] = "ensemble" if ensemble.source else summary["architecture"]
    prediction_file.write_summary(well_dir, summary)
    summary["well_dir"] = well_dir
    # What `isl predict` prints instead of tile runs (not in prediction.json).
    summary["runs_described"] = f"{summary['num_runs']} member predictions" + (", test-time augmentation" if tta
                                                                                else "")
    return summary
