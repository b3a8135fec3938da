"""Tests for finding, checking and reading wells in both layouts."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from isl import config as config_lib
from isl import errors
from isl.data import wells
from isl.io import images
from tests.data import wellmaker

CHANNELS = config_lib.ChannelConfig()


def test_reads_the_real_sample_well(sample_dir):
    well = wells.read_well(str(sample_dir), CHANNELS)
    assert well.inputs.shape == (13, 1024, 768) and well.inputs.dtype == np.float32
    assert sorted(well.targets) == ["DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL"]
    assert 0.45 < float(well.inputs.mean()) < 0.55
    assert well.metadata["modality"] == "PHASE_CONTRAST" and well.metadata["well"] == "A4"


def test_reads_values_divided_by_the_type_maximum(tmp_path):
    stack, targets = wellmaker.random_well(str(tmp_path / "w"), num_z=3)
    well = wells.read_well(str(tmp_path / "w"), CHANNELS)
    assert np.array_equal(well.inputs, stack.astype(np.float32) / np.float32(65535))
    assert np.array_equal(well.targets["MAP2_CONFOCAL"],
                          targets["MAP2_CONFOCAL"].astype(np.float32) / np.float32(65535))


def test_nested_names_and_predicted_files_and_many_wells_per_folder(tmp_path):
    rng = np.random.default_rng(0)
    for well_id in ("A1", "A2"):
        for z in range(2):
            images.write_image(str(tmp_path / wellmaker.file_name(z, "DIC", well_id, nested=True)),
                               rng.integers(0, 255, (8, 8), dtype=np.uint8))
        images.write_image(str(tmp_path / wellmaker.file_name("MAXPROJECT", "DAPI_CONFOCAL", well_id, nested=True)),
                           rng.integers(0, 255, (8, 8), dtype=np.uint8))
    predicted = wellmaker.file_name("MAXPROJECT", "DAPI_CONFOCAL", "A1", nested=True).replace(
        "is_mask-false", "statistic,value-MEDIAN,kind,value-PREDICTED")
    shutil.copy(tmp_path / wellmaker.file_name(0, "DIC", "A1", nested=True), tmp_path / predicted)
    scan = wells.scan_wells([str(tmp_path)], CHANNELS)
    assert [well.metadata["well"] for well in scan.wells] == ["A1", "A2"]
    assert all(well.num_source_z == 2 and well.modality == "DIC" for well in scan.wells)
    assert [os.path.basename(path) for path, _ in scan.skipped] == [predicted]


def test_generic_layout_with_a_csv_manifest_and_a_multi_page_tiff(tmp_path):
    stack = np.random.default_rng(0).integers(0, 65535, (5, 6, 7), dtype=np.uint16)
    images.write_image(str(tmp_path / "bf.tif"), stack)
    images.write_image(str(tmp_path / "gfap.png"), stack[0])
    (tmp_path / "manifest.csv").write_text("file,channel,z\nbf.tif,BRIGHTFIELD,\ngfap.png,GFAP_CONFOCAL,MAXPROJECT\n")
    channels = config_lib.ChannelConfig(target_channels=("DAPI_CONFOCAL", "GFAP_CONFOCAL"))
    well = wells.read_well(str(tmp_path), channels)
    assert well.name == tmp_path.name
    assert np.array_equal(well.inputs, stack.astype(np.float32) / np.float32(65535))
    assert list(well.targets) == ["GFAP_CONFOCAL"]
    # The paper vocabulary does not know GFAP: an error naming the file, with the fix.
    with pytest.raises(errors.InputError, match="unknown channel 'GFAP_CONFOCAL'") as raised:
        wells.read_well(str(tmp_path), CHANNELS)
    assert "gfap.png" in str(raised.value) and "channels.target_channels" in str(raised.value)


def test_generic_layout_with_a_json_manifest_and_single_planes(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for z in range(3):
        images.write_image(str(tmp_path / f"phase_{z}.png"), rng.integers(0, 255, (4, 4), dtype=np.uint8))
        entries.append({"file": f"phase_{z}.png", "channel": "PHASE_CONTRAST", "z": z})
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "plate1_B3", "well": "B3", "images": entries}))
    scan = wells.scan_wells([str(tmp_path)], CHANNELS)
    assert [(well.name, well.num_source_z, well.metadata["well"]) for well in scan.wells] == [("plate1_B3", 3, "B3")]


def _base_well(tmp_path):
    directory = str(tmp_path / "well")
    wellmaker.random_well(directory, num_z=4, height=16, width=16)
    return directory


def _phase(directory, z):
    return os.path.join(directory, wellmaker.file_name(z, "PHASE_CONTRAST"))


def _break_missing_z(directory):
    os.remove(_phase(directory, 2))
    return "missing z 2"


def _break_duplicate_z(directory):
    shutil.copy(_phase(directory, 1), _phase(directory, 1)[:-4] + ".tif")
    return "z slice 1 of PHASE_CONTRAST is given 2 times"


def _break_sizes(directory):
    images.write_image(_phase(directory, 3), np.zeros((16, 15), np.uint16))
    return "mismatched image sizes"


def _break_truncated(directory):
    with open(_phase(directory, 0), "r+b") as handle:
        handle.truncate(os.path.getsize(_phase(directory, 0)) // 2)
    return "truncated or corrupt"


def _break_non_image(directory):
    with open(_phase(directory, 1), "w") as handle:
        handle.write("hello")
    return "not a readable PNG"


def _break_unknown_channel(directory):
    shutil.copy(_phase(directory, 0), os.path.join(directory, wellmaker.file_name("MAXPROJECT", "GFAP_CONFOCAL")))
    return "unknown channel 'GFAP_CONFOCAL'"


def _break_empty(directory):
    shutil.rmtree(directory)
    os.makedirs(directory)
    return "No images found"


def _break_bit_depths(directory):
    images.write_image(_phase(directory, 2), np.zeros((16, 16), np.uint8))
    return "mixed bit depths"


def _break_two_modalities(directory):
    shutil.copy(_phase(directory, 0), os.path.join(directory, wellmaker.file_name(0, "DIC")))
    return "more than one modality"


def _write_manifest(directory, rows):
    with open(os.path.join(directory, "manifest.csv"), "w") as handle:
        handle.write("file,channel,z,c\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))


def _break_stack_slice_sizes(directory):
    import tifffile

    path = os.path.join(directory, "stack.tif")
    with tifffile.TiffWriter(path) as writer:
        for shape in ((16, 16), (16, 16), (15, 16)):
            writer.write(np.zeros(shape, np.uint16), photometric="minisblack")
    _write_manifest(directory, [("stack.tif", "PHASE_CONTRAST", "", "")])
    return "stack.tif: the pages (z slices) differ in size"


def _break_manifest_missing_file(directory):
    shutil.copy(_phase(directory, 0), os.path.join(directory, "bf.png"))
    _write_manifest(directory, [("bf.png", "PHASE_CONTRAST", 0, ""), ("hoechst.tif", "DAPI_CONFOCAL", "", "")])
    return "hoechst.tif not found"


def _break_unmapped_channels(directory):
    import tifffile

    stack = np.zeros((3, 2, 16, 16), np.uint16)  # C, Z, Y, X
    tifffile.imwrite(os.path.join(directory, "fov.ome.tif"), stack,
                     metadata={"axes": "CZYX", "Channel": {"Name": ["Phase", "Hoechst", "GFP"]}})
    _write_manifest(directory,
                    [("fov.ome.tif", "PHASE_CONTRAST", "", "Phase"), ("fov.ome.tif", "DAPI_CONFOCAL", "", 1)])
    return "fov.ome.tif: has 3 channels (Phase, Hoechst, GFP) but"


def _break_vendor_file(directory):
    with open(os.path.join(directory, "scan.czi"), "wb") as handle:
        handle.write(b"ZISRAWFILE" + bytes(64))
    _write_manifest(directory, [("scan.czi", "PHASE_CONTRAST", "", "")])
    try:
        import bioio  # noqa: F401
    except ImportError:
        return "scan.czi: reading .czi files needs the optional bioio readers: pip install -e '.[formats]'"
    return "scan.czi: "


BAD_INPUTS = {
    "stack_slice_sizes": _break_stack_slice_sizes,
    "manifest_missing_file": _break_manifest_missing_file,
    "unmapped_channels": _break_unmapped_channels,
    "vendor_file_without_reader": _break_vendor_file,
    "missing_z": _break_missing_z,
    "duplicate_z": _break_duplicate_z,
    "mismatched_sizes": _break_sizes,
    "truncated": _break_truncated,
    "non_image": _break_non_image,
    "unknown_channel": _break_unknown_channel,
    "empty_folder": _break_empty,
    "mixed_bit_depths": _break_bit_depths,
    "two_modalities": _break_two_modalities,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(tmp_path, case):
    directory = _base_well(tmp_path)
    problem = BAD_INPUTS[case](directory)
    with pytest.raises(errors.InputError, match=re.escape(problem)) as raised:
        wells.read_well(directory, CHANNELS)
    assert directory in str(raised.value) or "well" in str(raised.value)
