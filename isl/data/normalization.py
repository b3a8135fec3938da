"""Named normalisations of the transmitted-light input (the one owner).

The paper normalised its images offline, before writing PNGs, and its
reader only divides by the type's maximum. For other microscopes `isl
convert` and `isl predict` apply one of these to the transmitted-light
z-stack (labels are never normalised, only scaled by their bit depth):

* `none` (default, faithful): keep value / max_value. Right for data
  already normalised like the paper's.
* `paper`: per z slice, `clip(0.5 + (x - mean(x)) * PAPER_SPREAD / std(x), 0, 1)`:
  mean 0.5 and the fixed spread measured on the paper's sample, then
  clipped to [0, 1] as the released data is.
* `percentile`: CSBDeep's percentile scaling over the whole stack,
  `(x - p3) / (p99.8 - p3)`, clipped to [0, 1] (the records hold [0, 1]).

Every function takes float arrays in [0, 1] shaped `[num_z, height, width]`
(one stack) and returns the same shape, float32 in [0, 1]. The choice is
recorded in `dataset.json` (`normalization`) and in the model's
`config.json` (`data.normalization`), so prediction applies the same one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from isl import errors

NONE = "none"
PAPER = "paper"
PERCENTILE = "percentile"
NORMALIZATIONS = (NONE, PAPER, PERCENTILE)

# Mean and spread of a transmitted-light slice in the paper's data: the 13
# phase-contrast slices of the released condition B sample have per-slice
# means 0.4992-0.5009 and standard deviations 0.1142-0.1163 (median 0.1156),
# with 0.15-0.6 % of pixels clipped at 0 or 1 (BUILD_NOTES.md, issue 14).
PAPER_MEAN = 0.5
PAPER_SPREAD = 0.1156
# CSBDeep's defaults (csbdeep.utils.normalize): 3rd and 99.8th percentile.
PERCENTILE_LOW = 3.0
PERCENTILE_HIGH = 99.8
_EPS = 1e-20

# A stack outside these per-slice statistics (after normalisation) is far
# from what the paper's models saw; `check_statistics` then warns. The
# paper's normalised slices keep their mean within 0.486-0.513 even in
# 128-px crops of the sample (whose std then ranges 0.054-0.225), so the
# mean is checked tightly and the std loosely; raw camera data (e.g. a
# well-exposed 14-bit phase stack, mean 0.4) falls outside.
EXPECTED_MEAN_RANGE = (0.45, 0.55)
EXPECTED_STD_RANGE = (0.05, 0.25)


def check_name(name: str) -> str:
    """Returns `name` if it is a known normalisation, else raises InputError."""
    if name not in NORMALIZATIONS:
        raise errors.InputError(
            f"Unknown normalization {name!r}; use one of {', '.join(NORMALIZATIONS)}."
        )
    return name


def normalize_stack(stack: np.ndarray, name: str) -> np.ndarray:
    """Applies a named normalisation to one transmitted-light z-stack.

    Args:
        stack: `[num_z, height, width]` float in [0, 1] (value / max_value).
        name: one of `NORMALIZATIONS`.

    Returns:
        `[num_z, height, width]` float32 in [0, 1].
    """
    check_name(name)
    stack = np.asarray(stack, np.float32)
    if stack.ndim != 3:
        raise ValueError(f"normalize_stack needs [num_z, height, width]. Received shape: {stack.shape}")
    if name == NONE:
        return stack
    if name == PAPER:
        # Slice by slice, so only one float64 slice exists at a time (not a float64 copy of the stack).
        result = np.empty(stack.shape, np.float32)
        for z, plane in enumerate(stack):
            values = plane.astype(np.float64)
            mean, std = values.mean(), values.std()
            # A flat slice (std 0) becomes mean 0.5 everywhere.
            scale = PAPER_SPREAD / std if std > 0 else 0.0
            result[z] = np.clip(PAPER_MEAN + (values - mean) * scale, 0.0, 1.0)
        return result
    low, high = np.percentile(stack, [PERCENTILE_LOW, PERCENTILE_HIGH])
    result = (stack.astype(np.float64) - low) / (high - low + _EPS)
    return np.clip(result, 0.0, 1.0).astype(np.float32)


def to_uint16(stack: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint16 (x 65535, rounded), the records' pixel format."""
    return np.round(np.clip(stack, 0.0, 1.0) * 65535.0).astype(np.uint16)


