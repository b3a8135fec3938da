"""Tests for batch-norm recalibration (`isl recalibrate`, an option beyond the paper)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from isl import presets
from isl.model import builder
from isl.train import recalibrate


def test_recalibrated_inference_matches_training_mode_on_the_calibration_batch():
    config = presets.get_preset("tiny")
    model = builder.build_model(config, input_size=42)
    rng = np.random.default_rng(0)
    inputs = rng.random((4, 42, 42, config.channels.num_input_features), dtype=np.float32) * 3.0 + 1.0
    training_logits = np.asarray(model(inputs, training=True))
    # Fresh moving statistics (mean 0, variance 1) are far from these inputs' statistics.
    gap_before = np.abs(np.asarray(model(inputs, training=False)) - training_logits).max()
    assert gap_before > 0.1
    layers = recalibrate.batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    figures = recalibrate.recalibrate_batch_norm(model, [(inputs, None)] * 3, num_batches=3)
    assert figures["batches"] == 3 and figures["layers"] == len(layers) > 10
    assert figures["mean_shift"] > 0.0
    # Equal up to float32 round-off accumulated over the ~20 layers.
    gap_after = np.abs(np.asarray(model(inputs, training=False)) - training_logits).max()
    assert gap_after < 0.05 * gap_before
    assert [layer.momentum for layer in layers] == momenta


def test_recalibration_rejects_empty_data():
    model = builder.build_model(presets.get_preset("tiny"), input_size=42)
    before = [np.asarray(layer.moving_mean).copy() for layer in recalibrate.batch_norm_layers(model)]
    with pytest.raises(ValueError, match="no batch"):
        recalibrate.recalibrate_batch_norm(model, [], num_batches=2)
    after = [np.asarray(layer.moving_mean) for layer in recalibrate.batch_norm_layers(model)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_isl_recalibrate_writes_a_new_model_dir(trained_model_dir, records_dir, tmp_path, capsys):
    from isl.cli import main
    from isl.model import saving

    model_dir = trained_model_dir[0]
    output = tmp_path / "recalibrated"
    code = main.run_command(["recalibrate", f"--model_dir={model_dir}", f"--data_dir={records_dir}",
                             "--batches=2", f"--output_dir={output}", "--noprogress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["batches"] == 2
    assert sorted(os.listdir(output)) == ["config.json", "model.weights.h5", "recalibration.json",
                                          "trained_channels.json"]
    original, _ = saving.load_model_dir(model_dir)
    recalibrated, _ = saving.load_model_dir(str(output))
    original_weights = {w.path: np.asarray(w) for w in original.weights}
    changed = [w.path for w in recalibrated.weights if not np.array_equal(np.asarray(w), original_weights[w.path])]
    assert changed and all("moving" in path for path in changed)
    # Bad input: exit 2, a message naming the problem.
    assert main.run_command(["recalibrate", f"--model_dir={tmp_path / 'missing'}", f"--data_dir={records_dir}"]) == 2
    assert "missing" in capsys.readouterr().err
