"""`isl calibrate` end to end on a tiny model: fit, predict calibrated, evaluate the proper scores; bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from isl.io import calibration_file
from tests.cli.conftest import run_isl
from tests.data import wellmaker

CHANNELS = "--channels=DAPI_CONFOCAL,MAP2_CONFOCAL"


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A writable copy of the tiny model (calibrate writes into its model folder)."""
    directory = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, directory)
    return directory


@pytest.fixture(scope="module")
def well(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("calibration_well") / "well")
    wellmaker.random_well(directory, height=64, width=48, seed=5)
    return directory


def test_calibrate_then_predict_and_evaluate_report_the_calibrated_scores(model_copy, well, tmp_path, capsys):
    code, out, _ = run_isl(["calibrate", f"--model_dir={model_copy}", f"--data_dir={well}", "--region=32:64,0:48",
                            "--train_region=0:32,0:48", "--min_pixels=500", CHANNELS, "--json"], capsys)
    assert code == 0, out
    assert "temperature" in out and "information gain" in out
    record = calibration_file.read(model_copy)
    assert record.route == "heads" and set(record.channels) == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    # The untrained tiny model's distributions are not uniform; the fit can only lower the validation NLL.
    for channel in record.channels:
        assert record.scores[channel]["after"]["nll_nats"] <= record.scores[channel]["before"]["nll_nats"] + 1e-9
        assert record.marginal_source["num_pixels"][channel] == 32 * 48
        assert len(record.marginal[channel]) == 256 and abs(sum(record.marginal[channel]) - 1) < 1e-9
    assert record.fitted_on["num_pixels"] == {"DAPI_CONFOCAL": 32 * 48, "MAP2_CONFOCAL": 32 * 48}

    predictions = str(tmp_path / "predictions")
    code, out, _ = run_isl(["predict", f"--model_dir={model_copy}", f"--input_dir={well}", CHANNELS,
                            f"--output_dir={predictions}", "--nopanels", "--noprogress"], capsys)
    assert code == 0 and out.startswith("Calibrated (calibration.json, temperature per channel): DAPI_CONFOCAL")
    code, out, _ = run_isl(["evaluate", f"--predictions_dir={predictions}", f"--truth_dir={well}",
                            "--region=32:64,0:48", "--json"], capsys)
    assert code == 0, out
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    for row in rows:
        assert row["calibrated"] is True
        assert np.isfinite(row["information_gain_bits"]) and 0 < row["crps"] < 1
        after = record.scores[row["channel"]]["after"]
        # Evaluate's figures from the written TIFFs equal calibrate's on the same pixels.
        assert row["information_gain_bits"] == pytest.approx(after["information_gain_bits"], abs=2e-3)
        assert row["crps"] == pytest.approx(after["crps"], abs=2e-4)
    assert "gain" in out

    uncalibrated = str(tmp_path / "uncalibrated")
    code, out, _ = run_isl(["predict", f"--model_dir={model_copy}", f"--input_dir={well}", CHANNELS,
                            f"--output_dir={uncalibrated}", "--nopanels", "--noprogress", "--nocalibration"], capsys)
    assert code == 0 and out.startswith("Uncalibrated (--nocalibration)")
    summary = json.load(open(os.path.join(uncalibrated, os.listdir(uncalibrated)[0], "prediction.json")))
    assert summary["calibration"]["applied"] is False and "DAPI_CONFOCAL" in summary["calibration"]["marginal"]

    # New weights in the folder (trained or recalibrated since): the old calibration is refused, not applied.
    from isl import presets
    from isl.model import builder
    from isl.model import saving

    config = presets.get_preset("tiny")
    saving.save_model_dir(builder.build_model(config), config, model_copy)
    code, _, err = run_isl(["predict", f"--model_dir={model_copy}", f"--input_dir={well}", CHANNELS,
                            f"--output_dir={tmp_path / 'stale'}", "--nopanels", "--noprogress"], capsys)
    assert code == 2 and "was fitted to other weights" in err and "isl calibrate" in err


