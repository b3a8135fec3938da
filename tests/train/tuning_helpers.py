"""A tiny converted dataset for search tests: 3 lab-named wells, 1 held out for eval."""

from __future__ import annotations

import os

import numpy as np

from isl import presets
from isl.data import convert
from isl.io import filenames
from isl.io import images

SIZE = 100
NUM_Z = 13
TARGETS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL")


def write_wells(directory: str, num_wells: int = 3, seed: int = 0) -> str:
    """Writes `num_wells` wells of 13 phase-contrast slices and 3 targets (16-bit PNG)."""
    rng = np.random.default_rng(seed)
    for index in range(num_wells):
        well_dir = os.path.join(directory, f"well_{index}")
        os.makedirs(well_dir, exist_ok=True)
        key = filenames.ImageKey(lab="TEST", condition="TUNE", well=f"A{index + 1}", tile_computation="STITCHED")
        base = rng.random((SIZE, SIZE))
        for z in range(NUM_Z):
            plane = np.clip(base + 0.05 * rng.standard_normal((SIZE, SIZE)), 0, 1)
            name = filenames.format_name(filenames.ImageKey(**{**key.__dict__, "z": z, "channel": "PHASE_CONTRAST"}))
            images.write_image(os.path.join(well_dir, name), (plane * 65535).astype(np.uint16))
        for channel_index, channel in enumerate(TARGETS):
            target = np.clip(base ** (channel_index + 1), 0, 1)
            name = filenames.format_name(filenames.ImageKey(**{**key.__dict__, "channel": channel}))
            images.write_image(os.path.join(well_dir, name), (target * 65535).astype(np.uint16))
    return directory


def tiny_tfrecords(root: str) -> str:
    """Converts three synthetic wells (two train, one eval) into `root/tfrecords`."""
    wells = write_wells(os.path.join(root, "wells"))
    output = os.path.join(root, "tfrecords")
    convert.convert([wells], output, presets.get_preset("tiny").channels, num_shards=1, eval_every=3)
    return output
