"""Finding, checking and reading wells (fields of view) from image folders.

Two layouts are read (see data/README.md):

* the lab's file naming (`isl.io.filenames`), in either published form.
  A folder may hold one well (the released sample) or many (the paper data's
  `<lab>/<condition>/` folders); files are grouped into wells by folder and
  by their lab, condition, date and well tokens;
* the generic layout: a folder with `manifest.csv` or `manifest.json`
  (`isl.data.manifest`).

Every check runs on file names and image headers before any pixel is read,
and each failure raises `InputError` naming the file(s) and the problem.

Transmitted-light modalities: the released code sums all modalities into
TRANSMISSION assuming exactly one is present (§3.4). A well with two
modalities would leave [0, 1], so it is refused here with a clear message.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import errno
import logging
import mmap
import os
import tempfile
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import channel_map as channel_map_lib
from isl.data import manifest as manifest_lib
from isl.data import normalization as normalization_lib
from isl.io import filenames
from isl.io import images

ImageEntry = manifest_lib.ImageEntry
logger = logging.getLogger(__name__)
_MAX_LISTED = 6


def _listing(paths: list[str]) -> str:
    """A short list of file names for messages."""
    shown = [os.path.basename(path) for path in paths[:_MAX_LISTED]]
    more = f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return ", ".join(shown) + more


@dataclasses.dataclass
class WellSource:
    """A well's files, checked by name and header, pixels not yet read.

    Attributes:
        name: unique readable name, e.g. "FINKBEINER_KEVAN_0_8_2015-10-05_A4".
        directory: the folder holding the files.
        metadata: lab, condition, well, date (strings, possibly empty).
        modality: the transmitted-light modality (e.g. PHASE_CONTRAST).
        inputs: one entry per source z slice, sorted by z (0..n-1).
        targets: one entry per fluorescence channel, in vocabulary order.
        height, width: the common image size.
        input_dtype: uint8 or uint16 (every z slice has the same).
        target_dtypes: the dtype of each target entry.
        input_max_value: the value that maps to 1.0 for the z-stack:
            `2**bits - 1` for the declared significant bits, else the
            type's maximum (255 or 65535).
        target_max_values: the same for each target entry.
    """

    name: str
    directory: str
    metadata: dict[str, str]
    modality: str = ""
    inputs: list[ImageEntry] = dataclasses.field(default_factory=list)
    targets: list[ImageEntry] = dataclasses.field(default_factory=list)
    height: int = 0
    width: int = 0
    input_dtype: np.dtype = np.dtype(np.uint16)
    target_dtypes: list[np.dtype] = dataclasses.field(default_factory=list)
    input_max_value: int = 65535
    target_max_values: list[int] = dataclasses.field(default_factory=list)

    @property
    def num_source_z(self) -> int:
        return len(self.inputs)

    @property
    def target_channels(self) -> tuple[str, ...]:
        return tuple(entry.channel for entry in self.targets)

    @property
    def source_files(self) -> list[str]:
        return sorted({entry.path for entry in self.inputs + self.targets})


@dataclasses.dataclass
class ScanResult:
    """Wells found under the input folders, and the files deliberately skipped.

    Attributes:
        wells: sorted by name.
        skipped: (path, reason) for files not used (predictions, non-images, ...).
    """

    wells: list[WellSource]
    skipped: list[tuple[str, str]]


@dataclasses.dataclass
class Well:
    """A well's pixels as float32 in [0, 1].

    Attributes:
        name: the well's name.
        inputs: `[num_source_z, height, width]` float32, the TRANSMISSION stack
            (after the named normalisation, if any).
        targets: channel -> `[height, width]` float32, the real targets present.
        metadata: lab, condition, well, date, modality, source_files,
            normalization, warnings (lines for the user).
    """

    name: str
    inputs: np.ndarray
    targets: dict[str, np.ndarray]
    metadata: dict


@dataclasses.dataclass
class RawWell:
    """A well's pixels in their integer form, channels last, for the converter.

    Attributes:
        source: the checked files.
        inputs: `[height, width, num_source_z]` uint16 (8-bit values kept as is).
        input_max_value: 255 or 65535.
        targets: `[height, width, T]` uint16 for `source.targets`.
        target_max_values: per target, 255 or 65535.
        embedding: `[height, width, E]` float16, the hybrid's frozen-core embedding
            (`isl convert --embed_with`), or None.
    """

    source: WellSource
    inputs: np.ndarray
    input_max_value: int
    targets: np.ndarray
    target_max_values: tuple[int, ...]
    embedding: np.ndarray | None = None


def _unknown_channel_error(paths: list[str], channel: str, channels: config_lib.ChannelConfig) -> errors.InputError:
    extended = json.dumps(list(channels.target_channels) + [channel], separators=(",", ":"))
    return errors.InputError(
        f"{_listing(paths)} (in {os.path.dirname(paths[0]) or '.'}): unknown channel {channel!r}. "
        f"Known inputs: {', '.join(channels.input_modalities)}; targets: {', '.join(channels.target_channels)}. "
        f"To read it as one of the model's channels: {channel_map_lib.FLAG}={channel}=<channel>; to add it as a "
        f"target: --set 'channels.target_channels={extended}' (or a --config JSON)."
    )


def _modality_error(
    name: str,
    directory: str,
    other: dict[str, list[ImageEntry]],
    inputs: dict[str, list[ImageEntry]],
    channels: config_lib.ChannelConfig,
) -> errors.InputError:
    """The error for transmitted light of a modality the vocabulary does not take."""
    seen = "; ".join(f"{channel} ({len(group)} z slice(s), e.g. {os.path.basename(group[0].path)})"
                     for channel, group in sorted(other.items()))
    modality = sorted(other)[0]
    known = ", ".join(channels.input_modalities)
    also = f" (it also holds {', '.join(sorted(inputs))})" if inputs else ""
    modalities = json.dumps(sorted(set(channels.input_modalities) | set(other)), separators=(",", ":"))
    return errors.InputError(
        f"well {name} in {directory}: transmitted light of a modality the model does not take: {seen}{also}; "
        f"the model takes {known}. A model trained on one modality reads another only when you say so: "
        f"{channel_map_lib.FLAG}={modality}={channels.input_modalities[0]} reads it as {channels.input_modalities[0]} "
        f"(check the result against a stained well). To train a model on {modality}, convert and train with "
        f"--set 'channels.input_modalities={modalities}' (one modality per well)."
    )


def _well_name(key: filenames.ImageKey, directory: str) -> str:
    parts = [part for part in (key.lab, key.condition, key.date, key.well) if part]
    if key.minute not in ("", "0"):
        parts.append(f"minute{key.minute}")
    return "_".join(parts) if parts else os.path.basename(os.path.abspath(directory))


def _scan_lab_folder(
    directory: str, file_names: list[str], channels: config_lib.ChannelConfig, skipped: list[tuple[str, str]]
) -> list[tuple[str, dict[str, str], list[ImageEntry]]]:
    """Groups a folder's lab-named images into wells."""
    groups: dict[tuple, list[tuple[filenames.ImageKey, str]]] = collections.OrderedDict()
    synthetic_names = {synthetic.name for synthetic in channels.synthetic_channels}
    for file_name in file_names:
        path = os.path.join(directory, file_name)
        if file_name.startswith("."):
            continue
        is_image = images.is_image_path(path)
        if not is_image and not images.is_unsupported_image_path(path):
            if file_name not in manifest_lib.MANIFEST_NAMES:
                skipped.append((path, "not a PNG or TIFF image"))
            continue
        if not filenames.looks_like_lab_name(file_name):
            raise errors.InputError(
                f"{path}: not in the lab's file naming (no 'channel-NAME' token) and the folder has no "
                f"{manifest_lib.MANIFEST_CSV} or {manifest_lib.MANIFEST_JSON}. See data/README.md for both layouts."
            )
        if not is_image:
            raise errors.InputError(
                f"{path}: {os.path.splitext(path)[1]} images are not read; convert to 8/16-bit PNG or TIFF (lossless)."
            )
        key = filenames.parse(path)
        if key.is_predicted:
            skipped.append((path, "a PREDICTED image (model output), never an input"))
            continue
        if key.is_mask:
            skipped.append((path, "is_mask-true (the released code would have overwritten the image with it)"))
            continue
        if key.channel in synthetic_names:
            skipped.append((path, f"{key.channel} is synthetic; the pipeline computes it from its sources"))
            continue
        groups.setdefault(key.well_identity, []).append((key, path))
    wells = []
    for members in groups.values():
        key = members[0][0]
        metadata = {"lab": key.lab, "condition": key.condition, "well": key.well, "date": key.date}
        entries = [ImageEntry(path, item.channel, item.z) for item, path in members]
        wells.append((_well_name(key, directory), metadata, entries))
    return wells