def plane_moments(plane: np.ndarray) -> tuple[float, float]:
    """(mean, std) of one `[H, W]` slice, in float64 (the figures `slice_statistics` takes its extremes of)."""
    values = np.asarray(plane).astype(np.float64)
    return float(values.mean()), float(values.std())


def slice_statistics(
    stack: np.ndarray | None, moments: Sequence[tuple[float, float]] | None = None
) -> tuple[float, float, float, float]:
    """(lowest mean, highest mean, lowest std, highest std) over the slices of `[z, H, W]`.

    `moments` (one `plane_moments` per slice, gathered while a well is read
    plane by plane) replaces the stack.
    """
    # One float64 slice at a time: a float64 copy of a 4096^2 x 13 stack would be 1.7 GB.
    if moments is None:
        moments = [plane_moments(plane) for plane in np.asarray(stack)]
    means = [mean for mean, _ in moments]
    stds = [std for _, std in moments]
    return float(min(means)), float(max(means)), float(min(stds)), float(max(stds))


def normalize_plane(plane: np.ndarray, name: str) -> np.ndarray:
    """`normalize_stack` of one `[H, W]` slice: the same float32 values, for `none` and `paper` (per slice).

    `percentile` scales by the whole stack's percentiles, so it has no per-slice form (ValueError).
    """
    if check_name(name) == PERCENTILE:
        raise ValueError("the percentile normalisation needs the whole stack (normalize_stack).")
    return normalize_stack(np.asarray(plane)[None], name)[0]


def check_statistics(
    stack: np.ndarray | None, where: str, name: str, moments: Sequence[tuple[float, float]] | None = None
) -> str | None:
    """A warning when a (normalised) stack is far from what its normalisation should produce.

    `none` and `paper` aim at the paper's statistics: per-slice means in
    `EXPECTED_MEAN_RANGE` and stds in `EXPECTED_STD_RANGE`. `percentile`
    aims at no particular mean or spread (an ordinary bright-field stack
    gives mean 0.54 / std 0.33, the paper's sample 0.32 / 0.14): it maps the
    stack's 3rd..99.8th percentiles to 0..1, so over the whole stack about
    3 % of the pixels are clipped at 0 and 0.2 % at 1. It is checked against
    that: a slice with more than `PERCENTILE_MAX_CLIPPED` of its pixels
    clipped, or a std below `PERCENTILE_MIN_STD`, is far from what it
    produces (a dark, saturated, empty or flat slice).

    Args:
        stack: `[num_z, height, width]` float in [0, 1], as the network sees it.
        where: the well or file, for the message.
        name: the normalisation that was applied.
        moments: per slice (mean, std) (`plane_moments`) instead of the
            stack, for `none` and `paper`.

    Returns:
        One line saying what is off and what to do, or None.
    """
    if name == PERCENTILE:
        return _check_percentile(np.asarray(stack), where)
    low_mean, high_mean, low_std, high_std = slice_statistics(stack, moments)
    mean_ok = EXPECTED_MEAN_RANGE[0] <= low_mean and high_mean <= EXPECTED_MEAN_RANGE[1]
    std_ok = EXPECTED_STD_RANGE[0] <= low_std and high_std <= EXPECTED_STD_RANGE[1]
    if mean_ok and std_ok:
        return None
    seen = f"per-slice mean {low_mean:.3g}-{high_mean:.3g}, std {low_std:.3g}-{high_std:.3g}"
    expected = f"the paper's data has mean {PAPER_MEAN} and std about {PAPER_SPREAD}"
    if name == NONE:
        advice = (
            "pass --normalization=paper (or percentile) to isl convert, which records it for training and "
            "prediction, or to isl predict / isl readout when the model was trained on normalised data"
        )
    else:
        advice = "check the transmitted-light files (a mostly empty or saturated field?)"
    return f"{where}: transmitted light after --normalization={name} has {seen}; {expected}. To fix: {advice}."


