"""Image folders -> sharded TFRecords plus `dataset.json`, atomically.

Every well is checked (names, channels, z slices, headers) before any shard
is written. Shards are written into a temporary folder that replaces the
output folder only when everything succeeded, so a failure leaves nothing
partial behind. Wells are processed one at a time (peak memory: one uint16
copy of a well and its serialized Example).

Split: wells sorted by name; with `eval_every=N` every N-th well (positions
N-1, 2N-1, ...) is held out for evaluation, 1 in 8 as the paper held out 1/8
of its shards (§3.5); `eval_wells` names the held-out wells instead. Within a
split, well i goes to shard i mod num_shards.

Regions: with only one well (the released Condition B sample), a split by
region instead: `region` crops every training example to a rectangle and
`eval_region` writes each well a second time, cropped to another,
non-overlapping rectangle, as an evaluation example. The training shards then
never hold a pixel (input or label) of the evaluation rectangle.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from collections.abc import Callable, Iterator

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import channel_map as channel_map_lib
from isl.data import normalization as normalization_lib
from isl.data import schema
from isl.data import tfrecords
from isl.data import wells as wells_lib
from isl.io import atomic


@dataclasses.dataclass
class ConvertResult:
    """What `convert` wrote.

    Attributes:
        output_dir: the dataset folder.
        dataset_json: path of `dataset.json`.
        shards: split -> shard paths.
        num_examples: split -> examples written.
        skipped: (path, reason) of files not used.
        description: the content of dataset.json.
        warnings: lines for the user (e.g. transmitted light far from the
            paper's statistics), also in dataset.json.
    """

    output_dir: str
    dataset_json: str
    shards: dict[str, list[str]]
    num_examples: dict[str, int]
    skipped: list[tuple[str, str]]
    description: dict
    warnings: list[str] = dataclasses.field(default_factory=list)


Region = tuple[tuple[int, int], tuple[int, int]]
"""((row_start, row_end), (column_start, column_end)), image pixels, ends exclusive."""


def parse_region(spec: str, flag: str = "--region") -> Region:
    """Parses "r0:r1,c0:c1" (image pixels, ends exclusive; an empty end means the image edge).

    Raises:
        InputError: for a malformed or empty rectangle.
    """
    try:
        row_part, column_part = spec.split(",")
        parsed = []
        for part in (row_part, column_part):
            start_text, end_text = part.split(":")
            start = int(start_text) if start_text.strip() else 0
            end = int(end_text) if end_text.strip() else -1
            parsed.append((start, end))
    except ValueError:
        raise errors.InputError(
            f"Bad {flag} {spec!r}: use r0:r1,c0:c1 in image pixels, e.g. 0:736,0:768 (an empty end means the edge)."
        ) from None
    for start, end in parsed:
        if start < 0 or (end != -1 and end <= start):
            raise errors.InputError(f"Bad {flag} {spec!r}: each range needs 0 <= start < end.")
    return (parsed[0], parsed[1])


def _resolve_region(region: Region, height: int, width: int, flag: str, well: str) -> Region:
    """Replaces open ends by the image size and checks the rectangle lies inside the image."""
    resolved = []
    for (start, end), side, axis in ((region[0], height, "rows"), (region[1], width, "columns")):
        end = side if end == -1 else end
        if end > side or start >= side:
            raise errors.InputError(
                f"{well}: {flag} {axis} {start}:{end} fall outside the image ({height}x{width}); valid windows lie "
                f"within 0:{height},0:{width} (rows, columns; ends exclusive)."
            )
        resolved.append((start, end))
    return (resolved[0], resolved[1])


def well_window(well: wells_lib.Well, region: Region | None, flag: str = "--region") -> tuple[int, int, int, int]:
    """(row0, row1, column0, column1) of a parsed `region` in a read well (the whole well for None).

    Raises:
        InputError: naming the flag and the well's folder when the window falls outside the image.
    """
    height, width = well.inputs.shape[1:]
    if region is None:
        return 0, height, 0, width
    (row0, row1), (column0, column1) = _resolve_region(
        region, height, width, flag, well.metadata.get("directory", well.name))
    return row0, row1, column0, column1


def overlaps(first: Region, second: Region) -> bool:
    """Whether two rectangles ((row0, row1), (column0, column1)), ends exclusive, share a pixel."""
    return all(a_start < b_end and b_start < a_end for (a_start, a_end), (b_start, b_end) in zip(first, second))


def _region_text(region: Region) -> str:
    (row_start, row_end), (column_start, column_end) = region
    return f"{row_start}:{row_end},{column_start}:{column_end}"


def split_wells(
    names: list[str],
    eval_every: int = 8,
    eval_wells: list[str] | None = None,
    aliases: dict[str, set[str]] | None = None,
    val_wells: list[str] | None = None,
) -> dict[str, str]:
    """Assigns each well to "train", "eval" or "val".

    Args:
        names: well names, in the (sorted) order used for the split.
        eval_every: hold out every N-th well (positions N-1, 2N-1, ...);
            0 holds out none. Ignored when `eval_wells` is given.
        eval_wells: names of the wells to hold out (a well's name, its well
            id such as "A4", or its folder name).
        aliases: name -> other accepted names for `eval_wells` and `val_wells`.
        val_wells: wells held out for validation (model selection, never
            reported); they must not be evaluation wells.

    Returns:
        name -> split.

    Raises:
        InputError: for an unknown well, or a well both validation and evaluation.
    """
    if eval_every < 0:
        raise errors.InputError(f"--eval_every must be >= 0. Received: {eval_every}")
    aliases = aliases or {}
    validation = _named_wells(names, val_wells or [], aliases, "--val_wells")
    if eval_wells:
        evaluation = _named_wells(names, eval_wells, aliases, "--eval_wells")
    else:
        evaluation = {
            name for index, name in enumerate(names) if eval_every and index % eval_every == eval_every - 1
        }
    both = sorted(validation & evaluation)
    if both:
        source = "--eval_wells" if eval_wells else f"--eval_every={eval_every}"
        raise errors.InputError(
            f"--val_wells and {source} both hold out {', '.join(both)}: the validation split must not "
            "overlap the evaluation split."
        )
    return {
        name: "val" if name in validation else "eval" if name in evaluation else "train" for name in names
    }


def _named_wells(names: list[str], wanted_list: list[str], aliases: dict[str, set[str]], flag: str) -> set[str]:
    """The wells of `names` matched by `wanted_list` (names, well ids or folder names)."""
    wanted = set(wanted_list)
    matched: set[str] = set()
    hits = set()
    for name in names:
        hit = wanted & ({name} | aliases.get(name, set()))
        matched |= hit
        if hit:
            hits.add(name)
    unmatched = sorted(wanted - matched)
    if unmatched:
        raise errors.InputError(f"{flag} names unknown well(s) {', '.join(unmatched)}. Wells: {', '.join(names)}")
    return hits


def convert(
    input_dirs: list[str],
    output_dir: str,
    channels: config_lib.ChannelConfig,
    num_shards: int = 1,
    eval_every: int = 8,
    eval_wells: list[str] | None = None,
    num_eval_shards: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    region: str | None = None,
    eval_region: str | None = None,
    normalization: str = "none",
    channel_map: dict[str, str] | None = None,
    val_wells: list[str] | None = None,
    val_region: str | None = None,
    embed: Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray] | None = None,
    embed_info: dict | None = None,
) -> ConvertResult:
    """Converts image folders into `{train,eval,val}-xxxxx-of-yyyyy.tfrecord` and `dataset.json`.

    The data flow: check the arguments, plan (scan the wells, resolve the
    regions, split the wells, count the shards; nothing is written yet), then
    write the shards and `dataset.json` into a temporary folder that becomes
    `output_dir` only when everything succeeded.

    Args:
        input_dirs: folders of wells (lab naming or manifests), searched recursively.
        output_dir: the dataset folder to create.
        channels: the vocabulary; an unknown channel is an error.
        num_shards: training shards.
        eval_every: hold out every N-th well; 0 for none.
        eval_wells: hold out these wells instead.
        num_eval_shards: evaluation shards; default ceil(num_shards / 8).
        overwrite: replace an existing non-empty `output_dir`.
        progress: called as progress(done, total, well_name) after each well.
        region: "r0:r1,c0:c1": crop every training example to this rectangle.
        eval_region: "r0:r1,c0:c1": instead of holding out wells, write every
            well also as an evaluation example cropped to this rectangle
            (which must not overlap `region`); `eval_every` and `eval_wells`
            must then be unset.
        normalization: applied to every z-stack before it is stored
            (`isl.data.normalization`: none, paper, percentile); recorded
            in dataset.json.
        channel_map: renames files' channels before they are matched with
            `channels` (`isl.data.channel_map`); recorded in dataset.json.
        val_wells: hold out these wells for validation (the split
            `train.keep_best` selects on); with held-out wells only.
        val_region: "r0:r1,c0:c1": write every well also as a validation
            example cropped to this rectangle; with `eval_region` only, and
            overlapping neither it nor `region`.
        embed: the hybrid's frozen-core embedding (`isl convert --embed_with`):
            (`[Z, H, W]` float32 stack in [0, 1] as stored, window (r0, r1, c0, c1))
            -> `[r1 - r0, c1 - c0, E]` float16, equal to the whole image's on the
            window; stored in each record as `embedding/data`. None: none.
        embed_info: recorded in dataset.json under "embedding" with the
            training examples' per-feature mean and std added.

    Returns:
        A `ConvertResult`.

    Raises:
        InputError: for bad input (nothing is written then).
    """
    output_dir = _check_arguments(input_dirs, output_dir, num_shards, num_eval_shards, overwrite, normalization)
    plan = _plan(
        input_dirs, output_dir, channels, num_shards=num_shards, num_eval_shards=num_eval_shards,
        eval_every=eval_every, eval_wells=eval_wells, region=region, eval_region=eval_region,
        channel_map=channel_map, val_wells=val_wells, val_region=val_region,
    )
    return _write_dataset(plan, channels, input_dirs, normalization, progress, channel_map, embed, embed_info)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What `convert` will write, decided before any file is opened.

    Attributes:
        output_dir: the absolute dataset folder.
        by_split: split -> the wells written to it, in shard-assignment order.
        regions: well name -> split -> the rectangle it is cropped to (None: whole image).
        shard_counts: split -> number of shards (0: the split is empty).
        skipped: (path, reason) of files the scan did not use.
    """

    output_dir: str
    by_split: dict[str, list[wells_lib.WellSource]]
    regions: dict[str, dict[str, Region | None]]
    shard_counts: dict[str, int]
    skipped: list[tuple[str, str]]


def _check_arguments(
    input_dirs: list[str],
    output_dir: str,
    num_shards: int,
    num_eval_shards: int | None,
    overwrite: bool,
    normalization: str,
) -> str:
    """Checks the arguments that need no image; returns the absolute `output_dir`.

    Raises:
        InputError: for a bad count or normalisation, an occupied `output_dir`,
            or an input folder inside the output folder.
    """
    normalization_lib.check_name(normalization)
    if num_shards < 1:
        raise errors.InputError(f"--num_shards must be >= 1. Received: {num_shards}")
    if num_eval_shards is not None and num_eval_shards < 1:
        raise errors.InputError(f"--num_eval_shards must be >= 1. Received: {num_eval_shards}")
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise errors.InputError(f"{output_dir}: exists and is not a folder.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise errors.InputError(f"{output_dir}: exists and is not empty; pass --overwrite to replace it.")
    for input_dir in input_dirs:
        absolute = os.path.abspath(input_dir)
        if absolute == output_dir or absolute.startswith(output_dir + os.sep):
            raise errors.InputError(f"{input_dir}: the input folder lies inside the output folder {output_dir}.")
    return output_dir


def _plan(
    input_dirs: list[str],
    output_dir: str,
    channels: config_lib.ChannelConfig,
    num_shards: int,
    num_eval_shards: int | None,
    eval_every: int,
    eval_wells: list[str] | None,
    region: str | None,
    eval_region: str | None,
    channel_map: dict[str, str] | None = None,
    val_wells: list[str] | None = None,
    val_region: str | None = None,
) -> _Plan:
    """Scans the wells and decides every well's split, rectangle and shard count.

    Raises:
        InputError: for bad regions, an unknown held-out well, or no training well.
    """
    train_region = parse_region(region, "--region") if region else None
    held_out_region = parse_region(eval_region, "--eval_region") if eval_region else None
    if held_out_region is not None and eval_wells:
        raise errors.InputError("--eval_region and --eval_wells exclude each other: hold out a region or wells.")
    validation_region = parse_region(val_region, "--val_region") if val_region else None
    if validation_region is not None and held_out_region is None:
        raise errors.InputError(
            "--val_region needs --eval_region (a region split); with held-out wells use --val_wells."
        )
    if val_wells and held_out_region is not None:
        raise errors.InputError(
            "--val_wells and --eval_region exclude each other: with --eval_region use --val_region."
        )
    scan = wells_lib.scan_wells(list(input_dirs), channels, channel_map=channel_map)
    regions = {
        well.name: _well_regions(well, train_region, held_out_region, validation_region) for well in scan.wells
    }
    if held_out_region is not None:
        by_split = {"train": list(scan.wells), "eval": list(scan.wells),
                    "val": list(scan.wells) if validation_region is not None else []}
    else:
        by_split = _split_by_well(scan.wells, eval_every, eval_wells, val_wells)
    if not by_split["train"]:
        raise errors.InputError(
            f"Every well ({len(scan.wells)}) was held out for evaluation; none is left for training. "
            "Use a larger --eval_every or fewer --eval_wells."
        )
    shard_counts = {
        "train": num_shards,
        "eval": (num_eval_shards or max(1, math.ceil(num_shards / 8))) if by_split["eval"] else 0,
        "val": (num_eval_shards or max(1, math.ceil(num_shards / 8))) if by_split["val"] else 0,
    }
    return _Plan(output_dir, by_split, regions, shard_counts, scan.skipped)


def _well_regions(
    well: wells_lib.WellSource,
    train_region: Region | None,
    held_out_region: Region | None,
    validation_region: Region | None = None,
) -> dict[str, Region | None]:
    """The well's training, evaluation and validation rectangles, resolved against its size.

    Raises:
        InputError: when a rectangle leaves the image or two of them overlap.
    """
    train_rectangle = (
        _resolve_region(train_region, well.height, well.width, "--region", well.name) if train_region else None
    )
    eval_rectangle = (
        _resolve_region(held_out_region, well.height, well.width, "--eval_region", well.name)
        if held_out_region else None
    )
    if eval_rectangle is not None:
        full = ((0, well.height), (0, well.width))
        if overlaps(train_rectangle or full, eval_rectangle):
            raise errors.InputError(
                f"{well.name}: --eval_region {_region_text(eval_rectangle)} overlaps the training region "
                f"{_region_text(train_rectangle or full)}; pass a --region that leaves it out."
            )
    val_rectangle = (
        _resolve_region(validation_region, well.height, well.width, "--val_region", well.name)
        if validation_region else None
    )
    if val_rectangle is not None:
        full = ((0, well.height), (0, well.width))
        if eval_rectangle is not None and overlaps(eval_rectangle, val_rectangle):
            raise errors.InputError(
                f"{well.name}: --val_region {_region_text(val_rectangle)} overlaps --eval_region "
                f"{_region_text(eval_rectangle)}: the validation split must not overlap the evaluation split."
            )
        if overlaps(train_rectangle or full, val_rectangle):
            raise errors.InputError(
                f"{well.name}: --val_region {_region_text(val_rectangle)} overlaps the training region "
                f"{_region_text(train_rectangle or full)}; pass a --region that leaves it out."
            )
    return {"train": train_rectangle, "eval": eval_rectangle, "val": val_rectangle}


def _split_by_well(
    wells: list[wells_lib.WellSource], eval_every: int, eval_wells: list[str] | None,
    val_wells: list[str] | None = None,
) -> dict[str, list[wells_lib.WellSource]]:
    """Split -> wells, holding out every N-th well or the named ones (`split_wells`)."""
    names = [well.name for well in wells]
    aliases = {
        well.name: {well.metadata.get("well", ""), os.path.basename(os.path.abspath(well.directory))} - {""}
        for well in wells
    }
    assignment = split_wells(names, eval_every, eval_wells, aliases, val_wells)
    return {split: [well for well in wells if assignment[well.name] == split] for split in schema.SPLITS}


def _write_dataset(
    plan: _Plan,
    channels: config_lib.ChannelConfig,
    input_dirs: list[str],
    normalization: str,
    progress: Callable[[int, int, str], None] | None,
    channel_map: dict[str, str] | None = None,
    embed: Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray] | None = None,
    embed_info: dict | None = None,
) -> ConvertResult:
    """Writes the planned shards and `dataset.json`; `plan.output_dir` appears only on success.

    Wells are loaded one at a time and each record is streamed (`tfrecords.RecordFile`): the `none` and
    `paper` normalisations spill a well's planes to a temporary file and write its record by bands of rows
    (peak memory: one decoded plane or one band, whatever the well's size); `percentile` scales by the whole
    stack, so such a well is held whole (its uint16 pixels) while its record is written.
    """
    sums: list[np.ndarray] = []  # The training embedding's count, sum and sum of squares per feature (float64).

    shards: dict[str, list[str]] = {split: [] for split in schema.SPLITS}
    well_records: list[dict] = []
    warnings: list[str] = []
    total = sum(len(members) for members in plan.by_split.values())
    with atomic.output_directory(plan.output_dir, overwrite=True) as temporary:
        for split, file_name, members in _shard_assignments(plan):
            shards[split].append(os.path.join(plan.output_dir, file_name))
            with tfrecords.RecordFile(os.path.join(temporary, file_name)) as records:
                for well in members:
                    rectangle = plan.regions[well.name][split]
                    records.write_well(_well_pixels(well, rectangle, normalization, warnings, embed,
                                                    sums if split == "train" else None), rectangle)
                    well_records.append(_well_record(well, split, file_name, rectangle))
                    if progress:
                        progress(len(well_records), total, well.name)
        description = _describe(well_records, shards, plan.by_split, channels, plan.skipped, input_dirs)
        description["normalization"] = normalization
        description["channel_map"] = list(channel_map_lib.to_pairs(channel_map or {}))
        description["warnings"] = warnings
        if embed is not None:
            description["embedding"] = {**(embed_info or {}), **_embedding_statistics(sums)}
        atomic.write_text(os.path.join(temporary, schema.DATASET_JSON), json.dumps(description, indent=2) + "\n")
        _make_readable(temporary)
    return ConvertResult(
        output_dir=plan.output_dir,
        dataset_json=os.path.join(plan.output_dir, schema.DATASET_JSON),
        shards=shards,
        num_examples={split: len(plan.by_split[split]) for split in schema.SPLITS},
        skipped=plan.skipped,
        description=description,
        warnings=warnings,
    )


def _shard_assignments(plan: _Plan) -> Iterator[tuple[str, str, list[wells_lib.WellSource]]]:
    """(split, shard file name, its wells): well i of a split goes to shard i mod count."""
    for split in schema.SPLITS:
        count = plan.shard_counts[split]
        for shard_index in range(count):
            yield split, schema.shard_name(split, shard_index, count), plan.by_split[split][shard_index::count]


def _well_pixels(
    well: wells_lib.WellSource, rectangle: Region | None, normalization: str, warnings: list[str],
    embed: Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray] | None = None,
    sums: list[np.ndarray] | None = None,
) -> wells_lib.RawWell | wells_lib.SpilledRawWell:
    """One well loaded and normalised (spilled to a temporary file unless `percentile`); new warnings go to
    `warnings`.

    With `embed` (the hybrid's `--embed_with`), the well also carries the embedding of `rectangle` (computed from
    the normalised stack with its context, which is then held whole as float32: the frozen core needs it), and
    `sums` (training examples) accumulates its per-feature moments.
    """
    if normalization == normalization_lib.PERCENTILE:
        raw, warning = wells_lib.normalize_raw(wells_lib.load_raw_well(well), normalization)
    else:
        raw, warning = wells_lib.spill_raw_well(well, normalization)
    if warning and warning not in warnings:
        warnings.append(warning)
    if embed is None:
        return raw
    if isinstance(raw, wells_lib.SpilledRawWell):
        stack = np.asarray(raw.inputs).astype(np.float32)  # Spilled planes: [Z, H, W] already.
    else:
        stack = np.moveaxis(raw.inputs, -1, 0).astype(np.float32)
    stack /= float(raw.input_max_value)
    (row0, row1), (column0, column1) = rectangle or ((0, stack.shape[1]), (0, stack.shape[2]))
    embedding = np.asarray(embed(stack, (row0, row1, column0, column1)), np.float16)
    del stack
    if sums is not None:
        flat = embedding.reshape(-1, embedding.shape[-1]).astype(np.float64)
        moments = [np.full(flat.shape[1], float(len(flat))), flat.sum(axis=0), np.square(flat).sum(axis=0)]
        sums[:] = moments if not sums else [total + part for total, part in zip(sums, moments)]
    return dataclasses.replace(raw, embedding=embedding)


