"""`isl predict` end to end on a tiny model and small synthetic wells."""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from isl.eval import panels
from isl.io import filenames
from isl.io import images
from tests.cli.conftest import run_isl
from tests.data import wellmaker

CHANNELS = "--channels=DAPI_CONFOCAL,MAP2_CONFOCAL"


def test_predict_writes_lab_named_images_panels_and_calibration(tiny_model_dir, tmp_path, capsys):
    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, height=44, width=37)
    # A predicted image beside the inputs is never read as an input.
    images.write_image(
        os.path.join(well_dir,
                     wellmaker.file_name(filenames.MAXPROJECT, "DAPI_CONFOCAL").replace(".png", ",kind-PREDICTED.png")),
        np.zeros((44, 37), np.uint16),
    )
    output_dir = str(tmp_path / "out")
    code, out, _ = run_isl(
        ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", f"--output_dir={output_dir}",
         "--statistics=median,mean,q05,q95", CHANNELS, "--noprogress", "--json"],
        capsys,
    )
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    (well,) = summary["wells"]
    well_dir_out = well["well_dir"]
    median_name = well["files"]["DAPI_CONFOCAL"]["median"]
    key = filenames.parse(median_name)
    assert (key.kind, key.statistic, key.channel, key.well) == ("PREDICTED", "MEDIAN", "DAPI_CONFOCAL", "B2")
    median = images.read_image(os.path.join(well_dir_out, median_name))
    assert median.shape == (44, 37) and median.dtype == np.uint16
    assert np.all(median % 257 == 0)  # Bin k / 255 written as k * 257.
    low = images.to_float(images.read_image(os.path.join(well_dir_out, well["files"]["DAPI_CONFOCAL"]["q05"])))
    high = images.to_float(images.read_image(os.path.join(well_dir_out, well["files"]["DAPI_CONFOCAL"]["q95"])))
    assert np.all(low <= images.to_float(median)) and np.all(images.to_float(median) <= high)
    assert len(glob.glob(os.path.join(well_dir_out, "*kind-PREDICTED.png"))) == 2 * 4
    assert set(well["calibration_files"]) == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    target_panel = panels.decode_png_rgb16(open(os.path.join(well_dir_out, "target_error_panel.png"), "rb").read())
    # 2 rows x 3 columns of bordered 44 x 37 tiles, labelled: column names above, channel names on the left.
    expected = panels.labelled(np.zeros((2 * (44 + 8), 3 * (37 + 8), 3)), ["DAPI_CONFOCAL", "MAP2_CONFOCAL"],
                               panels.column_names())
    assert target_panel.shape == expected.shape and target_panel.shape[0] > 2 * (44 + 8)
    input_panel = panels.decode_png_rgb16(open(os.path.join(well_dir_out, "input_error_panel.png"), "rb").read())
    assert input_panel.shape[0] == 26 * (44 + 8) + target_panel.shape[0] - 2 * (44 + 8)
    record = json.load(open(os.path.join(well_dir_out, "prediction.json")))
    assert record["region"] == {"row_offset": 0, "column_offset": 0, "height": 44, "width": 37}
    # The tiny preset's patch geometry, for isl evaluate's interior and original regions.
    assert record["geometry"] == {"input_size": 42, "output_size": 8, "border": 17, "phase": 4}


def test_valid_border_and_tiff_format(tiny_model_dir, tmp_path, capsys):
    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, height=60, width=52)
    output_dir = str(tmp_path / "out")
    code, out, _ = run_isl(
        ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", f"--output_dir={output_dir}",
         "--border=valid", "--format=tiff", "--channels=DAPI_CONFOCAL", "--nopanels", "--nosave_calibration",
         "--noprogress"],
        capsys,
    )
    assert code == 0, out
    (path,) = glob.glob(os.path.join(output_dir, "*", "*statistic-MEDIAN*.tif"))
    # Interior of a 60 x 52 image for border 17, on the 8-px block grid.
    assert images.read_image(path).shape == (24, 16)
    assert not glob.glob(os.path.join(output_dir, "*", "*.png"))


def test_a_well_with_more_z_slices_than_the_model_takes_exits_2(tiny_model_dir, tmp_path, capsys):
    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, num_z=27, height=20, width=20)
    code, _, err = run_isl(
        ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", f"--output_dir={tmp_path / 'out'}"],
        capsys,
    )
    assert code == 2
    assert "27 z slices" in err and "26 z values" in err and "Traceback" not in err


def test_an_unreadable_image_exits_2_naming_the_file(tiny_model_dir, tmp_path, capsys):
    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, height=20, width=20)
    broken = os.path.join(well_dir, wellmaker.file_name(3, "PHASE_CONTRAST"))
    with open(broken, "wb") as handle:
        handle.write(b"not a png")
    code, _, err = run_isl(
        ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", f"--output_dir={tmp_path / 'out'}"],
        capsys,
    )
    assert code == 2
    assert "z_depth-3" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "TESTLAB_COND_1_2020-02-03_B2" / "prediction.json")


