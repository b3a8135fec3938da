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


def test_a_grey_palette_png_reads_as_grey_and_a_colour_palette_is_refused(tmp_path):
    from PIL import Image

    values = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    grey = Image.fromarray(values, mode="L").convert("P")  # Identity-like grey palette, as many programs save.
    assert grey.mode == "P"
    path = str(tmp_path / "grey_palette.png")
    grey.save(path)
    assert images.read_info(path).dtype == np.uint8
    assert np.array_equal(images.read_image(path), values)
    # A palette that is not in order still gives the grey values, not the indices.
    shuffled = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    shuffled.putpalette([200, 200, 200, 10, 10, 10, 77, 77, 77])
    shuffled.save(str(tmp_path / "shuffled.png"))
    assert images.read_image(str(tmp_path / "shuffled.png")).tolist() == [[200, 10], [77, 10]]
    colour = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    colour.putpalette([255, 0, 0, 0, 255, 0])
    colour.save(str(tmp_path / "colour_palette.png"))
    with pytest.raises(errors.InputError, match="colour_palette.png: a colour image"):
        images.read_image(str(tmp_path / "colour_palette.png"))


def test_ome_tiff_gives_z_channels_names_and_significant_bits(tmp_path):
    import tifffile

    stack = np.random.default_rng(0).integers(0, 2**14, (2, 5, 8, 6)).astype(np.uint16)  # C, Z, Y, X
    path = str(tmp_path / "fov.ome.tif")
    tifffile.imwrite(path, stack, metadata={"axes": "CZYX", "Channel": {"Name": ["Phase", "Hoechst"]},
                                            "SignificantBits": 14})
    info = images.read_info(path)
    assert (info.num_pages, info.num_channels, info.height, info.width) == (5, 2, 8, 6)
    assert info.channel_names == ("Phase", "Hoechst") and info.significant_bits == 14
    assert np.array_equal(images.read_image(path, page=3, channel=1), stack[1, 3])
    assert np.array_equal(images.read_pages(path, channel=0), stack[0])
    with pytest.raises(errors.InputError, match="has 2 channel"):
        images.read_image(path, page=0, channel=2)


def test_imagej_hyperstack_and_pages_written_one_by_one(tmp_path):
    import tifffile

    stack = np.arange(3 * 2 * 4 * 5, dtype=np.uint8).reshape(3, 2, 4, 5)  # Z, C, Y, X
    hyperstack = str(tmp_path / "hyper.tif")
    tifffile.imwrite(hyperstack, stack[np.newaxis], imagej=True, metadata={"axes": "TZCYX"})
    info = images.read_info(hyperstack)
    assert (info.num_pages, info.num_channels, info.dtype) == (3, 2, np.uint8)
    assert np.array_equal(images.read_image(hyperstack, page=2, channel=1), stack[2, 1])
    pages = str(tmp_path / "pages.tif")
    with tifffile.TiffWriter(pages) as writer:
        for index in range(3):
            writer.write(np.full((4, 5), 1000 * index, np.uint16), photometric="minisblack")
    assert images.read_info(pages).num_pages == 3
    assert images.read_pages(pages)[:, 0, 0].tolist() == [0, 1000, 2000]
    timelapse = str(tmp_path / "time.ome.tif")
    tifffile.imwrite(timelapse, np.zeros((2, 3, 4, 5), np.uint16), metadata={"axes": "TZYX"})
    with pytest.raises(errors.InputError, match="time.ome.tif: .* has 2 time points"):
        images.read_info(timelapse)


def test_a_vendor_file_without_bioio_names_the_package_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bioio(name, *args, **kwargs):
        if name == "bioio" or name.startswith("bioio."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bioio)
    for extension, plugin in images.BIOIO_PLUGINS.items():
        path = tmp_path / f"scan{extension}"
        path.write_bytes(b"\0" * 16)
        with pytest.raises(errors.InputError, match=rf"scan\{extension}: .*pip install -e '\.\[formats\]'.*{plugin}"):
            images.read_info(str(path))
