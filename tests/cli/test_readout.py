"""`isl readout` end to end on a tiny model: fit, predict with the new folder, refuse bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from isl.data import wells
from isl.io import images
from isl.io import model_dir as model_dir_lib
from isl.infer import embedder as embedder_lib
from isl.model import readout as readout_lib
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.train.test_readout import structured_well


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    for seed, name in ((1, "a"), (2, "b")):
        structured_well(str(root / name), seed)
    return root


def test_fit_then_predict_with_the_readout_folder(tiny_model_dir, plate, tmp_path, capsys):
    output = str(tmp_path / "readout_model")
    code, out, _ = run_isl(["readout", f"--model_dir={tiny_model_dir}", f"--train_dir={plate / 'a'}",
                            f"--eval_dir={plate / 'b'}", "--radii=1,2", "--noprogress", f"--output_dir={output}",
                            "--json"], capsys)
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    # Default targets: the model's channels present in the first training well.
    assert summary["targets"] == ["DAPI_CONFOCAL", "MAP2_CONFOCAL"]
    assert summary["eval_pearson_r"][str(plate / "b")]["DAPI_CONFOCAL"] > 0.8
    assert "Pearson r" in out and "the 90% interval" in out and "isl predict --model_dir=" in out
    layout = model_dir_lib.ModelDir(output)
    assert sorted(os.listdir(output)) == sorted(["config.json", "model.weights.h5", "readout.json"])
    assert open(layout.weights, "rb").read() == open(model_dir_lib.ModelDir(tiny_model_dir).weights, "rb").read()

    predictions = str(tmp_path / "predictions")
    code, out, _ = run_isl(["predict", f"--model_dir={output}", f"--input_dir={plate / 'b'}",
                            f"--output_dir={predictions}", "--channels=MAP2_CONFOCAL",
                            "--statistics=median,std,q05,q95", "--noprogress", "--json"], capsys)
    assert code == 0, out
    (well,) = json.loads(out.strip().splitlines()[-1])["wells"]
    files = well["files"]["MAP2_CONFOCAL"]
    assert set(well["files"]) == {"MAP2_CONFOCAL"} and set(files) == {"median", "std", "q05", "q95"}
    band = [images.to_float(images.read_image(os.path.join(well["well_dir"], files[name]))) for name in ("q05", "q95")]
    assert np.all(band[0] <= band[1]) and np.mean(band[1] - band[0]) > 0.001
    record = json.load(open(os.path.join(well["well_dir"], "prediction.json")))
    assert record["readout"] is True and record["geometry"] is None
    median_file = os.path.join(well["well_dir"], well["files"]["MAP2_CONFOCAL"]["median"])
    written = images.to_float(images.read_image(median_file))
    # The same values as the read-out applied to the embedding in memory (16-bit rounding apart).
    model, config = saving.load_model_dir(output, input_size=None)
    stack = wells.read_well(str(plate / "b"), config.channels, ignore_unknown=True).inputs
    readout = readout_lib.load(layout.readout)
    expected = readout.predict(embedder_lib.Embedder(model, config)(stack))[..., 1]
    np.testing.assert_allclose(written, expected, atol=1e-4)

    code, out, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={plate / 'b'}",
                              f"--output_dir={predictions}", "--channels=NFH_CONFOCAL", "--noprogress"], capsys)
    assert code == 2 and "does not predict NFH_CONFOCAL" in err
    code, out, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={plate / 'b'}",
                              f"--output_dir={predictions}", "--statistics=entropy", "--noprogress"], capsys)
    assert code == 2 and "not entropy" in err
    # --region (issue 27): the window's pixels equal the whole well's, from a core run on the window plus context.
    code, out, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={plate / 'b'}",
                              f"--output_dir={tmp_path / 'window'}", "--region=5:25,30:", "--channels=MAP2_CONFOCAL",
                              "--noprogress", "--json"], capsys)
    assert code == 0, err
    (window_well,) = json.loads(out.strip().splitlines()[-1])["wells"]
    window = images.to_float(images.read_image(os.path.join(window_well["well_dir"],
                                                            window_well["files"]["MAP2_CONFOCAL"]["median"])))
    assert window.shape == (20, 14)
    np.testing.assert_allclose(window, written[5:25, 30:], atol=2e-5)
    record = json.load(open(os.path.join(window_well["well_dir"], "prediction.json")))
    assert record["region"] == {"row_offset": 5, "column_offset": 30, "height": 20, "width": 14}
    code, out, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={plate / 'b'}",
                              f"--output_dir={predictions}", "--border=valid", "--noprogress"], capsys)
    assert code == 2 and "--border=valid applies to the network's own heads" in err
    code, _, err = run_isl(["export", f"--model_dir={output}", f"--export_dir={tmp_path / 'exported'}"], capsys)
    assert code == 2 and "read-out" in err and not (tmp_path / "exported").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--targets=NFH_CONFOCAL"], "no NFH_CONFOCAL image"),
        (["--radii=2,1"], "--radii must be distinct positive integers"),
        (["--radii=a"], "--radii must be integers"),
        (["--penalty=0"], "--penalty must be > 0"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(tiny_model_dir, plate, tmp_path, capsys, flags, message):
    output = tmp_path / "out"
    code, _, err = run_isl(["readout", f"--model_dir={tiny_model_dir}", f"--train_dir={plate / 'a'}",
                            f"--output_dir={output}", "--noprogress", *flags], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not output.exists()


def test_an_existing_folder_that_is_not_a_readout_is_never_replaced(tiny_model_dir, plate, tmp_path, capsys):
    code, _, err = run_isl(["readout", f"--model_dir={tiny_model_dir}", f"--train_dir={plate / 'a'}",
                            f"--output_dir={plate}", "--noprogress"], capsys)
    assert code == 2 and "is not a read-out folder" in err and sorted(os.listdir(plate)) == ["a", "b"]
    code, _, err = run_isl(["readout", f"--model_dir={tiny_model_dir}", f"--train_dir={plate / 'a'}",
                            f"--output_dir={tiny_model_dir}", "--noprogress"], capsys)
    assert code == 2 and "not --model_dir" in err


def test_a_readout_is_calibrated_with_a_spread_scale_or_conditional_histograms(tiny_model_dir, plate, tmp_path,
                                                                                capsys):
    from isl.io import calibration_file

    output = str(tmp_path / "readout_model")
    code, out, _ = run_isl(["readout", f"--model_dir={tiny_model_dir}", f"--train_dir={plate / 'a'}", "--radii=1",
                            "--targets=DAPI_CONFOCAL", "--noprogress", f"--output_dir={output}"], capsys)
    assert code == 0, out
    calibrate = ["calibrate", f"--model_dir={output}", f"--data_dir={plate / 'b'}", "--region=0:40,0:44",
                 f"--train_dir={plate / 'a'}", "--train_region=0:40,0:44", "--min_pixels=1000"]

    said = {}

    def predict(name: str, *flags: str) -> tuple[dict, dict]:
        predictions = str(tmp_path / name)
        code, out, _ = run_isl(["predict", f"--model_dir={output}", f"--input_dir={plate / 'b'}", "--noprogress",
                                f"--output_dir={predictions}", "--statistics=median,std,q05", "--json", *flags],
                               capsys)
        assert code == 0, out
        said[name] = out
        (well,) = json.loads(out.strip().splitlines()[-1])["wells"]
        assert set(well["calibration_files"]["DAPI_CONFOCAL"]) == {"true_bin_probability", "cdf_below_true", "crps"}
        code, out, _ = run_isl(["evaluate", f"--predictions_dir={predictions}", f"--truth_dir={plate / 'b'}",
                                "--json"], capsys)
        assert code == 0, out
        return ({statistic: images.to_float(images.read_image(os.path.join(well["well_dir"], file)))
                 for statistic, file in well["files"]["DAPI_CONFOCAL"].items()},
                json.loads(out.strip().splitlines()[-1])["rows"][0])

    # The spread scale alone (as before the conditional histograms; such a record still loads).
    code, out, _ = run_isl([*calibrate, "--noreadout_histograms"], capsys)
    assert code == 0, out
    raw, raw_row = predict("raw", "--nocalibration")
    record = calibration_file.read(output)
    assert record.route == "readout" and set(record.channels) == {"DAPI_CONFOCAL"}
    assert set(record.channels["DAPI_CONFOCAL"]) == {"spread_scale"}
    scale = record.channels["DAPI_CONFOCAL"]["spread_scale"]
    before, after = (record.scores["DAPI_CONFOCAL"][key] for key in ("before", "after"))
    assert after["nll_nats"] <= before["nll_nats"] + 1e-9 and scale != 1.0
    scaled, row = predict("scaled")
    unclipped = raw["std"] < 0.5
    np.testing.assert_allclose(scaled["std"][unclipped], raw["std"][unclipped] * scale, atol=2e-4)
    assert row["calibrated"] is True and raw_row["calibrated"] is False
    assert row["information_gain_bits"] == pytest.approx(after["information_gain_bits"], abs=2e-3)
    # The default: conditional histograms mixed into the normal curve.
    code, out, _ = run_isl(calibrate, capsys)
    assert code == 0 and "conditional histograms of" in out, out
    parameters = calibration_file.read(output).channels["DAPI_CONFOCAL"]
    assert {"histograms", "histogram_weights", "value_edges", "spread_edges"} <= set(parameters)
    before, after = (calibration_file.read(output).scores["DAPI_CONFOCAL"][key] for key in ("before", "after"))
    assert after["nll_nats"] < before["nll_nats"]
    mixed, row = predict("mixed")
    assert "conditional histograms of the true levels for DAPI_CONFOCAL" in said["mixed"]
    # Predict's calibration maps, evaluate and calibrate's own report agree; the median stays the read-out's value.
    for key in ("information_gain_bits", "coverage_50", "coverage_90", "crps"):
        assert row[key] == pytest.approx(after[key], abs=2e-3), key
    assert row["information_gain_bits"] > raw_row["information_gain_bits"]
    np.testing.assert_array_equal(mixed["median"], raw["median"])
    assert not np.allclose(mixed["q05"], raw["q05"], atol=1e-3)
    # A window (isl predict --region) gets the same mixture as the whole field there.
    window, _ = predict("window", "--region=10:30,5:35")
    np.testing.assert_allclose(window["q05"], mixed["q05"][10:30, 5:35], atol=1 / 255 + 1e-6)


def test_readout_prints_its_expected_memory_and_refuses_when_it_does_not_fit(tiny_model_dir, plate, tmp_path, capsys,
                                                                            monkeypatch):
    import collections

    import psutil

    memory = collections.namedtuple("memory", "available total")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(1.0e9, 24e9))
    output = tmp_path / "readout"
    code, _, err = run_isl(["readout", f"--model_dir={tiny_model_dir}", f"--train_dir={plate / 'a'}",
                            f"--output_dir={output}", "--noprogress"], capsys)
    assert code == 2 and not output.exists()
    assert "Expected peak memory: about 2.7 GB (largest well" in err and "40x44, 15 planes" in err
    assert "more than the 1.0 GB available now; split that field into smaller wells" in err
