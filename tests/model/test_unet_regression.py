"""The fnet/CARE-style U-Net regression baseline: geometry, model, loss, training and prediction."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from isl import config as config_lib
from isl import errors
from isl import presets
from isl.model import builder
from isl.model import geometry
from isl.model import unet_regression


def _config(*overrides: str) -> config_lib.ExperimentConfig:
    return presets.resolve_config("condition_b", recipe="unet_regression", overrides=list(overrides))


def test_recipe_builds_the_described_baseline():
    config = _config()
    geo = geometry.geometry(config.model)
    assert (geo.input_size, geo.output_size, geo.border, geo.phase) == (128, 128, 0, 16)
    model = builder.build_model(config, 128)
    assert model.output_shape == (None, 128, 128, 4)  # DAPI, NFH, MAP2, NEURITE
    assert 1.9e6 < model.count_params() < 2.0e6


def test_output_size_must_pool_exactly():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*unet_levels = 16"):
        geometry.geometry(_config("model.output_size=120").model)


def test_loss_is_the_masked_mse_of_standardized_targets():
    loss = unet_regression.RegressionLoss(1, means=(0.5, 0.2), stds=(0.25, 0.1))
    labels = np.zeros((1, 2, 1, 3, 2), np.float32)
    labels[..., 1:, 1] = 1.0
    labels[0, :, 0, 1, 0] = [0.75, 0.5]  # standardized: 1, 0
    labels[0, :, 0, 2, 0] = [0.3, 0.2]  # standardized: 1, 0
    labels[0, 1, 0, 2, 1] = 0.0  # one unlabelled pixel
    predictions = np.zeros((1, 2, 1, 2), np.float32)
    # Squared errors over the 3 labelled pixels: 1, 0, 1.
    assert float(loss(labels, predictions)) == pytest.approx(2.0 / 3.0, rel=1e-6)


def test_foreground_weight_weighs_pixels_above_the_channel_mean():
    # train.regression_foreground_weight a: each labelled pixel weighs 1 + a * max(z, 0), the loss is the weighted
    # mean. Targets z = 2 (foreground) and z = -1 (background), prediction 0: squared errors 4 and 1.
    labels = np.zeros((1, 2, 1, 2, 2), np.float32)
    labels[..., 1, 1] = 1.0
    labels[0, :, 0, 1, 0] = [0.5 + 2 * 0.25, 0.5 - 0.25]
    predictions = np.zeros((1, 2, 1, 1), np.float32)
    plain = unet_regression.RegressionLoss(1, means=(0.5,), stds=(0.25,))
    weighted = unet_regression.RegressionLoss(1, means=(0.5,), stds=(0.25,), foreground_weight=1.5)
    assert float(plain(labels, predictions)) == pytest.approx(2.5, rel=1e-6)
    assert float(weighted(labels, predictions)) == pytest.approx((4.0 * 4.0 + 1.0 * 1.0) / 5.0, rel=1e-6)
    # The training loss follows the config; a negative weight is refused.
    from isl.train import step

    statistics = ("model.regression_target_mean=[0.5,0.5,0.5,0.5]", "model.regression_target_std=[0.25,0.25,0.25,0.25]")
    assert step.training_loss(_config("train.regression_foreground_weight=1.5", *statistics)).foreground_weight == 1.5
    assert step.training_loss(_config(*statistics)).foreground_weight == 0.0
    with pytest.raises(ValueError, match="regression_foreground_weight must be >= 0"):
        _config("train.regression_foreground_weight=-1")


def test_trains_predicts_and_is_written_like_the_paper_model(tmp_path, capsys, monkeypatch):
    from isl.cli import main
    from isl.train import trainer
    from tests.train.conftest import write_records

    config = _config(
        "model.output_size=32", "model.unet_filters=4", "model.unet_levels=2", "train.batch_size=4",
        "train.eval_every_steps=4", "train.recalibrate_batches=2", "data.crop_size=64", "data.patch_stride=32",
        "train.checkpoint_every_minutes=0",
    )
    # Three-way split (A1, A2 train, A3 validation, A4 evaluation): the recipe's keep_best chooses on validation.
    records = write_records(str(tmp_path), 4, 0, config.channels, eval_every=4, val_wells=["A3"])
    model_dir = str(tmp_path / "model")
    result = trainer.train(config, records, model_dir, 8, show_progress=False, log=lambda line: None)
    saved = config_lib.load_config(os.path.join(model_dir, "config.json"))
    assert len(saved.model.regression_target_mean) == 4 and all(std > 0 for std in saved.model.regression_target_std)
    assert "pearson_median_DAPI_CONFOCAL" in result.pearson and result.best_step in (4, 8)
    well_dir = sorted(glob.glob(str(tmp_path / "wells" / "*")))[-1]
    # Through the command line: its summary line reads prediction.json's keys for every architecture.
    code = main.run_command(["predict", f"--model_dir={model_dir}", f"--input_dir={well_dir}",
                             f"--output_dir={tmp_path / 'predictions'}", "--noprogress", "--json"])
    output = capsys.readouterr().out
    assert code == 0 and "160 x 160 px" in output
    (summary,) = json.loads(output.strip().splitlines()[-1])["wells"]
    assert set(summary["files"]["DAPI_CONFOCAL"]) == {"median", "mean"}
    written = json.load(open(os.path.join(summary["well_dir"], "prediction.json")))
    assert written["architecture"] == "unet_regression" and written["image_shape"] == [160, 160]
    assert written["geometry"] is None and written["region"]["height"] == 160  # No border: interior does not apply.
    assert written["ignored_files"] == [] and written["exact"] is True
    import imageio.v3 as imageio

    image = imageio.imread(os.path.join(summary["well_dir"], summary["files"]["MAP2_CONFOCAL"]["median"]))
    assert image.shape == (160, 160) and image.dtype == np.uint16 and image.std() > 0
    # Above its pass budget the U-Net runs band by band in tiles with context on the pooling grid (bounded memory);
    # the context exceeds the U-Net's reach, so the pixels are the whole pass's (exact, to float rounding).
    from isl.infer import regression

    monkeypatch.setattr(regression, "PASS_BYTES", 1.0)
    monkeypatch.setattr(regression, "MIN_TILE", 64)
    code = main.run_command(["predict", f"--model_dir={model_dir}", f"--input_dir={well_dir}",
                             f"--output_dir={tmp_path / 'tiled'}", "--noprogress", "--json"])
    output = capsys.readouterr().out
    assert code == 0 and "(9 tile runs)" in output and "Expected peak memory: " in output
    assert "U-Net tiles of 54 x 54 px" in output  # Three tiles a side of 64 at most, balanced.
    (tiled_summary,) = json.loads(output.strip().splitlines()[-1])["wells"]
    assert json.load(open(os.path.join(tiled_summary["well_dir"], "prediction.json")))["exact"] is True
    tiled = imageio.imread(os.path.join(tiled_summary["well_dir"], tiled_summary["files"]["MAP2_CONFOCAL"]["median"]))
    assert tiled.shape == image.shape
    assert np.abs(tiled.astype(np.int64) - image.astype(np.int64)).max() <= 1  # 16-bit rounding of float rounding.


def test_prediction_without_target_statistics_is_refused():
    from isl.infer import regression

    config = _config("model.output_size=32", "model.unet_filters=4", "model.unet_levels=2")
    model = builder.build_model(config, None)
    with pytest.raises(errors.InputError, match="regression_target_mean"):
        regression.predict_image(model, np.zeros((13, 40, 40), np.float32), config)


def test_the_savedmodel_export_refuses_the_regression_baseline_and_points_to_bioimageio(tmp_path):
    from isl.infer.kinds import registry
    from isl.model import saving

    config = _config("model.output_size=32", "model.unet_filters=4", "model.unet_levels=2",
                     "model.regression_target_mean=[0.1,0.1,0.1,0.1]", "model.regression_target_std=[1,1,1,1]")
    model_dir = str(tmp_path / "model")
    saving.save_model_dir(builder.build_model(config, None), config, model_dir)
    with pytest.raises(errors.InputError, match="no SavedModel export.*--format=bioimageio"):
        registry.export_savedmodel(model_dir, str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()


def test_the_unet_recipe_trains_on_a_512_px_image():
    # A user's 512 x 512 field must fit the recipe's crop (the U-Net has no border, so no padding helps).
    from isl import presets
    from isl.data import parser

    config = presets.resolve_config("condition_b", recipe="unet_regression")
    layout = parser.patch_layout(config)
    assert layout.pad == 0 and layout.crop_size <= 512
    assert max(offset for offsets in layout.patch_offsets for offset in offsets) + layout.patch_size <= layout.crop_size
