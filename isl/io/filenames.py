"""The lab's comma-separated key-value file names, in both published forms.

This module is the only place that knows the grammar (isl_reference.md §3.1).
A name is a comma-separated list of tokens; a token is `key-value` or a bare
marker. Two forms exist:

* the released sample form (`isl/testdata/condition_blue_sample`)::

    lab-FINKBEINER,condition-KEVAN_0_8,acquisition_date,year-2015,month-10,
    day-5,minute-0,well-A4,tile_computation-STITCHED,z_depth-7,
    channel-PHASE_CONTRAST,is_mask-false.png

* the nested form of the full paper data (data.md), where some keys are a bare
  token followed by a `value-X` token::

    lab-Finkbeiner,condition-kevan_0_8,acquisition_date,year-2015,month-9,
    day-28,well-A4,depth_computation,value-MAXPROJECT,channel,
    value-DAPI_CONFOCAL,is_mask-false,kind,value-ORIGINAL.png

Transmitted-light slices carry `z_depth-N`; fluorescence targets carry
`depth_computation-MAXPROJECT` (z = "MAXPROJECT"). Files whose kind is
PREDICTED are model outputs and never inputs.
"""

from __future__ import annotations

import dataclasses
import os
import re

from isl import errors

MAXPROJECT = "MAXPROJECT"
KIND_ORIGINAL = "ORIGINAL"
KIND_PREDICTED = "PREDICTED"

_INTEGER = re.compile(r"^\d+$")
_NAME_VALUE = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclasses.dataclass(frozen=True)
class ImageKey:
    """What a lab file name says about its image.

    Attributes:
        lab: e.g. "FINKBEINER" (as written; case is kept).
        condition: e.g. "KEVAN_0_8".
        well: e.g. "A4".
        date: "YYYY-MM-DD" from the acquisition_date tokens, "" when absent.
        minute: the acquisition minute as written, "" when absent.
        z: integer slice index for transmitted light, or "MAXPROJECT".
        channel: e.g. "PHASE_CONTRAST", "DAPI_CONFOCAL".
        kind: "ORIGINAL", "PREDICTED", or "" when the name has no kind.
        statistic: e.g. "MEDIAN" for predicted images, "" when absent.
        is_mask: the `is_mask` token (always false in the published data).
        tile_computation: e.g. "STITCHED", "" when absent.
        nested: True when the name used the nested `key,value-X` form.
    """

    lab: str = ""
    condition: str = ""
    well: str = ""
    date: str = ""
    minute: str = ""
    z: int | str = MAXPROJECT
    channel: str = ""
    kind: str = ""
    statistic: str = ""
    is_mask: bool = False
    tile_computation: str = ""
    nested: bool = False

    @property
    def is_target(self) -> bool:
        """True for fluorescence (MAXPROJECT) images."""
        return self.z == MAXPROJECT

    @property
    def is_predicted(self) -> bool:
        return self.kind.upper() == KIND_PREDICTED

    @property
    def well_identity(self) -> tuple[str, str, str, str, str]:
        """The fields that identify one well (one field of view)."""
        return (self.lab, self.condition, self.date, self.minute, self.well)


def _strip_extension(name: str) -> str:
    base = os.path.basename(name)
    lowered = base.lower()
    for extension in (".png", ".tiff", ".tif"):
        if lowered.endswith(extension):
            return base[: -len(extension)]
    return os.path.splitext(base)[0]


def _tokens(name: str) -> tuple[dict[str, str], list[str], bool]:
    """Splits a name into key -> value, bare markers, and the nested flag."""
    values: dict[str, str] = {}
    markers: list[str] = []
    nested = False
    parts = [part for part in _strip_extension(name).split(",") if part]
    index = 0
    while index < len(parts):
        part = parts[index]
        if "-" in part:
            key, value = part.split("-", 1)
            values.setdefault(key, value)
            index += 1
            continue
        following = parts[index + 1] if index + 1 < len(parts) else ""
        if following.startswith("value-"):
            values.setdefault(part, following[len("value-"):])
            nested = True
            index += 2
            continue
        markers.append(part)
        index += 1
    return values, markers, nested


