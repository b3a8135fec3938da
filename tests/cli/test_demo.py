"""Tests for `isl demo` (small sizes)."""

from __future__ import annotations

import json
import os

import pytest

from isl.cli import main


def test_demo_runs_every_step_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"
    code = main.run_command(["demo", f"--output_dir={output}", "--num_wells=2", "--image_size=120",
                             "--batches=2", "--train_steps=6", "--noprogress", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["convert"]["num_examples"] == {"train": 1, "eval": 1, "val": 0}
    assert summary["pipeline"]["input_shape"] == [16, 42, 42, 52]
    assert summary["pipeline"]["label_shape"] == [16, 8, 8, 35, 2]
    assert summary["pipeline"]["patches_per_second"] > 0
    # It describes what the data has (13 slices, 3 stains and their sum), not only the model's 35 heads.
    assert summary["pipeline"]["labelled_targets"] == ["DAPI_CONFOCAL", "NFH_CONFOCAL", "MAP2_CONFOCAL",
                                                       "NEURITE_CONFOCAL"]
    described = "\n".join(lines)
    assert "This data has 13 phase-contrast z slices and labels DAPI_CONFOCAL, NFH_CONFOCAL" in described
    assert "the 5 channels this data does not label are masked out" in described
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


def test_labelled_targets_are_the_channels_whose_mask_is_set_somewhere():
    import numpy as np

    from isl import demo
    from isl import presets

    channels = presets.get_preset("tiny").channels
    labels = np.zeros((2, 8, 8, channels.num_heads, 2), np.float32)
    labels[1, 3, 4, channels.num_input_heads + 1, 1] = 1.0  # One labelled pixel of the second target.
    assert demo.labelled_targets(labels, channels) == [channels.output_target_channels[1]]


def test_the_demo_trains_from_a_deterministic_pipeline(monkeypatch):
    """Issue 27 point 10 (cheap): the demo's dataset function fixes the element order whatever the trainer asks."""
    from isl import demo
    from isl.data import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "build_dataset", lambda data_dir, config, **options: calls.append(options))
    demo.deterministic_dataset("records", None, split="train", seed=7, deterministic=False)
    assert calls == [{"split": "train", "seed": 7, "deterministic": True}]


@pytest.mark.slow
def test_the_demo_trains_reproducibly_from_its_seed(tmp_path):
    """Issue 27 point 10: two runs with the same --seed train the same weights (the pipeline is deterministic)."""
    import numpy as np

    from isl import demo
    from isl.model import saving

    weights, losses = [], []
    for name in ("first", "second"):
        results = demo.run_demo(str(tmp_path / name), steps=["generate", "convert", "train"], num_wells=2,
                                image_size=120, num_batches=1, train_steps=3, show_progress=False,
                                log=lambda line: None)
        losses.append(results["train"]["loss"])
        model, _ = saving.load_model_dir(str(tmp_path / name / "model"), input_size=None)
        weights.append([np.asarray(value) for value in model.get_weights()])
    assert losses[0] == losses[1]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
