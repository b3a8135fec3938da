"""Mirrored test wells: the sample reflected out to any size."""

from __future__ import annotations

import os

import numpy as np

from isl.benchmarks import mirror
from isl.io import images


def test_mirrored_is_numpy_reflect_repeated():
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    result = mirror.mirrored(image, 7, 10)
    np.testing.assert_array_equal(result[:5, :7], np.pad(image, ((0, 2), (0, 3)), mode="reflect"))
    assert result.shape == (7, 10)
    np.testing.assert_array_equal(result[:3, 6], image[:, 0])  # Period 2 * (4 - 1) = 6.
    np.testing.assert_array_equal(result[4:7, 0], image[[0, 1, 2], 0])  # Period 2 * (3 - 1) = 4.


def test_mirror_well_writes_every_image_at_the_new_size(tmp_path):
    source, target = tmp_path / "well", tmp_path / "big"
    source.mkdir()
    for name in ("a,channel-DAPI_CONFOCAL.png", "b,z_depth-0.tif"):
        images.write_image(source / name, (np.arange(20, dtype=np.uint16) * 1000).reshape(4, 5))
    (source / "notes.txt").write_text("not an image")
    written = mirror.mirror_well(str(source), str(target), (9, 11))
    assert written == sorted(os.listdir(target)) == ["a,channel-DAPI_CONFOCAL.png", "b,z_depth-0.tif"]
    for name in written:
        result = images.read_image(target / name)
        assert result.shape == (9, 11) and result.dtype == np.uint16
        np.testing.assert_array_equal(result[:4, :5], images.read_image(source / name))