def looks_like_lab_name(name: str) -> bool:
    """True when a file name uses the lab grammar (has a channel token)."""
    values, _, _ = _tokens(name)
    return "channel" in values


def parse(name: str) -> ImageKey:
    """Parses a lab file name (either published form).

    Only the base name is read, unlike the released code, which matched the
    whole path (§3.1).

    Args:
        name: a file name or path.

    Returns:
        The `ImageKey`.

    Raises:
        InputError: naming the file when it has no channel, no z
            (`z_depth-N` or `depth_computation-MAXPROJECT`), or a malformed one.
    """
    base = os.path.basename(name)
    values, _, nested = _tokens(base)
    channel = values.get("channel", "")
    if not channel:
        raise errors.InputError(
            f"{name}: the file name has no 'channel-NAME' (or 'channel,value-NAME') token, "
            "so it is not in the lab's naming."
        )
    if not _NAME_VALUE.match(channel):
        raise errors.InputError(f"{name}: malformed channel {channel!r} in the file name.")
    depth_computation = values.get("depth_computation", "")
    z_text = values.get("z_depth", "")
    z: int | str
    if depth_computation:
        if depth_computation.upper() != MAXPROJECT:
            raise errors.InputError(
                f"{name}: depth_computation is {depth_computation!r}; only MAXPROJECT targets are read."
            )
        z = MAXPROJECT
    elif z_text:
        if not _INTEGER.match(z_text):
            raise errors.InputError(f"{name}: z_depth must be a non-negative integer. Received: {z_text!r}")
        z = int(z_text)
    else:
        raise errors.InputError(
            f"{name}: the file name has neither 'z_depth-N' (transmitted light) nor "
            "'depth_computation-MAXPROJECT' (fluorescence target)."
        )
    date = ""
    if "year" in values:
        try:
            date = f"{int(values['year']):04d}-{int(values.get('month', '1')):02d}-{int(values.get('day', '1')):02d}"
        except ValueError:
            date = f"{values.get('year')}-{values.get('month', '')}-{values.get('day', '')}"
    return ImageKey(
        lab=values.get("lab", ""),
        condition=values.get("condition", ""),
        well=values.get("well", ""),
        date=date,
        minute=values.get("minute", ""),
        z=z,
        channel=channel,
        kind=values.get("kind", ""),
        statistic=values.get("statistic", ""),
        is_mask=values.get("is_mask", "false").lower() == "true",
        tile_computation=values.get("tile_computation", ""),
        nested=nested,
    )


def format_name(key: ImageKey, nested: bool | None = None, extension: str = ".png") -> str:
    """Writes the lab file name for `key` (inverse of `parse`).

    Args:
        key: the image key. Its `date` must be "" or "YYYY-MM-DD".
        nested: the nested form of the paper data; None uses `key.nested`.
        extension: the file extension, with its dot.
    """
    nested = key.nested if nested is None else nested
    tokens = []
    if key.lab:
        tokens.append(f"lab-{key.lab}")
    if key.condition:
        tokens.append(f"condition-{key.condition}")
    if key.date:
        year, month, day = key.date.split("-")
        tokens += ["acquisition_date", f"year-{int(year)}", f"month-{int(month)}", f"day-{int(day)}"]
        if key.minute != "":
            tokens.append(f"minute-{key.minute}")
    if key.well:
        tokens.append(f"well-{key.well}")
    if key.tile_computation:
        tokens.append(f"tile_computation-{key.tile_computation}")
    if key.z == MAXPROJECT:
        tokens += ["depth_computation", f"value-{MAXPROJECT}"] if nested else [f"depth_computation-{MAXPROJECT}"]
    else:
        tokens.append(f"z_depth-{int(key.z)}")
    tokens += ["channel", f"value-{key.channel}"] if nested else [f"channel-{key.channel}"]
    if key.statistic:
        tokens += ["statistic", f"value-{key.statistic}"] if nested else [f"statistic-{key.statistic}"]
    tokens.append(f"is_mask-{'true' if key.is_mask else 'false'}")
    if key.kind:
        tokens += ["kind", f"value-{key.kind}"] if nested else [f"kind-{key.kind}"]
    return ",".join(tokens) + extension
