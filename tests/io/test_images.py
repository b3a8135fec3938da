"""Tests for 8/16-bit PNG and TIFF reading and writing."""

from __future__ import annotations

import numpy as np
import pytest

from isl import errors
from isl.io import images


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("extension", [".png", ".tif"])
def test_round_trip_is_lossless(tmp_path, dtype, extension):
    array = np.random.default_rng(1).integers(0, np.iinfo(dtype).max + 1, (7, 5), dtype=dtype)
    path = str(tmp_path / f"plane{extension}")
    images.write_image(path, array)
    info = images.read_info(path)
    assert (info.height, info.width, info.dtype, info.num_pages) == (7, 5, np.dtype(dtype), 1)
    read = images.read_image(path)
    assert read.dtype == dtype and np.array_equal(read, array)


def test_to_float_divides_by_the_type_maximum():
    assert images.to_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert images.to_float(np.array([65535, 32768], np.uint16))[1] == np.float32(32768) / np.float32(65535)


def test_multi_page_tiff_reads_every_page(tmp_path):
    stack = np.arange(3 * 4 * 6, dtype=np.uint16).reshape(3, 4, 6)
    path = str(tmp_path / "stack.tif")
    images.write_image(path, stack)
    assert images.read_info(path).num_pages == 3
    assert np.array_equal(images.read_pages(path), stack)
    assert np.array_equal(images.read_image(path, page=2), stack[2])


def test_truncated_non_image_and_colour_files_name_the_file(tmp_path):
    path = tmp_path / "plane.png"
    images.write_image(str(path), np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.InputError, match="truncated or corrupt") as raised:
        images.read_image(str(path))
    assert str(path) in str(raised.value)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(errors.InputError, match="not a readable PNG"):
        images.read_info(str(text))
    from PIL import Image

    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(colour)
    with pytest.raises(errors.InputError, match="colour image"):
        images.read_image(str(colour))
    with pytest.raises(errors.InputError, match="file not found"):
        images.read_image(str(tmp_path / "missing.png"))


def test_a_stack_written_by_tifffile_defaults_reads_as_planes_and_rgb_is_refused(tmp_path):
    import tifffile

    stack = np.arange(5 * 4 * 6, dtype=np.uint16).reshape(5, 4, 6)
    path = str(tmp_path / "volume.tif")
    tifffile.imwrite(path, stack)
    assert images.read_info(path).num_pages == 5
    assert np.array_equal(images.read_pages(path), stack)
    rgb = str(tmp_path / "rgb.tif")
    tifffile.imwrite(rgb, np.zeros((4, 6, 3), np.uint8), photometric="rgb")
    with pytest.raises(errors.InputError, match="colour"):
        images.read_info(rgb)