def _classify(
    name: str,
    directory: str,
    entries: list[ImageEntry],
    channels: config_lib.ChannelConfig,
    skipped: list[tuple[str, str]],
    ignore_unknown: bool = False,
    channel_map: dict[str, str] | None = None,
) -> WellSource:
    """Checks one well's entries by name: channels, z slices, duplicates.

    Each file's channel is first renamed by `channel_map`
    (`isl.data.channel_map`). With `ignore_unknown`, files of channels
    outside the vocabulary are skipped (with a reason) instead of being an
    error. A transmitted-light modality the vocabulary lacks (a bright-field
    stack for a phase-contrast model) is never skipped silently: with no
    other transmitted light it is an error that names it and the map that
    would read it.
    """
    unknown: dict[str, list[str]] = collections.defaultdict(list)
    inputs: dict[str, list[ImageEntry]] = collections.defaultdict(list)
    other_modalities: dict[str, list[ImageEntry]] = collections.defaultdict(list)
    targets: dict[str, list[ImageEntry]] = collections.defaultdict(list)
    for entry in entries:
        mapped = channel_map_lib.apply(entry.channel, channel_map)
        if mapped != entry.channel:
            entry = dataclasses.replace(entry, channel=mapped)
        if channels.is_transmitted_light(entry.channel):
            if entry.z == filenames.MAXPROJECT:
                skipped.append((entry.path, f"{entry.channel} MAXPROJECT: transmitted light is read as z slices only"))
                continue
            if entry.channel in channels.input_modalities:
                inputs[entry.channel].append(entry)
            else:
                other_modalities[entry.channel].append(entry)
        elif entry.channel in channels.target_channels:
            if entry.z != filenames.MAXPROJECT:
                skipped.append((entry.path, f"{entry.channel} z slice {entry.z}: only MAXPROJECT targets are used"))
                continue
            targets[entry.channel].append(entry)
        else:
            unknown[entry.channel].append(entry.path)
    if other_modalities and (not inputs or not ignore_unknown):
        raise _modality_error(name, directory, other_modalities, inputs, channels)
    for channel, group in other_modalities.items():
        skipped.extend((entry.path, f"{channel}: not a channel of the model") for entry in group)
    for channel, paths in unknown.items():
        if not ignore_unknown:
            raise _unknown_channel_error(paths, channel, channels)
        skipped.extend((path, f"{channel}: not a channel of the model") for path in paths)
    if not inputs:
        found = sorted(targets)
        ignored = f"; ignored as not channels of the model: {', '.join(sorted(unknown))}" if unknown else ""
        raise errors.InputError(
            f"well {name} in {directory}: no transmitted-light images "
            f"({', '.join(channels.input_modalities)}) were found; found only "
            f"{', '.join(found) or 'nothing usable'}{ignored}. Name the stack's channel as one of the model's "
            f"modalities, or map yours with {channel_map_lib.FLAG}=YOURS={channels.input_modalities[0]}."
        )
    if len(inputs) > 1:
        described = "; ".join(
            f"{channel}: {len(group)} file(s), e.g. {os.path.basename(group[0].path)}"
            for channel, group in sorted(inputs.items())
        )
        raise errors.InputError(
            f"well {name} in {directory}: transmitted light of more than one modality ({described}). "
            "The paper sums modalities into TRANSMISSION assuming exactly one is present, which would "
            "leave [0, 1]; put each modality in its own well."
        )
    modality, stack = next(iter(inputs.items()))
    by_z: dict[int, list[ImageEntry]] = collections.defaultdict(list)
    for entry in stack:
        by_z[int(entry.z)].append(entry)
    for z, group in sorted(by_z.items()):
        if len(group) > 1:
            raise errors.InputError(
                f"well {name}: z slice {z} of {modality} is given {len(group)} times: "
                + ", ".join(f"{entry.path}" + (f" page {entry.page}" if entry.page else "") for entry in group)
            )
    count = max(by_z) + 1
    missing = [z for z in range(count) if z not in by_z]
    if missing:
        raise errors.InputError(
            f"well {name} in {directory}: {modality} z slices must be exactly 0..n-1; "
            f"missing z {', '.join(map(str, missing))} (present: {', '.join(map(str, sorted(by_z)))})."
        )
    ordered_targets = []
    for channel in channels.target_channels:
        group = targets.get(channel, [])
        if len(group) > 1:
            raise errors.InputError(
                f"well {name}: target {channel} is given {len(group)} times: {', '.join(entry.path for entry in group)}"
            )
        ordered_targets.extend(group)
    return WellSource(
        name=name,
        directory=directory,
        metadata={},
        modality=modality,
        inputs=[by_z[z][0] for z in range(count)],
        targets=ordered_targets,
    )


