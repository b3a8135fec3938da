"""The bioimage.io test input read from a lazily read sample well: the same crop and truth as the whole well's."""

from __future__ import annotations

import numpy as np

from isl import presets
from isl.data import assemble
from isl.data import wells
from isl.infer import bioimageio
from tests.data import wellmaker


def test_the_sample_crop_and_its_truth_equal_the_whole_wells(tmp_path):
    directory = str(tmp_path / "w")
    wellmaker.random_well(directory, num_z=13, height=40, width=36)
    config = presets.get_preset("tiny")
    stack, truth, where = bioimageio.sample_stack(config, 24, directory, origin=(5, 9), border=4)
    whole = wells.read_well(directory, config.channels, ignore_unknown=True)
    expected_stack = np.round(np.clip(whole.inputs[:, 5:29, 9:33], 0, 1) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(stack[0], np.moveaxis(expected_stack, 0, -1))
    values, masks = assemble.target_stack(whole.targets, config.channels, shape=(40, 36))
    inner = (slice(9, 25), slice(13, 29))
    np.testing.assert_array_equal(truth, np.where(masks[inner] > 0, values[inner], np.nan).astype(np.float32))
    assert "rows 5:29, columns 9:33" in where
