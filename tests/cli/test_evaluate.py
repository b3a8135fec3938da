"""`isl evaluate` on `isl predict` outputs: metrics files, known answers, errors."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from isl.cli import main
from isl.io import images
from tests.data import wellmaker


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("evaluate")
    model_dir = tiny_model_dir
    well_dir = str(root / "well")
    _, targets = wellmaker.random_well(well_dir, height=40, width=36)
    output_dir = str(root / "predictions")
    code = main.run_command(
        ["predict", f"--model_dir={model_dir}", f"--input_dir={well_dir}", f"--output_dir={output_dir}",
         "--channels=DAPI_CONFOCAL,MAP2_CONFOCAL", "--nopanels", "--noprogress"]
    )
    assert code == 0
    return well_dir, output_dir, targets


def test_evaluate_writes_metrics_and_a_report_with_calibration(predicted, tmp_path, capsys):
    well_dir, output_dir, _ = predicted
    report_dir = str(tmp_path / "report")
    code = main.run_command(
        ["evaluate", f"--predictions_dir={output_dir}", f"--truth_dir={well_dir}", f"--output_dir={report_dir}",
         "--json"]
    )
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert {row["channel"] for row in summary["rows"]} == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    for row in summary["rows"]:
        assert -1 <= row["pearson_r"] <= 1
        assert 0 <= row["coverage_50"] <= row["coverage_90"] <= 1
        assert row["nll_nats"] > 0
    assert "COND_1" in summary["table_pearson_r"]
    assert "pearson_r by condition" in out
    rows = list(csv.DictReader(open(os.path.join(report_dir, "metrics.csv"))))
    assert len(rows) == 2 and rows[0]["condition"] == "COND_1"
    assert os.path.getsize(summary["figures"][0]) > 1000


def test_a_perfect_median_scores_pearson_one_and_zero_error(predicted, tmp_path, capsys):
    well_dir, output_dir, targets = predicted
    copy = str(tmp_path / "copy")
    shutil.copytree(output_dir, copy)
    (well_folder,) = [os.path.join(copy, name) for name in os.listdir(copy)]
    record = json.load(open(os.path.join(well_folder, "prediction.json")))
    images.write_image(os.path.join(well_folder, record["files"]["DAPI_CONFOCAL"]["median"]), targets["DAPI_CONFOCAL"])
    code = main.run_command(["evaluate", f"--predictions_dir={copy}", f"--truth_dir={well_dir}", "--region=8:30,4:30",
                             "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    (dapi,) = [row for row in summary["rows"] if row["channel"] == "DAPI_CONFOCAL"]
    assert dapi["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    assert dapi["mae"] == 0 and dapi["num_pixels"] == 22 * 26


def test_evaluate_without_predictions_or_with_a_bad_region_exits_2(predicted, tmp_path, capsys):
    well_dir, output_dir, _ = predicted
    assert main.run_command(["evaluate", f"--predictions_dir={tmp_path}", f"--truth_dir={well_dir}"]) == 2
    assert "prediction.json" in capsys.readouterr().err
    assert main.run_command(["evaluate", f"--predictions_dir={output_dir}", f"--truth_dir={well_dir}",
                             "--region=top"]) == 2
    assert "--region" in capsys.readouterr().err


def test_evaluate_scores_the_chosen_statistic_and_names_a_missing_one(predicted, tmp_path, capsys):
    well_dir, output_dir, targets = predicted
    copy = str(tmp_path / "copy")
    shutil.copytree(output_dir, copy)
    (well_folder,) = [os.path.join(copy, name) for name in os.listdir(copy)]
    record = json.load(open(os.path.join(well_folder, "prediction.json")))
    # A perfect "mean" beside the model's median: only --statistic=mean scores 1.
    mean_name = record["files"]["DAPI_CONFOCAL"]["median"].replace("MEDIAN", "MEAN")
    images.write_image(os.path.join(well_folder, mean_name), targets["DAPI_CONFOCAL"])
    record["files"] = {"DAPI_CONFOCAL": {**record["files"]["DAPI_CONFOCAL"], "mean": mean_name}}
    json.dump(record, open(os.path.join(well_folder, "prediction.json"), "w"))
    code = main.run_command(["evaluate", f"--predictions_dir={copy}", f"--truth_dir={well_dir}", "--statistic=mean",
                             "--region=8:30,4:30", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    (dapi,) = summary["rows"]
    assert dapi["statistic"] == "mean" and dapi["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    assert main.run_command(["evaluate", f"--predictions_dir={copy}", f"--truth_dir={well_dir}",
                             "--statistic=q10"]) == 2
    assert "no 'q10' prediction for DAPI_CONFOCAL" in capsys.readouterr().err
