"""The `unet_distribution` recipe: the regression U-Net's backbone and schedule under the paper's 256-bin heads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from isl import presets
from isl.model import builder
from isl.model import geometry
from isl.model import unet as unet_lib
from tests.cli.conftest import run_isl
from tests.data import wellmaker

CHANNELS = "--channels=DAPI_CONFOCAL,MAP2_CONFOCAL"
# A 2-level, 4-filter U-Net of the recipe (same output and context) so the commands run in seconds.
SMALL = ["model.unet_filters=4", "model.unet_levels=2", "data.patch_stride=32"]


def test_recipe_is_the_regression_unet_with_the_papers_heads_and_loss():
    distribution = presets.RECIPES["unet_distribution"]
    regression = presets.RECIPES["unet_regression"]
    # Same backbone, batch, crops and schedule; only the architecture and the output geometry differ.
    differing = {key for key in regression.keys() | distribution.keys()
                 if regression.get(key) != distribution.get(key)}
    assert differing == {"model.architecture", "model.output_size", "model.unet_context"}
    config = presets.resolve_config("condition_b", recipe="unet_distribution")
    assert config.recipe == "unet_distribution" and config.model.architecture == "unet"
    # The U-Net works on the regression recipe's 128-px crop: output + 2 x context, a multiple of 2**levels.
    crop = unet_lib.check_unet(config.model, config.model.output_size, geometry.geometry(config.model).border)
    assert crop == regression["model.output_size"] == 128 and crop % 2**config.model.unet_levels == 0
    model = builder.build_model(config)
    geo = geometry.geometry(config.model)
    assert (geo.input_size, geo.output_size) == (24 + 2 * 121, 24)
    assert model.output_shape == (None, None, None, config.channels.num_heads, 256)
    # The regression U-Net's 1.95 M weights plus the 30 heads (a 16-feature embedding each).
    assert 2.1e6 < model.count_params() < 2.3e6
    # The faithful default is untouched.
    assert presets.resolve_config("condition_b").model.architecture == "concordance"


@pytest.mark.slow  # about a minute on an idle 2-core machine (150 s under load 10)
def test_the_recipe_trains_with_keep_best_on_validation(tmp_path):
    from isl.train import trainer
    from tests.train.conftest import write_records

    config = presets.resolve_config("condition_b", recipe="unet_distribution", overrides=SMALL + [
        "train.batch_size=2", "train.eval_every_steps=2", "train.eval_batches=1", "train.recalibrate_batches=1",
        "train.eval_recalibrate_batches=1", "train.checkpoint_every_minutes=0"])
    records = write_records(str(tmp_path), 4, 0, config.channels, eval_every=4, val_wells=["A3"])
    lines: list[str] = []
    result = trainer.train(config, records, str(tmp_path / "model"), 4, show_progress=False, log=lines.append)
    assert result.best_step in (2, 4) and "pearson_median_DAPI_CONFOCAL" in result.pearson
    assert any("(val split)" in line for line in lines)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained small model of the recipe, saved as `isl train` writes it."""
    from isl.model import saving

    directory = str(tmp_path_factory.mktemp("unet_distribution") / "model")
    config = presets.resolve_config("condition_b", recipe="unet_distribution", overrides=SMALL)
    saving.save_model_dir(builder.build_model(config), config, directory)
    return directory


def test_predict_calibrate_evaluate_and_export_take_the_recipes_model(model_dir, tmp_path, capsys):
    well = str(tmp_path / "well")
    wellmaker.random_well(well, height=64, width=48, seed=5)
    code, out, err = run_isl(["calibrate", f"--model_dir={model_dir}", f"--data_dir={well}", "--region=32:64,0:48",
                              "--train_region=0:32,0:48", "--min_pixels=500", CHANNELS], capsys)
    assert code == 0, err
    assert "temperature" in out
    predictions = str(tmp_path / "predictions")
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}", CHANNELS,
                              f"--output_dir={predictions}", "--nopanels", "--noprogress", "--json"], capsys)
    assert code == 0, err
    (record,) = json.loads(out.strip().splitlines()[-1])["wells"]
    written = json.load(open(os.path.join(record["well_dir"], "prediction.json")))
    assert written["architecture"] == "unet" and written["image_shape"] == [64, 48]
    code, out, err = run_isl(["evaluate", f"--predictions_dir={predictions}", f"--truth_dir={well}",
                              "--region=32:64,0:48", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert {row["channel"] for row in rows} == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    assert all(row["calibrated"] is True and np.isfinite(row["crps"]) for row in rows)
    export_dir = str(tmp_path / "export")
    code, _, err = run_isl(["export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                            "--statistics=median", "--nokeras_archive"], capsys)
    assert code == 0, err
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
