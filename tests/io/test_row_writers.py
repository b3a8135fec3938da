"""Incremental image writers: same pixels as the whole-image writers, nothing left behind on failure."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import tifffile

from isl import errors
from isl.io import images


@pytest.mark.parametrize("extension, dtype", [("png", np.uint16), ("png", np.uint8), ("tif", np.uint16),
                                              ("tif", np.float32)])
def test_bands_of_rows_give_the_whole_image(tmp_path, extension, dtype):
    rng = np.random.default_rng(0)
    image = (rng.random((37, 53)) * (255 if dtype == np.uint8 else 65535)).astype(dtype)
    path = tmp_path / f"image.{extension}"
    writer = images.row_writer(path, 37, 53, dtype)
    for first in (0, 10, 11, 30):
        writer.write_rows(image[first : {0: 10, 10: 11, 11: 30, 30: 37}[first]])
    assert not path.exists()  # Under a temporary name until committed.
    writer.commit()
    read = tifffile.imread(path) if extension == "tif" else images.read_image(path)
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, image)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "median.tif"
    writer = images.row_writer(path, 8, 8, np.uint16)

    def full(rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write", full)
    with pytest.raises(errors.InputError, match=r"median\.tif.*disk is full"):
        writer.write_rows(np.zeros((4, 8), np.uint16))
    assert os.listdir(tmp_path) == []


def test_missing_rows_are_an_error_not_a_short_file(tmp_path):
    path = tmp_path / "median.png"
    writer = images.row_writer(path, 8, 8, np.uint16)
    writer.write_rows(np.zeros((4, 8), np.uint16))
    with pytest.raises(ValueError, match="4 of 8 rows"):
        writer.commit()
    assert os.listdir(tmp_path) == []


def test_an_image_too_large_for_png_is_refused_before_writing(tmp_path):
    with pytest.raises(errors.InputError, match=r"huge\.png.*too large for PNG.*--format=tiff"):
        images.row_writer(tmp_path / "huge.png", 2**31, 8, np.uint16)
    assert os.listdir(tmp_path) == []