def _check_headers(well: WellSource) -> None:
    """Reads every header: one image size for the well, one bit depth per z-stack."""
    infos = {}
    for entry in well.inputs + well.targets:
        if entry.path not in infos:
            infos[entry.path] = images.read_info(entry.path)
    sizes = collections.Counter((info.height, info.width) for info in infos.values())
    (height, width), _ = sizes.most_common(1)[0]
    odd = [path for path, info in infos.items() if (info.height, info.width) != (height, width)]
    if odd:
        details = ", ".join(
            f"{os.path.basename(path)} is {infos[path].height}x{infos[path].width}" for path in odd[:_MAX_LISTED]
        )
        raise errors.InputError(
            f"well {well.name} in {well.directory}: mismatched image sizes; most files are "
            f"{height}x{width} (rows x columns) but {details}."
        )
    input_depths: dict[int, list[str]] = collections.defaultdict(list)
    for entry in well.inputs:
        input_depths[infos[entry.path].bit_depth].append(entry.path)
    if len(input_depths) > 1:
        details = "; ".join(
            f"{depth}-bit: {_listing(sorted(set(paths)))}" for depth, paths in sorted(input_depths.items()))
        raise errors.InputError(
            f"well {well.name} in {well.directory}: mixed bit depths in the {well.modality} z-stack ({details}). "
            "Every slice of a stack must have the same bit depth."
        )
    for entry in well.inputs + well.targets:
        if entry.channel_index >= infos[entry.path].num_channels:
            raise errors.InputError(
                f"{entry.path}: has {infos[entry.path].num_channels} channel(s); channel {entry.channel_index} "
                "requested."
            )
    input_maxima = {_max_value(entry, infos[entry.path]) for entry in well.inputs}
    if len(input_maxima) > 1:
        raise errors.InputError(
            f"well {well.name} in {well.directory}: the {well.modality} z slices declare different bit depths "
            f"(maxima {', '.join(map(str, sorted(input_maxima)))}); every slice of a stack must have the same."
        )
    well.height, well.width = height, width
    well.input_dtype = infos[well.inputs[0].path].dtype
    well.target_dtypes = [infos[entry.path].dtype for entry in well.targets]
    well.input_max_value = input_maxima.pop()
    well.target_max_values = [_max_value(entry, infos[entry.path]) for entry in well.targets]


