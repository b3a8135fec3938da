"""Small data and a small real network for search tests.

`tiny_tfrecords` converts three synthetic wells (two train, one eval);
`small_config` is the tiny preset cut to 2 scales, 2 z values and one target
channel: the real builder and loss, but a train step traces in seconds.
"""

from __future__ import annotations

import dataclasses
import os

from isl import config as config_lib
from isl import presets
from isl.data import convert
from isl.data import synthetic


def small_config() -> config_lib.ExperimentConfig:
    tiny = presets.get_preset("tiny")
    return dataclasses.replace(
        tiny,
        name="tiny_small",
        channels=dataclasses.replace(tiny.channels, num_z_values=2, target_channels=("DAPI_CONFOCAL",)),
        model=dataclasses.replace(
            tiny.model, num_scales=2, lower_modules_scale_0=1, lower_modules_step=1, upper_tower_modules=1
        ),
        train=dataclasses.replace(tiny.train, batch_size=4, eval_batches=1),
    ).validate()


SMALL_OVERRIDES = [
    'channels.num_z_values=2',
    'channels.target_channels=["DAPI_CONFOCAL"]',
    "model.num_scales=2",
    "model.lower_modules_scale_0=1",
    "model.lower_modules_step=1",
    "model.upper_tower_modules=1",
    "train.batch_size=4",
    "train.eval_batches=1",
]


def tiny_tfrecords(root: str) -> str:
    """Converts three 100 x 100 synthetic wells (two train, one eval) into `root/tfrecords`."""
    wells = os.path.join(root, "wells")
    synthetic.write_synthetic_dataset(wells, num_wells=3, size=100, num_z=13, seed=0)
    output = os.path.join(root, "tfrecords")
    convert.convert([wells], output, presets.get_preset("tiny").channels, num_shards=1, eval_every=3)
    return output
