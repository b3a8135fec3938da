"""The generic layout for users' own microscopes: a folder per field of view.

A field-of-view folder holds its images and a small manifest that says which
file is which. Either `manifest.csv`::

    file,channel,z
    bf_stack.tif,BRIGHTFIELD,          # multi-page TIFF: page i is z slice i
    dapi.png,DAPI_CONFOCAL,MAXPROJECT   # a fluorescence target

or single-plane files, one row per z slice (`z` = 0, 1, ...). Or
`manifest.json`, which can also carry metadata::

    {"name": "plate1_B3", "lab": "MYLAB", "condition": "GFAP_DAY7",
     "well": "B3", "date": "2024-05-01",
     "images": [{"file": "bf_stack.tif", "channel": "BRIGHTFIELD"},
                {"file": "gfap.tif", "channel": "GFAP_CONFOCAL", "z": "MAXPROJECT"}]}

For a transmitted-light channel an empty `z` (or "stack") means "every page
of this file, in order"; for a fluorescence channel it means MAXPROJECT (a
file with several z planes is max-projected here). Channel names must be in
the configured vocabulary (`ChannelConfig`), or `SKIP` for a channel of a
file that is not used.

Optional columns (keys in JSON):

* `c`: which channel of a multi-channel file (OME-TIFF, ImageJ hyperstack,
  CZI, ...) the row maps: an index from 0 or the channel's name in the
  file's metadata. Every channel of a file must be mapped (or `SKIP`ped).
* `bits`: the significant bits of the values (e.g. 12 or 14 for a camera
  that stores them in 16-bit files); values are divided by `2**bits - 1`.
  Default: what the file declares (OME SignificantBits), else its type
  (8 or 16).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

from isl import config as config_lib
from isl import errors
from isl.io import filenames
from isl.io import images

MANIFEST_CSV = "manifest.csv"
MANIFEST_JSON = "manifest.json"
MANIFEST_NAMES = (MANIFEST_CSV, MANIFEST_JSON)
SKIP = "SKIP"
_STACK_WORDS = ("", "stack", "all")


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One 2-D plane of a well.

    Attributes:
        path: the image file.
        channel: transmitted-light modality or fluorescence channel name.
        z: integer source slice, or "MAXPROJECT" for a target.
        page: the z plane of the file holding the plane (0 for PNG).
        channel_index: the file's channel (C axis) holding it.
        bits: significant bits declared by the manifest, or None.
        project: a target read as the maximum over all the file's z planes.
    """

    path: str
    channel: str
    z: int | str
    page: int = 0
    channel_index: int = 0
    bits: int | None = None
    project: bool = False


def find_manifest(directory: str) -> str | None:
    """The manifest file of a folder, or None."""
    found = [name for name in MANIFEST_NAMES if os.path.isfile(os.path.join(directory, name))]
    if len(found) > 1:
        raise errors.InputError(
            f"{directory}: has both {MANIFEST_CSV} and {MANIFEST_JSON}; keep one."
        )
    return os.path.join(directory, found[0]) if found else None


def _rows_from_csv(path: str) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        raise errors.InputError(f"{path}: cannot read the manifest ({error}).") from None
    reader = csv.DictReader(lines)
    fields = [field.strip().lower() for field in (reader.fieldnames or [])]
    if "file" not in fields or "channel" not in fields:
        raise errors.InputError(
            f"{path}: the manifest needs a header with columns file,channel[,z]. Received: {reader.fieldnames}"
        )
    rows = []
    for row in reader:
        clean = {
            (key or "").strip().lower(): (value or "").split("#", 1)[0].strip()
            for key, value in row.items()
            if key is not None
        }
        rows.append(clean)
    return rows