def _embedding_statistics(sums: list[np.ndarray]) -> dict:
    """{"mean": [E], "std": [E]} of the training examples' embedding (std floored at 1e-6); empty without any."""
    if not sums:
        return {}
    count, total, squares = sums
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return {"mean": [float(value) for value in mean], "std": [float(max(value, 1e-6)) for value in std]}


def _make_readable(directory: str) -> None:
    """Temporary folders and files are private (0700/0600); give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def _well_record(well: wells_lib.WellSource, split: str, shard: str, region: Region | None = None) -> dict:
    (row_start, row_end), (column_start, column_end) = region or ((0, well.height), (0, well.width))
    return {
        "name": well.name,
        "split": split,
        "shard": shard,
        **well.metadata,
        "directory": os.path.abspath(well.directory),
        "height": row_end - row_start,
        "width": column_end - column_start,
        "region": _region_text(((row_start, row_end), (column_start, column_end))),
        "source_height": well.height,
        "source_width": well.width,
        "input_modality": well.modality,
        "num_source_z": well.num_source_z,
        "input_bit_depth": 8 * well.input_dtype.itemsize,
        "input_source_max_value": int(well.input_max_value),
        "target_max_values": [int(value) for value in well.target_max_values],
        "target_channels": list(well.target_channels),
        "source_files": [os.path.abspath(path) for path in well.source_files],
    }


def _count(values: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def _describe(well_records, shards, by_split, channels, skipped, input_dirs) -> dict:
    present_targets = sorted({c for record in well_records for c in record["target_channels"]})
    return {
        "format_version": schema.FORMAT_VERSION,
        "created_by": "isl convert",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input_dirs": [os.path.abspath(path) for path in input_dirs],
        "pixel_encoding": schema.PIXEL_ENCODING,
        "vocabulary": dataclasses.asdict(channels),
        "channels": {
            "input_modalities": sorted({record["input_modality"] for record in well_records}),
            "target_channels": [c for c in channels.target_channels if c in present_targets],
        },
        "z_counts": _count([record["num_source_z"] for record in well_records]),
        "max_source_z": max(record["num_source_z"] for record in well_records),
        "image_sizes": _count([f"{record['height']}x{record['width']}" for record in well_records]),
        "min_image_size": [
            min(record["height"] for record in well_records),
            min(record["width"] for record in well_records),
        ],
        "splits": {
            split: {
                "num_examples": len(by_split[split]),
                "shards": [os.path.basename(path) for path in shards[split]],
            }
            for split in schema.SPLITS
        },
        "wells": well_records,
        "skipped_files": [{"path": os.path.abspath(path), "reason": reason} for path, reason in skipped],
    }
