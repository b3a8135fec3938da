"""`trained_channels.json`: predict writes only the heads that saw labels.

Untrained heads keep their initial weights (isl_reference.md §4).
"""

from __future__ import annotations

import json
import os

from isl.infer import well as well_lib
from isl.infer.kinds import registry
from isl.io.model_dir import ModelDir
from isl.model import saving


def test_training_records_the_labelled_channels_and_predict_defaults_to_them(trained_model_dir, tmp_path):
    model_dir = trained_model_dir[0]
    recorded = json.loads(open(ModelDir(model_dir).trained_channels).read())
    # The tiny preset has the paper's 9 target heads; the synthetic wells label DAPI, MAP2 and NFH (+ NEURITE).
    assert recorded["target_channels"] == ["DAPI_CONFOCAL", "NFH_CONFOCAL", "MAP2_CONFOCAL", "NEURITE_CONFOCAL"]
    predictor = registry.load_predictor(model_dir=model_dir)
    assert len(predictor.config.channels.output_target_channels) == 9
    assert well_lib.choose_channels(predictor.config, None, predictor.trained_channels) == tuple(
        recorded["target_channels"])
    # Asking explicitly still gives an untrained head, and a model without the file gives every head.
    assert well_lib.choose_channels(predictor.config, ["DAPI_WIDEFIELD"], predictor.trained_channels) == (
        "DAPI_WIDEFIELD",)
    assert len(well_lib.choose_channels(predictor.config, None, None)) == 9
    # The record survives a second training run on other data (union).
    other = tmp_path / "model"
    os.makedirs(other)
    with open(ModelDir(other).trained_channels, "w") as file:
        json.dump({"target_channels": ["CELLMASK_CONFOCAL"]}, file)
    union = saving.write_trained_channels(str(other), predictor.config.channels, {"DAPI_CONFOCAL"}, "data")
    assert union == ("DAPI_CONFOCAL", "CELLMASK_CONFOCAL")
