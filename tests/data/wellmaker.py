"""Test helper: writes small wells in the lab's file naming from given arrays."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from isl.io import filenames
from isl.io import images

BASE_KEY = filenames.ImageKey(
    lab="TESTLAB", condition="COND_1", well="B2", date="2020-02-03", minute="0", tile_computation="STITCHED"
)


def file_name(z, channel: str, well: str = "B2", nested: bool = False, extension: str = ".png") -> str:
    key = dataclasses.replace(BASE_KEY, z=z, channel=channel, well=well)
    return filenames.format_name(key, nested=nested, extension=extension)


def write_well(
    directory: str,
    stack: np.ndarray,
    targets: dict[str, np.ndarray],
    modality: str = "PHASE_CONTRAST",
    well: str = "B2",
) -> str:
    """Writes `stack` `[Z, H, W]` (uint8/uint16) and `targets` channel -> `[H, W]` as PNGs."""
    os.makedirs(directory, exist_ok=True)
    for z, plane in enumerate(stack):
        images.write_image(os.path.join(directory, file_name(z, modality, well)), plane)
    for channel, image in targets.items():
        images.write_image(os.path.join(directory, file_name(filenames.MAXPROJECT, channel, well)), image)
    return directory


def random_well(directory: str, num_z: int = 13, height: int = 40, width: int = 48, seed: int = 0,
                **kwargs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A well of random 16-bit noise with DAPI and MAP2 targets; returns the arrays written."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(0, 65536, (num_z, height, width), dtype=np.uint16)
    targets = {
        "DAPI_CONFOCAL": rng.integers(0, 65536, (height, width), dtype=np.uint16),
        "MAP2_CONFOCAL": rng.integers(0, 65536, (height, width), dtype=np.uint16),
    }
    write_well(directory, stack, targets, **kwargs)
    return stack, targets