def test_a_model_folder_without_calibration_predicts_and_says_it_is_uncalibrated(tiny_model_dir, well, tmp_path,
                                                                                  capsys):
    predictions = str(tmp_path / "predictions")
    code, out, _ = run_isl(["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well}", CHANNELS,
                            f"--output_dir={predictions}", "--nopanels", "--noprogress"], capsys)
    assert code == 0 and out.startswith("Uncalibrated: the model folder has no calibration.json")
    code, out, _ = run_isl(["evaluate", f"--predictions_dir={predictions}", f"--truth_dir={well}", "--json"], capsys)
    row = json.loads(out.strip().splitlines()[-1])["rows"][0]
    assert row["calibrated"] is None and row["information_gain_bits"] is None
    assert "no marginal histogram" in row["information_gain_note"]
    assert np.isfinite(row["crps"]) and np.isfinite(row["coverage_90"])


def test_a_split_without_truth_or_with_too_few_pixels_exits_2_and_writes_nothing(model_copy, well, tmp_path, capsys):
    bare = str(tmp_path / "bare")
    wellmaker.write_well(bare, np.zeros((13, 64, 48), np.uint16), {})
    common = [f"--model_dir={model_copy}", "--train_region=0:32,0:48", CHANNELS]
    code, _, err = run_isl(["calibrate", *common, f"--data_dir={bare}", "--region=32:64,0:48"], capsys)
    assert code == 2 and "no truth of DAPI_CONFOCAL, MAP2_CONFOCAL" in err and "Traceback" not in err
    code, _, err = run_isl(["calibrate", *common, f"--data_dir={well}", "--region=32:64,0:48"], capsys)
    assert code == 2 and "too few labelled pixels to calibrate (DAPI_CONFOCAL 1,536" in err and "10,000" in err
    code, _, err = run_isl(["calibrate", f"--model_dir={model_copy}", f"--data_dir={well}", "--region=32:64,0:48"],
                           capsys)
    assert code == 2 and "--train_region is required" in err
    assert not os.path.exists(calibration_file.path(model_copy))


@pytest.mark.slow  # About 30-50 s (an export and three predictions); the in-graph division is also tested fast.
def test_an_export_of_a_calibrated_model_applies_the_temperatures_in_its_graph(model_copy, well, tmp_path, capsys):
    from isl.io import images

    code, out, _ = run_isl(["calibrate", f"--model_dir={model_copy}", f"--data_dir={well}", "--region=32:64,0:48",
                            "--train_region=0:32,0:48", "--min_pixels=500", CHANNELS], capsys)
    assert code == 0, out
    export_dir = str(tmp_path / "export")
    code, _, err = run_isl(["export", f"--model_dir={model_copy}", f"--export_dir={export_dir}",
                            "--statistics=median", "--nokeras_archive", "--all_heads"], capsys)
    assert code == 0, err
    assert calibration_file.read(export_dir).channels == calibration_file.read(model_copy).channels
    first_lines, medians = {}, {}
    for name, source in (("export", f"--saved_model={export_dir}"), ("model", f"--model_dir={model_copy}")):
        code, out, err = run_isl(["predict", source, f"--input_dir={well}", CHANNELS,
                                  f"--output_dir={tmp_path / name}", "--nopanels", "--noprogress", "--json"], capsys)
        assert code == 0, err
        (record,) = json.loads(out.strip().splitlines()[-1])["wells"]
        first_lines[name] = out.splitlines()[0]
        medians[name] = images.read_image(os.path.join(record["well_dir"], record["files"]["MAP2_CONFOCAL"]["median"]))
    assert first_lines["export"] == "Calibrated: the export applies its calibration inside the graph."
    assert first_lines["model"].startswith("Calibrated (calibration.json")
    # The same calibrated medians from the export's graph as from the model folder (float rounding apart),
    assert np.mean(medians["export"] == medians["model"]) > 0.99
    # and not the uncalibrated ones.
    code, out, _ = run_isl(["predict", f"--model_dir={model_copy}", f"--input_dir={well}", CHANNELS, "--json",
                            f"--output_dir={tmp_path / 'raw'}", "--nopanels", "--noprogress", "--nocalibration"],
                           capsys)
    (record,) = json.loads(out.strip().splitlines()[-1])["wells"]
    raw = images.read_image(os.path.join(record["well_dir"], record["files"]["MAP2_CONFOCAL"]["median"]))
    assert np.mean(raw != medians["model"]) > 0.05