def test_missing_model_and_unknown_channel_exit_2(tiny_model_dir, tmp_path, capsys):
    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, height=20, width=20)
    code, _, err = run_isl(
        ["predict", f"--model_dir={tmp_path / 'nothing'}", f"--input_dir={well_dir}",
         f"--output_dir={tmp_path}"], capsys
    )
    assert code == 2 and "not a model directory" in err
    code, _, err = run_isl(
        ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", f"--output_dir={tmp_path}",
         "--channels=GFP"],
        capsys,
    )
    assert code == 2 and "GFP" in err


def test_region_predicts_the_whole_well_pixels_and_other_channels_are_ignored(tiny_model_dir, tmp_path, capsys):
    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, height=40, width=36)
    # Ground truth for a channel the model does not have.
    images.write_image(
        os.path.join(well_dir, wellmaker.file_name(filenames.MAXPROJECT, "GFAP_CONFOCAL")),
        np.zeros((40, 36), np.uint16)
    )
    common = [f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", "--channels=DAPI_CONFOCAL", "--nopanels",
              "--nosave_calibration", "--noprogress", "--format=tiff"]
    code, out, err = run_isl(["predict", *common, f"--output_dir={tmp_path / 'whole'}"], capsys)
    assert code == 0, err
    assert out.count("ignoring 1 file(s) of channels the model does not have") == 1 and "GFAP_CONFOCAL" in out
    assert "--set" not in out + err
    code, out, err = run_isl(["predict", *common, f"--output_dir={tmp_path / 'window'}", "--region=13:31,5:"], capsys)
    assert code == 0, err
    (whole,) = glob.glob(str(tmp_path / "whole" / "*" / "*statistic-MEDIAN*.tif"))
    (window,) = glob.glob(str(tmp_path / "window" / "*" / "*statistic-MEDIAN*.tif"))
    window_image = images.read_image(window)
    assert window_image.shape == (18, 31)
    np.testing.assert_array_equal(window_image, images.read_image(whole)[13:31, 5:36])
    record = json.load(open(os.path.join(os.path.dirname(window), "prediction.json")))
    assert record["region"] == {"row_offset": 13, "column_offset": 5, "height": 18, "width": 31}
    code, _, err = run_isl(["predict", *common, f"--output_dir={tmp_path / 'bad'}", "--region=30:50,0:10"], capsys)
    assert code == 2 and "outside the image" in err and "Traceback" not in err
    code, _, err = run_isl(["predict", *common, f"--output_dir={tmp_path / 'bad'}", "--tile_size=20"], capsys)
    assert code == 2 and "valid sizes are 42 + 4k: 42, 46" in err


def test_sigterm_between_wells_exits_143_and_keeps_the_finished_well(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import signal

    from isl.data import wells as wells_lib

    well_dirs = []
    for name in ("first", "second"):
        well_dirs.append(str(tmp_path / name))
        wellmaker.random_well(well_dirs[-1], height=30, width=30, well=name.upper()[:2])
    calls = []
    read_well = wells_lib.read_well

    def read_then_stop(directory, channels, ignore_unknown=False, normalization="none", **options):
        calls.append(normalization)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return read_well(directory, channels, ignore_unknown=ignore_unknown, normalization=normalization, **options)

    monkeypatch.setattr(wells_lib, "read_well", read_then_stop)
    output_dir = tmp_path / "out"
    code, out, err = run_isl(
        ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dirs[0]}", f"--input_dir={well_dirs[1]}",
         f"--output_dir={output_dir}", CHANNELS, "--normalization=paper", "--nopanels", "--noprogress"],
        capsys,
    )
    assert code == 143, err
    assert calls == ["paper", "paper"]  # --normalization reaches the input reader.
    assert "stopped by SIGTERM" in err and str(output_dir) in err
    finished = [name for name in os.listdir(output_dir) if os.path.exists(output_dir / name / "prediction.json")]
    assert len(finished) == 1 and "FI" in finished[0]
    assert not glob.glob(str(output_dir / "**" / ".tmp-*"), recursive=True)


def test_predict_prints_its_expected_peak_and_refuses_what_would_not_fit(tiny_model_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import collections

    import psutil

    well_dir = str(tmp_path / "well")
    wellmaker.random_well(well_dir, height=44, width=37)
    arguments = ["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well_dir}", CHANNELS, "--noprogress"]
    code, out, _ = run_isl([*arguments, f"--output_dir={tmp_path / 'fits'}"], capsys)
    assert code == 0 and "Expected peak memory:" in out
    memory = collections.namedtuple("memory", "available total")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(available=int(0.3e9), total=int(1e9)))
    code, out, err = run_isl([*arguments, f"--output_dir={tmp_path / 'refused'}"], capsys)
    assert code == 2
    assert "would not fit" in err and "--tile_size" in err and "0.3 GB free" in err
    assert not os.path.exists(tmp_path / "refused") or not glob.glob(str(tmp_path / "refused" / "*" / "*"))
