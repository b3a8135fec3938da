"""Tests for the synthetic dataset generator."""

from __future__ import annotations

import os

import numpy as np

from isl import config as config_lib
from isl.data import synthetic
from isl.data import wells
from isl.io import filenames


def test_writes_learnable_wells_in_the_lab_naming_deterministically(tmp_path):
    first = synthetic.write_synthetic_dataset(str(tmp_path / "a"), num_wells=2, size=(96, 80), num_z=13, seed=7)
    synthetic.write_synthetic_dataset(str(tmp_path / "b"), num_wells=2, size=(96, 80), num_z=13, seed=7)
    assert [os.path.basename(path) for path in first] == ["well-A1", "well-A2"]
    names = sorted(os.listdir(first[0]))
    assert len(names) == 16 and all(filenames.parse(name).lab == "SYNTHETIC" for name in names)
    for name in names:
        assert (tmp_path / "a" / "well-A1" / name).read_bytes() == (tmp_path / "b" / "well-A1" / name).read_bytes()
    well = wells.read_well(first[0], config_lib.ChannelConfig())
    assert well.inputs.shape == (13, 96, 80)
    assert abs(float(well.inputs.mean()) - 0.5) < 0.02 and 0.07 < float(well.inputs.std()) < 0.13
    assert 0.17 < float(np.median(well.targets["DAPI_CONFOCAL"])) < 0.23
    # Focus changes the look: the slices differ, and the labels follow the scene.
    assert not np.allclose(well.inputs[0], well.inputs[-1], atol=0.05)
    correlation = np.corrcoef(well.inputs[6].ravel(), well.targets["MAP2_CONFOCAL"].ravel())[0, 1]
    assert abs(correlation) > 0.2


def test_nested_names_parse_as_original_images(tmp_path):
    directory = synthetic.write_synthetic_dataset(str(tmp_path), num_wells=1, size=32, num_z=2, nested_names=True)[0]
    keys = [filenames.parse(name) for name in os.listdir(directory)]
    assert all(key.nested and key.kind == "ORIGINAL" for key in keys)