def _max_value(entry: ImageEntry, info: images.ImageInfo) -> int:
    """The value that maps to 1.0: from the manifest's bits, the file's declared bits, or its type."""
    bits = entry.bits or info.significant_bits
    if bits and bits < info.bit_depth:
        return 2**bits - 1
    return images.max_value(info.dtype)


def scan_wells(
    input_dirs: list[str] | tuple[str, ...] | str,
    channels: config_lib.ChannelConfig,
    check_headers: bool = True,
    ignore_unknown: bool = False,
    channel_map: dict[str, str] | None = None,
) -> ScanResult:
    """Finds and checks every well under the input folders (recursively).

    Args:
        input_dirs: one or more folders.
        channels: the vocabulary; files of other channels are an error.
        check_headers: also read image headers (size, bit depth).
        ignore_unknown: skip files of unknown channels (prediction) instead
            of raising.
        channel_map: renames files' channels first (`isl.data.channel_map`).

    Returns:
        A `ScanResult` with wells sorted by name.

    Raises:
        InputError: naming the file(s) and the problem.
    """
    if isinstance(input_dirs, (str, os.PathLike)):
        input_dirs = [os.fspath(input_dirs)]
    if not input_dirs:
        raise errors.InputError("No input folder given.")
    skipped: list[tuple[str, str]] = []
    found: list[WellSource] = []
    for input_dir in input_dirs:
        input_dir = os.fspath(input_dir)
        if not os.path.isdir(input_dir):
            raise errors.InputError(f"{input_dir}: not a folder.")
        for directory, subdirectories, file_names in os.walk(input_dir):
            # OME-Zarr images are folders: data, not more wells.
            subdirectories[:] = sorted(
                name for name in subdirectories if not name.startswith(".") and not images.is_bioio_path(name)
            )
            manifest_path = manifest_lib.find_manifest(directory)
            if manifest_path:
                metadata, entries = manifest_lib.read_manifest(manifest_path, channels, channel_map)
                groups = [(metadata["name"], {k: v for k, v in metadata.items() if k != "name"}, entries)]
            else:
                groups = _scan_lab_folder(directory, sorted(file_names), channels, skipped)
            for name, metadata, entries in groups:
                well = _classify(name, directory, entries, channels, skipped, ignore_unknown, channel_map)
                well.metadata = {key: metadata.get(key, "") for key in ("lab", "condition", "well", "date")}
                found.append(well)
    if not found:
        raise errors.InputError(
            f"No images found in {', '.join(map(str, input_dirs))}: expected PNG/TIFF files in the lab's "
            "naming or a folder with manifest.csv/manifest.json (see data/README.md)."
        )
    names = collections.defaultdict(list)
    for well in found:
        names[well.name].append(well.directory)
    repeated = {name: dirs for name, dirs in names.items() if len(dirs) > 1}
    if repeated:
        name, dirs = next(iter(repeated.items()))
        raise errors.InputError(
            f"well {name} appears more than once (in {', '.join(dirs)}); each well may be converted once."
        )
    found.sort(key=lambda well: well.name)
    if check_headers:
        for well in found:
            _check_headers(well)
    return ScanResult(wells=found, skipped=skipped)


def _read_plane(entry: ImageEntry, well: WellSource, dtype: np.dtype, maximum: int) -> np.ndarray:
    if entry.project:
        plane = images.read_pages(entry.path, entry.channel_index).max(axis=0)
    else:
        plane = images.read_image(entry.path, entry.page, entry.channel_index)
    if plane.shape != (well.height, well.width):
        raise errors.InputError(
            f"{entry.path}: is {plane.shape[0]}x{plane.shape[1]} but the well is {well.height}x{well.width}."
        )
    if plane.dtype != dtype:
        raise errors.InputError(f"{entry.path}: pixel type {plane.dtype} differs from its header ({dtype}).")
    if maximum < images.max_value(dtype) and int(plane.max(initial=0)) > maximum:
        raise errors.InputError(
            f"{entry.path}: holds values up to {int(plane.max())}, above {maximum}, the maximum of its declared "
            f"{maximum.bit_length()} bits; fix the bits column of the manifest (or leave it empty)."
        )
    return plane