# What `percentile` produces: about 3.2 % of a stack's pixels clipped; a slice far above that, or flat, is off.
PERCENTILE_MAX_CLIPPED = 0.25
PERCENTILE_MIN_STD = 0.02


def _check_percentile(stack: np.ndarray, where: str) -> str | None:
    """The `percentile` branch of `check_statistics`."""
    values = np.asarray(stack, np.float32)
    clipped = ((values <= 0.0) | (values >= 1.0)).mean(axis=(1, 2))
    stds = values.std(axis=(1, 2), dtype=np.float64)
    off = [z for z in range(len(values)) if clipped[z] > PERCENTILE_MAX_CLIPPED or stds[z] < PERCENTILE_MIN_STD]
    if not off:
        return None
    shown = ", ".join(f"z {z}: {clipped[z]:.0%} clipped, std {stds[z]:.3g}" for z in off[:4])
    more = f" and {len(off) - 4} more" if len(off) > 4 else ""
    return (
        f"{where}: after --normalization=percentile (the stack's 3rd..99.8th "
        f"percentiles -> 0..1, which clips about 3% of a stack's pixels) {len(off)} slice(s) are far from that "
        f"({shown}{more}); expected at most {PERCENTILE_MAX_CLIPPED:.0%} clipped and a std above "
        f"{PERCENTILE_MIN_STD} per slice. To fix: check those slices (dark, saturated, empty or far out of focus?), "
        "or use --normalization=paper, which scales every slice on its own."
    )


def from_description(description: Mapping[str, Any] | None) -> str:
    """The normalisation recorded in a `dataset.json` (older ones: none)."""
    return check_name(str((description or {}).get("normalization", NONE)))


def config_for_dataset(config: Any, data_dir: str) -> Any:
    """The experiment config with `data.normalization` taken from `dataset.json`.

    The records carry their normalisation; the model's config.json must say
    the same so that `isl predict` applies it. A config that names another
    normalisation than the dataset's is an error (the default `none` takes
    the dataset's).

    Args:
        config: an `ExperimentConfig`.
        data_dir: the `isl convert` output folder.

    Raises:
        InputError: naming dataset.json when the two disagree.
    """
    import dataclasses
    import json
    import os

    path = os.path.join(data_dir, "dataset.json")
    description = None
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                description = json.load(handle)
        except (OSError, ValueError):
            description = None  # The pipeline reports a bad dataset.json itself.
    config = _channel_map_for_dataset(config, description, path)
    recorded = from_description(description)
    wanted = config.data.normalization
    if wanted == recorded:
        return config
    if wanted != NONE:
        raise errors.InputError(
            f"{path}: the data was converted with --normalization={recorded}, but the config asks for "
            f"data.normalization={wanted}; convert again with --normalization={wanted} or drop the setting."
        )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, normalization=recorded))


def _channel_map_for_dataset(config: Any, description: Mapping[str, Any] | None, path: str) -> Any:
    """The config with `data.channel_map` taken from dataset.json (the records hold the mapped names).

    A model trained on records converted with a channel map must apply the
    same map when it reads raw files, so it is recorded in its config.json.

    Raises:
        InputError: naming dataset.json when the config asks for another map.
    """
    import dataclasses

    recorded = tuple((description or {}).get("channel_map", ()) or ())
    wanted = tuple(config.data.channel_map)
    if wanted == recorded:
        return config
    if wanted:
        raise errors.InputError(
            f"{path}: the data was converted with --channel_map={','.join(recorded) or '(none)'}, but the config asks "
            f"for data.channel_map={','.join(wanted)}; convert again with that map or drop the setting."
        )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, channel_map=recorded))
