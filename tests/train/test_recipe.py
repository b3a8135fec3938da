"""The small-compute recipe: its parts as options, whole-image Pearson during training, keep-best, recalibration."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl import presets
from isl.data import augment
from isl.train import checkpoints as checkpoints_lib
from isl.train import dense_eval
from isl.train import evaluation as evaluation_lib
from isl.train import schedule as schedule_lib
from isl.train import trainer
from tests.train.conftest import small_config


def test_cpu_recipe_sets_only_named_options_and_leaves_the_faithful_default_alone():
    faithful = presets.resolve_config("condition_b")
    recipe = presets.resolve_config("condition_b", recipe="cpu")
    assert faithful.recipe == "" and recipe.recipe == "cpu"
    assert faithful.train.lr_schedule == "constant" and faithful.model.output_size == 8
    assert not faithful.data.rotate_per_example and faithful.train.recalibrate_batches == 0
    assert recipe.model.output_size == 120 and recipe.train.lr_schedule == "cosine"
    assert recipe.data.rotate_per_example and recipe.train.keep_best
    # The channels (vocabulary) come from the preset, untouched.
    assert recipe.channels == faithful.channels
    # --set still wins over the recipe.
    overridden = presets.resolve_config("condition_b", overrides=["train.batch_size=2"], recipe="cpu")
    assert overridden.train.batch_size == 2


def test_unknown_recipe_and_invalid_output_size_name_the_option():
    with pytest.raises(errors.InputError, match="Unknown recipe 'gpu'.*cpu"):
        presets.resolve_config("paper", recipe="gpu")
    with pytest.raises(errors.InputError, match="train.lr_schedule"):
        presets.resolve_config("paper", overrides=["train.lr_schedule=linear"])
    with pytest.raises(errors.InputError, match="keep_best needs train.eval_pearson"):
        presets.resolve_config("paper", overrides=["train.eval_pearson=false", "train.keep_best=true"])


def test_train_rejects_an_output_size_off_the_grid_before_training(tmp_path):
    from isl.cli import main

    code = main.run_command(["train", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'model'}",
                      "--preset=tiny", "--steps=1", "--set", "model.output_size=30"])
    assert code == 2
    assert not (tmp_path / "model").exists()


def test_cosine_schedule_warms_up_then_decays_to_the_final_fraction():
    train_config = config_lib.TrainConfig(
        learning_rate=1e-3, lr_schedule="cosine", warmup_steps=10, final_learning_rate_fraction=0.1
    )
    schedule = schedule_lib.learning_rate_schedule(train_config, total_steps=110)
    rates = [float(schedule(step)) for step in (0, 5, 10, 60, 110, 200)]
    assert rates[0] == pytest.approx(0.0, abs=1e-9)
    assert rates[1] == pytest.approx(5e-4, rel=1e-3)
    assert rates[2] == pytest.approx(1e-3, rel=1e-3)
    assert rates[3] == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-3)  # Half way down the cosine.
    assert rates[4] == pytest.approx(1e-4, rel=1e-3)
    assert rates[5] == pytest.approx(1e-4, rel=1e-3)
    assert schedule_lib.learning_rate_schedule(config_lib.TrainConfig(learning_rate=3e-4)) == 3e-4


def test_rotate_examples_rotates_each_example_by_its_own_k():
    batch = np.arange(4 * 5 * 5 * 2, dtype=np.float32).reshape(4, 5, 5, 2)
    ks = np.array([0, 1, 2, 3], np.int32)
    (rotated,) = augment.rotate_examples([tf.constant(batch)], tf.constant(ks))
    for index, k in enumerate(ks):
        np.testing.assert_array_equal(rotated[index].numpy(), np.rot90(batch[index], k, axes=(0, 1)))
    drawn = augment.random_rotations(tf.constant([3, 4], tf.int64), tf.constant(64)).numpy()
    assert set(drawn.tolist()) == {0, 1, 2, 3}


def test_pearson_of_predictions_pools_pixels_and_skips_absent_channels():
    truth = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    image = dense_eval.SplitImage("w", np.zeros((1, 4, 4), np.float32), {"A": (truth, np.ones((4, 4), bool))})
    prediction = {"median": np.stack([truth * 2 + 1, truth[::-1]], axis=-1), "mean": np.stack([-truth, truth], -1)}
    figures = dense_eval.pearson_of_predictions([image], [prediction], ("A", "B"))
    assert figures["pearson_median_A"] == pytest.approx(1.0)
    assert figures["pearson_mean_A"] == pytest.approx(-1.0)
    assert "pearson_median_B" not in figures
    assert figures["pearson_median"] == pytest.approx(1.0)


def test_training_logs_whole_image_pearson_keeps_the_best_and_recalibrates(tmp_path, val_records_dir):
    config = small_config(
        "train.lr_schedule=cosine", "train.warmup_steps=2", "train.keep_best=true",
        "train.recalibrate_batches=2", "train.eval_recalibrate_batches=2", "data.rotate_per_example=true",
    )
    model_dir = str(tmp_path / "model")
    lines: list[str] = []
    result = trainer.train(config, val_records_dir, model_dir, 10, show_progress=False, log=lines.append)
    with open(os.path.join(model_dir, "logs", "training.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [5, 10]
    assert {"val_pearson_median_DAPI_CONFOCAL", "val_pearson_mean_DAPI_CONFOCAL", "val_pearson_median"} <= set(rows[0])
    assert all(-1.0 <= float(row["val_pearson_mean_DAPI_CONFOCAL"]) <= 1.0 for row in rows)
    best = json.load(open(os.path.join(model_dir, "checkpoints", "best.json")))
    assert best["step"] in (5, 10) and result.best_step == best["step"]
    assert best["pearson_median"] == pytest.approx(max(float(row["val_pearson_median"]) for row in rows))
    assert result.recalibration is not None and result.recalibration["batches"] == 2
    assert any(line.startswith("Kept the weights of step") and "on the val split" in line for line in lines)
    # keep_best selected on the validation split (A3), never on the reported evaluation split (A4).
    assert result.pearson_split == "val"
    assert "train.keep_best selects on the validation split; the evaluation split is only reported." in lines
    assert any(line.startswith("Step 5: whole-image Pearson r (val split)") for line in lines)
    assert result.labelled_pixels_per_second > 0 and result.labelled_pixels_per_cpu_second > 0
    # The schedule's end is resolved to --steps and recorded.
    saved = config_lib.load_config(os.path.join(model_dir, "config.json"))
    assert saved.train.schedule_steps == 10
    # The training checkpoint holds the last step, not the kept weights.
    assert os.path.basename(checkpoints_lib.latest_checkpoint(model_dir)) == "ckpt-10"


def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path, records_dir):
    from isl.model import footprint

    config = presets.resolve_config("condition_b", recipe="cpu", overrides=["train.batch_size=64"])
    assert footprint.training_step_bytes(config) > 40e9
    assert 4 < footprint.largest_batch(config, 20e9) < 10
    with pytest.raises(errors.InputError, match=r"train.batch_size=64: .*largest per-device batch that fits is"):
        trainer.train(config, records_dir, str(tmp_path / "model"), 1, show_progress=False)
    assert not (tmp_path / "model").exists()


def test_footprint_matches_the_measurements_it_was_fitted_to():
    from isl.model import footprint

    def measured(output_size: int, batch: int) -> float:
        config = presets.resolve_config(
            "condition_b", overrides=[f"model.output_size={output_size}", "train.mixed_precision=bfloat16"]
        )
        return footprint.training_step_bytes(config, batch) / 1e9

    assert measured(8, 16) == pytest.approx(4.7, rel=0.15)
    assert measured(24, 16) == pytest.approx(6.2, rel=0.15)
    assert measured(120, 4) == pytest.approx(11.0, rel=0.15)
    # isl benchmark model --preset=condition_b --output_sizes=248 (GiB, the fused options).
    assert measured(248, 1) * 1e9 / 2**30 == pytest.approx(10.3, rel=0.15)

    def measured_float32(output_size: int, batch: int) -> float:
        config = presets.resolve_config("paper", overrides=[f"model.output_size={output_size}"])
        return footprint.training_step_bytes(config, batch) / 2**30

    # isl benchmark model --output_sizes=56,120 --precision=float32 (GiB).
    assert measured_float32(56, 11) == pytest.approx(18.9, rel=0.15)
    assert measured_float32(120, 3) == pytest.approx(16.2, rel=0.15)

    def measured_float32_condition_b(output_size: int, batch: int) -> float:
        config = presets.resolve_config(
            "condition_b", overrides=[f"model.output_size={output_size}", "train.mixed_precision="]
        )
        return footprint.training_step_bytes(config, batch) / 2**30

    # isl benchmark model --preset=condition_b --output_sizes=8,24,248 --precision=float32 (GiB).
    assert measured_float32_condition_b(8, 16) == pytest.approx(7.8, rel=0.15)
    assert measured_float32_condition_b(24, 13) == pytest.approx(10.1, rel=0.15)
    assert measured_float32_condition_b(248, 1) == pytest.approx(22.8, rel=0.15)


def test_keep_best_without_a_validation_split_keeps_the_last_weights_with_a_warning(tmp_path, records_dir):
    """The eval split is scored for monitoring only: keep_best must not choose weights on it."""
    config = small_config("train.keep_best=true")
    lines: list[str] = []
    callback = evaluation_lib.dense_pearson_callback(records_dir, config, str(tmp_path / "model"), lines.append)
    assert callback.split == "eval" and not callback.keep_best
    assert any(line.startswith("warning: train.keep_best needs a validation split") for line in lines)


def test_the_whole_image_pearson_scores_the_validation_split_when_there_is_one(tmp_path, val_records_dir):
    config = small_config("train.keep_best=true")
    callback = evaluation_lib.dense_pearson_callback(val_records_dir, config, str(tmp_path / "model"), lambda _: None)
    assert callback.split == "val" and callback.keep_best
    assert [image.name for image in callback.images] == [
        image.name for image in dense_eval.load_split_images(val_records_dir, config, split="val")]
    evaluation = {image.name for image in dense_eval.load_split_images(val_records_dir, config, split="eval")}
    assert len(callback.images) == 1 and callback.images[0].name not in evaluation