def load_raw_well(well: WellSource) -> RawWell:
    """Reads a checked well's pixels, channels last, in uint16.

    Memory: one uint16 copy of the well (e.g. 16 x 1024 x 768 x 2 B = 25 MB).
    """
    if not well.height:
        _check_headers(well)
    inputs = np.empty((well.height, well.width, well.num_source_z), np.uint16)
    for index, entry in enumerate(well.inputs):
        inputs[:, :, index] = _read_plane(entry, well, well.input_dtype, well.input_max_value)
    targets = np.empty((well.height, well.width, len(well.targets)), np.uint16)
    for index, (entry, dtype, maximum) in enumerate(zip(well.targets, well.target_dtypes, well.target_max_values)):
        targets[:, :, index] = _read_plane(entry, well, dtype, maximum)
    return RawWell(
        source=well,
        inputs=inputs,
        input_max_value=well.input_max_value,
        targets=targets,
        target_max_values=tuple(well.target_max_values),
    )


def normalize_raw(raw: RawWell, normalization: str) -> tuple[RawWell, str | None]:
    """Applies a named normalisation to a raw well's z-stack (`isl.data.normalization`).

    Returns:
        (the well, with inputs as uint16 of the normalised [0, 1] values and
        `input_max_value` 65535 unless `normalization` is none; a warning
        line when the result is far from the paper's statistics, else None).
    """
    where = f"well {raw.source.name} ({raw.source.directory})"
    if normalization == normalization_lib.PERCENTILE:  # Scaled by the whole stack's percentiles.
        stack = np.moveaxis(raw.inputs, -1, 0).astype(np.float32) / np.float32(raw.input_max_value)
        stack = normalization_lib.normalize_stack(stack, normalization)
        warning = normalization_lib.check_statistics(stack, where, normalization)
        inputs = np.ascontiguousarray(np.moveaxis(normalization_lib.to_uint16(stack), 0, -1))
        return dataclasses.replace(raw, inputs=inputs, input_max_value=65535), warning
    # `none` and `paper` act on each slice alone: one float32 slice at a time (the same values as the whole
    # stack's float32 copy, which was 0.87 GB at 4096^2 x 13), written back into a uint16 copy for `paper`.
    inputs = raw.inputs if normalization == normalization_lib.NONE else np.empty_like(raw.inputs)
    moments = []
    for z in range(raw.inputs.shape[-1]):
        plane, plane_moments = _normalized_raw_plane(raw.inputs[:, :, z], raw.input_max_value, normalization)
        moments.append(plane_moments)
        if inputs is not raw.inputs:
            inputs[:, :, z] = plane
    warning = normalization_lib.check_statistics(None, where, normalization, moments=moments)
    if normalization == normalization_lib.NONE:
        return raw, warning
    return dataclasses.replace(raw, inputs=inputs, input_max_value=65535), warning


def _normalized_raw_plane(plane: np.ndarray, max_value: int, normalization: str) -> tuple[np.ndarray, Any]:
    """One raw input slice `[H, W]` normalised per slice (`none` or `paper`): (the uint16 plane the record
    holds, the input itself for `none`; the slice's moments for the statistics warning)."""
    values = np.divide(plane, np.float32(max_value), dtype=np.float32)
    values = normalization_lib.normalize_plane(values, normalization)
    moments = normalization_lib.plane_moments(values)
    if normalization == normalization_lib.NONE:
        return plane, moments
    return normalization_lib.to_uint16(values), moments


@dataclasses.dataclass
class SpilledRawWell:
    """A `RawWell` whose pixels wait in an unlinked temporary file (`spill_raw_well`), planes first.

    Attributes:
        source: the checked files.
        inputs: `SpilledStack` `[num_source_z, height, width]` uint16 (normalised as `normalize_raw` does).
        input_max_value: 255 or 65535 (65535 once normalised).
        targets: `SpilledStack` `[T, height, width]` uint16 for `source.targets`.
        target_max_values: per target, 255 or 65535.
    """

    source: WellSource
    inputs: Any
    input_max_value: int
    targets: Any
    target_max_values: tuple[int, ...]
    embedding: np.ndarray | None = None  # As `RawWell.embedding` (the hybrid's `isl convert --embed_with`).


def spill_raw_well(well: WellSource, normalization: str, spill_dir: str | None = None
                   ) -> tuple[SpilledRawWell, str | None]:
    """`normalize_raw(load_raw_well(well), normalization)` plane by plane into a temporary file.

    The same uint16 values and warning for `none` and `paper` (per-slice
    normalisations); `percentile` scales by the whole stack, so it is
    refused here (ValueError): read it whole. Peak: one decoded plane and
    its float32 copy, whatever the well's size.
    """
    if normalization == normalization_lib.PERCENTILE:
        raise ValueError("the percentile normalisation needs the whole stack; use load_raw_well")
    if not well.height:
        _check_headers(well)
    num_z, num_targets = well.num_source_z, len(well.targets)
    stack = SpilledStack((num_z + num_targets, well.height, well.width), spill_dir, np.uint16)
    moments = []
    for z, entry in enumerate(well.inputs):
        plane, plane_moments = _normalized_raw_plane(_read_plane(entry, well, well.input_dtype, well.input_max_value),
                                                     well.input_max_value, normalization)
        moments.append(plane_moments)
        stack.write_plane(z, plane)
        del plane
    for index, (entry, dtype, maximum) in enumerate(zip(well.targets, well.target_dtypes, well.target_max_values)):
        stack.write_plane(num_z + index, _read_plane(entry, well, dtype, maximum))
    images.clear_plane_cache()
    warning = normalization_lib.check_statistics(None, f"well {well.name} ({well.directory})", normalization,
                                                 moments=moments)
    spilled = SpilledRawWell(
        source=well,
        inputs=stack.planes(0, num_z),
        input_max_value=well.input_max_value if normalization == normalization_lib.NONE else 65535,
        targets=stack.planes(num_z, num_targets),
        target_max_values=tuple(well.target_max_values),
    )
    return spilled, warning