def _rows_from_json(path: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise errors.InputError(f"{path}: not a valid JSON manifest ({error}).") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise errors.InputError(f'{path}: a JSON manifest must be an object with an "images" list.')
    metadata = {
        key: str(document[key])
        for key in ("name", "lab", "condition", "well", "date")
        if document.get(key) not in (None, "")
    }
    rows = []
    for index, item in enumerate(document["images"]):
        if not isinstance(item, dict) or "file" not in item or "channel" not in item:
            raise errors.InputError(f'{path}: images[{index}] needs "file" and "channel".')
        rows.append({key: "" if value is None else str(value) for key, value in item.items()})
    return metadata, rows


def read_manifest(
    manifest_path: str, channels: config_lib.ChannelConfig, channel_map: dict[str, str] | None = None
) -> tuple[dict[str, str], list[ImageEntry]]:
    """Reads a field-of-view manifest into metadata and one entry per plane.

    Args:
        manifest_path: `manifest.csv` or `manifest.json`.
        channels: the vocabulary; it decides whether an empty `z` means a
            z-stack (transmitted light: any known modality, also one the
            vocabulary lacks) or MAXPROJECT (fluorescence).
        channel_map: `isl.data.channel_map` renaming, used here only to tell
            transmitted light from stains (entries keep the file's name).

    Returns:
        (metadata, entries). Metadata has "name" (the folder name unless the
        JSON gives one) and any of lab, condition, well, date.

    Raises:
        InputError: naming the manifest and row for a missing file, a bad z,
            or a multi-page file used as a single plane.
    """
    directory = os.path.dirname(os.path.abspath(manifest_path))
    if manifest_path.lower().endswith(".json"):
        metadata, rows = _rows_from_json(manifest_path)
    else:
        metadata, rows = {}, _rows_from_csv(manifest_path)
    metadata.setdefault("name", os.path.basename(directory))
    if not rows:
        raise errors.InputError(f"{manifest_path}: the manifest lists no images.")
    entries: list[ImageEntry] = []
    mapped: dict[str, dict[int, str]] = {}
    for number, row in enumerate(rows, start=1):
        where = f"{manifest_path} row {number}"
        file_name = row.get("file", "")
        channel = row.get("channel", "").strip()
        z_text = row.get("z", "").strip()
        if not file_name or not channel:
            raise errors.InputError(f"{where}: needs a file and a channel.")
        path = os.path.join(directory, file_name)
        if not os.path.exists(path):
            raise errors.InputError(f"{where}: file {path} not found.")
        if not images.is_image_path(path):
            raise errors.InputError(
                f"{where}: {path} is not an image isl reads (PNG, TIFF, OME-TIFF; with the formats "
                "extra also OME-Zarr, CZI, LIF, ND2)."
            )
        info = images.read_info(path)
        channel_index = _channel_index(where, path, row.get("c", "").strip(), info)
        if channel_index in mapped.setdefault(path, {}):
            raise errors.InputError(
                f"{where}: channel {channel_index} of {path} is mapped twice "
                f"({mapped[path][channel_index]} and {channel})."
            )
        mapped[path][channel_index] = channel
        if channel.upper() == SKIP:
            continue
        bits = _bits(where, row.get("bits", "").strip(), info)
        is_input = channels.is_transmitted_light((channel_map or {}).get(channel, channel))
        common = dict(channel_index=channel_index, bits=bits)
        if z_text.lower() in _STACK_WORDS:
            if not is_input:
                entries.append(ImageEntry(path, channel, filenames.MAXPROJECT, project=info.num_pages > 1, **common))
                continue
            entries.extend(ImageEntry(path, channel, page, page, **common) for page in range(info.num_pages))
            continue
        if z_text.upper() == filenames.MAXPROJECT:
            z: int | str = filenames.MAXPROJECT
        else:
            try:
                z = int(z_text)
            except ValueError:
                raise errors.InputError(
                    f"{where}: z must be an integer slice, MAXPROJECT, or empty. Received: {z_text!r}"
                ) from None
            if z < 0:
                raise errors.InputError(f"{where}: z must be >= 0. Received: {z}")
        if info.num_pages > 1:
            raise errors.InputError(
                f"{where}: {path} has {info.num_pages} pages; leave z empty to use its pages as z slices."
            )
        entries.append(ImageEntry(path, channel, z, **common))
    for path, by_index in mapped.items():
        info = images.read_info(path)
        if len(by_index) < info.num_channels:
            names = f" ({', '.join(info.channel_names)})" if info.channel_names else ""
            raise errors.InputError(
                f"{path}: has {info.num_channels} channels{names} but {manifest_path} maps "
                f"{len(by_index)} (c = {', '.join(map(str, sorted(by_index)))}); add a row per channel with "
                f"column c (index or name), channel {SKIP} for one you do not use."
            )
    return metadata, entries


def _channel_index(where: str, path: str, text: str, info: images.ImageInfo) -> int:
    """The file channel a row maps: column c as an index or a name from the file's metadata."""
    if not text:
        if info.num_channels > 1:
            names = f" ({', '.join(info.channel_names)})" if info.channel_names else ""
            raise errors.InputError(
                f"{where}: {path} has {info.num_channels} channels{names}; say which one with column c "
                f"(index or name), one row per channel ({SKIP} for unused ones)."
            )
        return 0
    if text.isdigit():
        index = int(text)
    else:
        lowered = [name.lower() for name in info.channel_names]
        if text.lower() not in lowered:
            raise errors.InputError(
                f"{where}: {path} has no channel named {text!r}; its channels are "
                f"{', '.join(info.channel_names) or 'unnamed (use an index from 0)'}."
            )
        index = lowered.index(text.lower())
    if not 0 <= index < info.num_channels:
        raise errors.InputError(f"{where}: {path} has {info.num_channels} channel(s); c = {index} does not exist.")
    return index


def _bits(where: str, text: str, info: images.ImageInfo) -> int | None:
    """Column bits (significant bits of the values), checked against the file's type."""
    if not text:
        return None
    try:
        bits = int(text)
    except ValueError:
        raise errors.InputError(f"{where}: bits must be an integer (e.g. 12). Received: {text!r}") from None
    if not 1 <= bits <= info.bit_depth:
        raise errors.InputError(f"{where}: bits = {bits} but the file holds {info.bit_depth}-bit values.")
    return bits
