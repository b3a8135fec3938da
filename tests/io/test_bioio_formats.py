"""Vendor and chunked formats through the optional bioio readers (`pip install -e '.[formats]'`).

Each test writes its own small file with the format's writer and reads it back
through `isl.io.images` and a manifest; the tests skip when bioio or the
plugin (or its writer) is not installed. LIF and ND2 have no Python writer, so
their path is checked with a stand-in for `bioio.BioImage`.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from isl import config as config_lib
from isl.data import wells
from isl.io import images

bioio = pytest.importorskip("bioio", reason="the formats extra (bioio) is not installed")

STACK = np.random.default_rng(0).integers(0, 4096, (2, 3, 16, 20)).astype(np.uint16)  # C, Z, Y, X


def _manifest(directory, file_name):
    with open(os.path.join(directory, "manifest.csv"), "w") as handle:
        handle.write(f"file,channel,z,c\n{file_name},PHASE_CONTRAST,,Phase\n{file_name},DAPI_CONFOCAL,,1\n")


def _check_well(directory):
    well = wells.read_well(directory, config_lib.ChannelConfig())
    np.testing.assert_array_equal(well.inputs, STACK[0].astype(np.float32) / np.float32(65535))
    # A fluorescence z-stack with an empty z is max-projected.
    np.testing.assert_array_equal(well.targets["DAPI_CONFOCAL"],
                                  STACK[1].max(axis=0).astype(np.float32) / np.float32(65535))


def test_ome_zarr(tmp_path):
    writers = pytest.importorskip("bioio_ome_zarr.writers", reason="bioio-ome-zarr is not installed")
    path = str(tmp_path / "fov.ome.zarr")
    writer = writers.OMEZarrWriter(
        path, level_shapes=STACK.shape, dtype=STACK.dtype, axes_names=["c", "z", "y", "x"],
        axes_types=["channel", "space", "space", "space"], zarr_format=2,
        channels=[writers.Channel(label="Phase", color="FFFFFF"), writers.Channel(label="Hoechst", color="0000FF")],
    )
    writer.write_full_volume(STACK)
    info = images.read_info(path)
    assert (info.num_channels, info.num_pages, info.height, info.width) == (2, 3, 16, 20)
    assert info.channel_names == ("Phase", "Hoechst")
    np.testing.assert_array_equal(images.read_image(path, page=2, channel=1), STACK[1, 2])
    _manifest(str(tmp_path), "fov.ome.zarr")
    _check_well(str(tmp_path))  # The .zarr folder is data, not another well.


def test_czi(tmp_path):
    czi = pytest.importorskip("pylibCZIrw.czi", reason="pylibCZIrw (CZI writer) is not installed")
    pytest.importorskip("bioio_czi", reason="bioio-czi is not installed")
    path = str(tmp_path / "fov.czi")
    with czi.create_czi(path, exist_ok=True) as document:
        for c in range(2):
            for z in range(3):
                document.write(STACK[c, z][..., np.newaxis], plane={"C": c, "Z": z, "T": 0})
        document.write_metadata(channel_names={0: "Phase", 1: "Hoechst"})
    info = images.read_info(path)
    assert (info.num_channels, info.num_pages, info.height, info.width) == (2, 3, 16, 20)
    np.testing.assert_array_equal(images.read_image(path, page=1, channel=0), STACK[0, 1])
    _manifest(str(tmp_path), "fov.czi")
    _check_well(str(tmp_path))


class _FakeImage:
    """The part of `bioio.BioImage` isl uses, over a `[T, C, Z, Y, X]` array."""

    def __init__(self, data, names):
        self._data = data
        self.channel_names = names
        self.dtype = data.dtype
        self.dims = types.SimpleNamespace(order="TCZYX", **dict(zip("TCZYX", data.shape)))

    def get_image_data(self, order, T=0):
        assert order == "CZYX"
        return self._data[T]


@pytest.mark.parametrize("extension", [".lif", ".nd2"])
def test_lif_and_nd2_map_channels_and_z_from_the_files_metadata(tmp_path, monkeypatch, extension):
    opened = []

    def fake_bioimage(path):
        opened.append(path)
        return _FakeImage(STACK[np.newaxis], ["Phase", "Hoechst"])

    monkeypatch.setattr(sys.modules["bioio"], "BioImage", fake_bioimage)
    file_name = "fov" + extension
    (tmp_path / file_name).write_bytes(b"vendor bytes")
    _manifest(str(tmp_path), file_name)
    _check_well(str(tmp_path))
    assert opened and all(path.endswith(file_name) for path in opened)