class SpilledStack:
    """A `[planes, height, width]` stack (float32, or `dtype`) kept in an unlinked temporary file, read by windows.

    A well's decoded pixels are written plane by plane into a file that is
    unlinked at once (nothing is left behind, whatever happens), and each
    read maps the file only for its copy (`mmap`, unmapped after): the
    process holds one window, never the well. The page cache may keep the
    file, but that memory is the kernel's to reclaim, not the process's.

    Indexing takes, per axis, an int, a slice or an index array in the form
    `np.ix_` gives (one axis each); the result is what numpy gives for the
    same key on the whole array. `planes(first, count)` is a view of some
    planes (a well's z-stack) sharing the file.
    """

    ndim = 3

    def __init__(self, shape: tuple[int, int, int], directory: str | None = None, dtype: Any = np.float32) -> None:
        self.shape = tuple(int(size) for size in shape)
        self.dtype = np.dtype(dtype)
        self.directory = directory or tempfile.gettempdir()
        try:
            handle, path = tempfile.mkstemp(prefix="isl-well-", suffix=".f32", dir=self.directory)
        except OSError as error:
            raise errors.InputError(f"{self.directory}: cannot hold the decoded well there ({error.strerror}); "
                                    "point TMPDIR at a writable folder.") from None
        os.unlink(path)
        self._file = _SpillFile(handle, self.shape, self.dtype)
        self._offsets = (0, 0, 0)  # Of this stack's (plane, row, column) 0 in the file: views share the file.

    @property
    def nbytes(self) -> int:
        """The stack's size (on disk, not in memory: see `held_bytes`)."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def planes(self, first: int, count: int) -> SpilledStack:
        """Planes `first .. first + count - 1` as a stack sharing this file."""
        return self._view((first, 0, 0), (count,) + self.shape[1:])

    def window(self, top: int, bottom: int, left: int, right: int) -> SpilledStack:
        """Rows `top:bottom` and columns `left:right` of every plane, as a stack sharing this file (no read)."""
        if not (0 <= top <= bottom <= self.shape[1] and 0 <= left <= right <= self.shape[2]):
            raise IndexError(f"window {top}:{bottom}, {left}:{right} outside a stack of {self.shape}")
        return self._view((0, top, left), (self.shape[0], bottom - top, right - left))

    def _view(self, offsets: tuple[int, int, int], shape: tuple[int, ...]) -> SpilledStack:
        view = object.__new__(SpilledStack)
        view.shape = tuple(int(size) for size in shape)
        view.dtype, view.directory, view._file = self.dtype, self.directory, self._file
        view._offsets = tuple(mine + theirs for mine, theirs in zip(self._offsets, offsets))
        return view

    def plane(self, index: int) -> SpilledPlane:
        """Plane `index` as a 2-D array-like."""
        return SpilledPlane(self, index)

    def write_plane(self, index: int, plane: np.ndarray) -> None:
        """Stores plane `index` `[height, width]` (as the stack's dtype)."""
        data = np.ascontiguousarray(plane, self.dtype)
        if data.shape != self.shape[1:]:
            raise ValueError(f"plane of shape {data.shape} for a stack of {self.shape}")
        if self._offsets[1:] != (0, 0) or self.shape[1:] != self._file.shape[1:]:
            raise ValueError("planes are written through the whole stack, not a window of it")
        offset = (self._offsets[0] + index) * data.nbytes
        view = memoryview(data).cast("B")
        try:
            while view:
                written = os.pwrite(self._file.handle, view, offset)
                view, offset = view[written:], offset + written
        except OSError as error:
            reason = "the disk is full" if error.errno == errno.ENOSPC else error.strerror
            raise errors.InputError(f"{self.directory}: cannot hold the decoded well there ({reason}); free space "
                                    "or point TMPDIR at another folder.") from None

    @staticmethod
    def _axis(key: Any, size: int) -> tuple[np.ndarray, bool]:
        """(the indices an axis key takes, whether the axis stays)."""
        if isinstance(key, (int, np.integer)):
            index = int(key) + size if key < 0 else int(key)
            if not 0 <= index < size:
                raise IndexError(f"index {key} out of range for size {size}")
            return np.array([index]), False
        if isinstance(key, slice):
            return np.arange(size)[key], True
        indices = np.asarray(key)
        if indices.dtype == bool or indices.ndim == 0 or sum(length > 1 for length in indices.shape) > 1:
            raise TypeError("SpilledStack takes ints, slices or np.ix_-style index arrays")
        indices = indices.reshape(-1).astype(np.int64)
        indices = np.where(indices < 0, indices + size, indices)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise IndexError(f"index out of range for size {size}")
        return indices, True

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3:
            raise IndexError("too many indices for a 3-D stack")
        key = key + (slice(None),) * (3 - len(key))
        axes = [self._axis(item, size) for item, size in zip(key, self.shape)]
        (planes, _), (rows, _), (columns, _) = axes
        result = np.empty((len(planes), len(rows), len(columns)), self.dtype)
        if result.size:
            plane0, row0, column0 = self._offsets
            self._file.read(planes + plane0, rows + row0, columns + column0, result)
        return result.reshape([len(indices) for indices, keep in axes if keep])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole stack in memory (for callers that need it whole)."""
        array = self[:, :, :]
        return array if dtype is None else array.astype(dtype)


class _SpillFile:
    """The open, unlinked file of a `SpilledStack` `[planes, height, width]`; closed when dropped."""

    def __init__(self, handle: int, shape: tuple[int, int, int], dtype: Any = np.float32) -> None:
        self.handle, self.shape, self.dtype = handle, shape, np.dtype(dtype)

    def read(self, planes: np.ndarray, rows: np.ndarray, columns: np.ndarray, out: np.ndarray) -> None:
        """Copies `[planes][rows][columns]` (index arrays) into `out`, mapping the file only meanwhile."""
        first, last = int(rows.min()), int(rows.max()) + 1
        left, right = int(columns.min()), int(columns.max()) + 1
        mapped = mmap.mmap(self.handle, int(np.prod(self.shape)) * self.dtype.itemsize, prot=mmap.PROT_READ)
        try:
            whole = np.frombuffer(mapped, self.dtype).reshape(self.shape)
            for position, plane in enumerate(planes):
                out[position] = whole[plane, first:last, left:right][np.ix_(rows - first, columns - left)]
            del whole
        finally:
            mapped.close()

    def __del__(self) -> None:
        if self.handle >= 0:
            os.close(self.handle)
            self.handle = -1


class SpilledPlane:
    """One plane of a `SpilledStack`, `[height, width]`, read by windows."""

    ndim = 2

    def __init__(self, stack: SpilledStack, index: int) -> None:
        self.stack, self.index = stack, index
        self.shape = stack.shape[1:]
        self.dtype = stack.dtype

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return self.stack[(self.index,) + key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self[:, :]
        return array if dtype is None else array.astype(dtype)


def window(stack: Any, top: int, bottom: int, left: int, right: int) -> Any:
    """`stack[:, top:bottom, left:right]`: a slice of an array, a view (nothing read) of a `SpilledStack`."""
    if isinstance(stack, SpilledStack):
        return stack.window(top, bottom, left, right)
    return stack[:, top:bottom, left:right]


def held_bytes(well: Well) -> int:
    """The bytes of a well's pixels held in memory (0 for a lazily read well's spilled planes)."""
    arrays = [well.inputs, *well.targets.values()]
    return int(sum(array.nbytes for array in arrays if isinstance(array, np.ndarray)))


def _lazy_well(source: WellSource, normalization: str, spill_dir: str | None) -> tuple[Any, dict[str, Any], str | None]:
    """Decodes a well plane by plane into a `SpilledStack`: (inputs, targets, the statistics warning or None).

    Each plane is read, divided by its maximum and normalised as `read_well`
    does for the whole stack (the same float32 values), stored, and dropped;
    the stack's per-slice moments are kept for the warning. Peak: one decoded
    plane and its float32 copy.
    """
    num_z, num_targets = source.num_source_z, len(source.targets)
    stack = SpilledStack((num_z + num_targets, source.height, source.width), spill_dir)
    moments = []
    for z, entry in enumerate(source.inputs):
        raw = _read_plane(entry, source, source.input_dtype, source.input_max_value)
        plane = np.divide(raw, np.float32(source.input_max_value), dtype=np.float32)
        del raw
        plane = normalization_lib.normalize_plane(plane, normalization)
        moments.append(normalization_lib.plane_moments(plane))
        stack.write_plane(z, plane)
    targets = {}
    for index, (entry, dtype, maximum) in enumerate(zip(source.targets, source.target_dtypes,
                                                        source.target_max_values)):
        raw = _read_plane(entry, source, dtype, maximum)
        stack.write_plane(num_z + index, raw.astype(np.float32) / np.float32(maximum))
        targets[entry.channel] = stack.plane(num_z + index)
    images.clear_plane_cache()
    warning = normalization_lib.check_statistics(None, f"well {source.name} ({source.directory})", normalization,
                                                 moments=moments)
    return stack.planes(0, num_z), targets, warning


def read_well(
    directory: str,
    channels: config_lib.ChannelConfig,
    ignore_unknown: bool = False,
    normalization: str = "none",
    channel_map: dict[str, str] | None = None,
    lazy: bool = False,
    spill_dir: str | None = None,
) -> Well:
    """Reads the one well in `directory` as float32 in [0, 1].

    Args:
        directory: a folder holding exactly one well (either layout).
        channels: the vocabulary.
        ignore_unknown: skip files of channels outside the vocabulary; they
            are listed in `metadata["ignored_files"]`.
        normalization: applied to the z-stack (`isl.data.normalization`);
            prediction passes the model's `data.normalization`. A stack far
            from the paper's statistics adds a line to `metadata["warnings"]`
            and to the `isl.data` logger.
        channel_map: renames files' channels first (`isl.data.channel_map`).
        lazy: decode the well plane by plane into an unlinked temporary file
            in `spill_dir` (default: the system's, `TMPDIR`) and return
            `SpilledStack` / `SpilledPlane` array-likes read by windows (the
            same float32 values; memory: one plane while reading, then one
            window per read). The `percentile` normalisation scales by the
            whole stack, so it is always read into memory.

    Returns:
        A `Well`: `inputs` `[num_source_z, H, W]`, `targets` channel -> `[H, W]`.

    Raises:
        InputError: for bad input, or when the folder holds several wells.
    """
    scan = scan_wells([directory], channels, ignore_unknown=ignore_unknown, channel_map=channel_map)
    if len(scan.wells) != 1:
        raise errors.InputError(
            f"{directory}: holds {len(scan.wells)} wells "
            f"({', '.join(well.name for well in scan.wells[:_MAX_LISTED])}); "
            "pass the folder of one well."
        )
    source = scan.wells[0]
    if lazy and normalization != normalization_lib.PERCENTILE:
        inputs, targets, warning = _lazy_well(source, normalization, spill_dir)
        if warning:
            logger.warning("warning: %s", warning)
        return Well(name=source.name, inputs=inputs, targets=targets,
                    metadata=_well_metadata(source, scan, normalization, channel_map, warning, ignore_unknown))
    raw = load_raw_well(source)
    # Plane by plane into one preallocated [Z, H, W] stack: the same float32 values as dividing the whole
    # moved-axis array, without its float32 temporaries (two extra stacks at 4096^2 x 13).
    inputs = np.empty((raw.inputs.shape[-1],) + raw.inputs.shape[:2], np.float32)
    for z in range(inputs.shape[0]):
        np.divide(raw.inputs[:, :, z], np.float32(raw.input_max_value), out=inputs[z], dtype=np.float32)
    inputs = normalization_lib.normalize_stack(inputs, normalization)
    warning = normalization_lib.check_statistics(inputs, f"well {source.name} ({source.directory})", normalization)
    if warning:
        logger.warning("warning: %s", warning)
    targets = {
        channel: raw.targets[:, :, index].astype(np.float32) / np.float32(raw.target_max_values[index])
        for index, channel in enumerate(source.target_channels)
    }
    metadata = _well_metadata(source, scan, normalization, channel_map, warning, ignore_unknown)
    return Well(name=source.name, inputs=np.ascontiguousarray(inputs), targets=targets, metadata=metadata)


def _well_metadata(source: WellSource, scan: ScanResult, normalization: str, channel_map: dict[str, str] | None,
                   warning: str | None, ignore_unknown: bool) -> dict[str, Any]:
    """`Well.metadata` of a read well."""
    metadata: dict[str, Any] = dict(source.metadata)
    metadata.update(modality=source.modality, source_files=source.source_files, directory=source.directory,
                    normalization=normalization, warnings=[warning] if warning else [],
                    channel_map=dict(channel_map or {}))
    if ignore_unknown:
        metadata["ignored_files"] = [
            path for path, reason in scan.skipped if reason.endswith("not a channel of the model")]
    return metadata


def check_z(well: Any, config: config_lib.ExperimentConfig) -> None:
    """Rejects a stack with more source slices than the model has z values.

    The nearest-slice z mapping (§3.3) accepts 1..num_z_values source slices
    (13 or 26 for the paper model); more would silently drop slices.

    Raises:
        InputError: naming the well's folder and both counts.
    """
    num_source_z = well.inputs.shape[0]
    num_z_values = config.channels.num_z_values
    if num_source_z > num_z_values:
        raise errors.InputError(
            f"{well.metadata.get('directory', well.name)}: the well has {num_source_z} z slices, but the model takes "
            f"{num_z_values} z values (1 to {num_z_values} slices, e.g. 13 or 26); it would ignore some slices."
        )


def read_checked_well(config: config_lib.ExperimentConfig, input_dir: str, lazy: bool = False) -> Any:
    """Reads a well with the model's channels, channel map and normalisation; rejects too many z slices (`check_z`).

    `lazy`: planes in a temporary file, read by windows (`read_well`).
    """
    mapping = channel_map_lib.check(config.data.channel_map, config.channels)
    well = read_well(input_dir, config.channels, ignore_unknown=True, normalization=config.data.normalization,
                     channel_map=mapping, lazy=lazy)
    check_z(well, config)
    return well
