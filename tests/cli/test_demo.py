"""Tests for `isl demo` (small sizes)."""

from __future__ import annotations

import json
import os

from isl.cli import main


def test_demo_runs_every_step_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"
    code = main.run_command(["demo", f"--output_dir={output}", "--num_wells=2", "--image_size=120",
                             "--batches=2", "--train_steps=6", "--noprogress", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["convert"]["num_examples"] == {"train": 1, "eval": 1}
    assert summary["pipeline"]["input_shape"] == [16, 42, 42, 52]
    assert summary["pipeline"]["label_shape"] == [16, 8, 8, 35, 2]
    assert summary["pipeline"]["patches_per_second"] > 0
    assert os.path.isfile(output / "records" / "dataset.json")
    assert len(os.listdir(output / "raw" / "well-A1")) == 16
    assert any(str(output) in line for line in lines[:-1])
    # Training, prediction of the held-out well and its evaluation.
    assert summary["train"]["final_step"] == 6
    assert 0.0 < summary["train"]["loss"] < 2.0
    assert os.path.isfile(output / "model" / "model.weights.h5")
    assert len(summary["predict"]["well_dirs"]) == 1
    predicted = os.listdir(summary["predict"]["well_dirs"][0])
    assert any("kind-PREDICTED" in name and "statistic-MEDIAN" in name for name in predicted)
    assert os.path.isfile(summary["evaluate"]["metrics_json"])
    assert set(summary["evaluate"]["pearson_r"]) >= {"DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL"}
