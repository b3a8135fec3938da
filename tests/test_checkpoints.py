"""The released Condition B sample checkpoint works out of the box (issue 8).

`isl predict --model_dir=checkpoints/condition_b_sample` on a crop of the
real sample's validation region (rows 768:1024, never trained on) writes
median images of DAPI, MAP2, NFH and NEURITE whose Pearson r against the
real stains clears a floor a little below the figures in
checkpoints/condition_b_sample/README.md.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import REPOSITORY_ROOT

CHECKPOINT = REPOSITORY_ROOT / "checkpoints" / "condition_b_sample"
# Rows 768:1024 are the held-out region (README there); a 256 x 256 crop of it.
CROP = (slice(768, 1024), slice(256, 512))
# Floors for this crop (reflected borders, less context than the whole well): measured
# 0.720 / 0.694 / 0.575 / 0.649 with the shipped weights.
MINIMUM_PEARSON = {"DAPI_CONFOCAL": 0.6, "MAP2_CONFOCAL": 0.6, "NFH_CONFOCAL": 0.45, "NEURITE_CONFOCAL": 0.55}


def _crop_well(sample_dir, output_dir, crop=CROP) -> dict[str, np.ndarray]:
    from isl.io import images

    os.makedirs(output_dir)
    truth = {}
    for name in sorted(os.listdir(sample_dir)):
        if not name.endswith(".png"):
            continue
        plane = images.read_image(os.path.join(sample_dir, name))[crop]
        images.write_image(os.path.join(output_dir, name), np.ascontiguousarray(plane))
        if "MAXPROJECT" in name:
            channel = name.split("channel-")[1].split(",")[0]
            truth[channel] = plane.astype(np.float64) / 65535.0
    truth["NEURITE_CONFOCAL"] = (truth["MAP2_CONFOCAL"] + truth["NFH_CONFOCAL"]) / 2
    return truth


def test_checkpoint_is_documented_and_small():
    if not CHECKPOINT.is_dir():
        pytest.skip("checkpoints/condition_b_sample is not present")
    assert sorted(os.listdir(CHECKPOINT)) == ["README.md", "calibration.json", "config.json", "model.weights.h5"]
    from isl.io import calibration_file

    calibration = calibration_file.read(str(CHECKPOINT))  # isl calibrate on the validation rows 768:896.
    assert calibration.route == "heads" and calibration.fitted_on["region"] == "768:896,0:768"
    assert calibration.marginal_source["region"] == "0:768,0:768"
    assert os.path.getsize(CHECKPOINT / "model.weights.h5") < 40 * 2**20
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["channels"]["target_channels"] == ["DAPI_CONFOCAL", "NFH_CONFOCAL", "MAP2_CONFOCAL"]
    readme = (CHECKPOINT / "README.md").read_text()
    assert "CC BY 4.0" in readme and "768:1024" in readme


def test_checkpoint_predicts_the_held_out_region(sample_dir, tmp_path, capsys):
    if not CHECKPOINT.is_dir():
        pytest.skip("checkpoints/condition_b_sample is not present")
    from isl.cli import main
    from isl.io import images

    well = tmp_path / "well"
    truth = _crop_well(sample_dir, str(well))
    output = tmp_path / "predictions"
    code = main.run_command(["predict", f"--model_dir={CHECKPOINT}", f"--input_dir={well}", f"--output_dir={output}",
                             "--nopanels", "--nosave_calibration", "--noprogress", "--json"])
    assert code == 0, capsys.readouterr().err
    [well_dir] = [entry.path for entry in os.scandir(output) if entry.is_dir()]
    pearson = {}
    for channel in MINIMUM_PEARSON:
        [name] = [n for n in os.listdir(well_dir) if f"channel-{channel}" in n and "MEDIAN" in n.upper()]
        predicted = images.read_image(os.path.join(well_dir, name)).astype(np.float64)
        assert predicted.shape == truth[channel].shape == (256, 256)
        pearson[channel] = float(np.corrcoef(predicted.ravel(), truth[channel].ravel())[0, 1])
    print(pearson)
    assert all(pearson[channel] >= minimum for channel, minimum in MINIMUM_PEARSON.items()), pearson


@pytest.mark.slow
def test_a_readout_of_the_checkpoint_beats_its_heads_on_nuclei_and_dendrites(sample_dir, tmp_path, capsys):
    """`isl readout` at full size: fitted on rows 0:768 (about 2 minutes), scored on the held-out crop."""
    if not CHECKPOINT.is_dir():
        pytest.skip("checkpoints/condition_b_sample is not present")
    from isl.cli import main

    train, held_out = tmp_path / "train", tmp_path / "held_out"
    _crop_well(sample_dir, str(train), (slice(0, 768), slice(None)))
    _crop_well(sample_dir, str(held_out))
    code = main.run_command(["readout", f"--model_dir={CHECKPOINT}", f"--train_dir={train}",
                             f"--eval_dir={held_out}", f"--output_dir={tmp_path / 'readout'}", "--noprogress",
                             "--json"])
    output = capsys.readouterr()
    assert code == 0, output.err
    scores = json.loads(output.out.strip().splitlines()[-1])["eval_pearson_r"][str(held_out)]
    print(scores)
    # The checkpoint's own heads on this crop: 0.720 / 0.694 / 0.575 (MINIMUM_PEARSON's comment); the read-out
    # measured 0.763 / 0.733 / 0.559 (on the whole held-out rows it is ahead on NFH too: BUILD_NOTES.md).
    assert scores["DAPI_CONFOCAL"] > 0.74 and scores["MAP2_CONFOCAL"] > 0.71 and scores["NFH_CONFOCAL"] > 0.53, scores
