"""`isl ensemble` and `isl predict --tta` end to end on tiny models: fit, predict, evaluate; bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from isl import presets
from isl.infer.kinds import ensemble as ensemble_kind
from isl.infer.kinds import registry
from isl.model import builder
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.data import wellmaker

CHANNELS = ["DAPI_CONFOCAL", "MAP2_CONFOCAL"]


@pytest.fixture(scope="module")
def well(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ensemble_well") / "well")
    wellmaker.random_well(directory, height=48, width=48, seed=5)
    return directory


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_model_dir):
    """Two tiny heads models with different weights (the shared one and a freshly initialised one)."""
    import keras

    root = tmp_path_factory.mktemp("members")
    first = str(root / "first")
    shutil.copytree(tiny_model_dir, first)
    config = presets.get_preset("tiny")
    keras.utils.set_random_seed(7)
    second = str(root / "second")
    saving.save_model_dir(builder.build_model(config), config, second)
    return first, second


def test_ensemble_fits_on_validation_then_predicts_and_evaluates(members, well, tmp_path, capsys):
    output = str(tmp_path / "ensemble")
    code, out, err = run_isl(["ensemble", f"--member={members[0]}", f"--member={members[1]}", f"--data_dir={well}",
                              "--region=0:24,0:48", "--eval_region=24:48,0:48", f"--channels={','.join(CHANNELS)}",
                              f"--output_dir={output}", "--noprogress", "--json"], capsys)
    assert code == 0, err
    record = json.load(open(os.path.join(output, "ensemble.json")))
    assert record["combination"] == "both" and record["channels"] == CHANNELS
    # Referenced by a path relative to the ensemble folder, not copied.
    assert [os.path.normpath(os.path.join(output, member["path"])) for member in record["members"]] == list(members)
    assert not any(os.path.isabs(member["path"]) for member in record["members"])
    assert sorted(os.listdir(output)) == ["ensemble.json"]
    for channel in CHANNELS:
        weights = record["weights"][channel]["mixture"]["weights"]
        assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=1e-5)
        scores = record["validation"][channel]
        assert scores["mixture_log_score_bits"] >= max(scores["members_log_score_bits"]) - 1e-6
    assert "mean log2 p(true bin)" in out

    predictions = str(tmp_path / "predictions")
    code, out, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={well}", f"--output_dir={predictions}",
                              "--statistics=median,mean,std,q05,q95", "--noprogress"], capsys)
    assert code == 0, err
    assert out.startswith("Ensemble of 2: heads")
    assert "records no data.normalization" not in err  # The folder has no config.json; its members hold the contract.
    well_dir = os.path.join(predictions, os.listdir(predictions)[0])
    summary = json.load(open(os.path.join(well_dir, "prediction.json")))
    assert summary["architecture"] == "ensemble" and summary["statistics"] == ["median", "mean", "std", "q05", "q95"]
    assert set(summary["calibration_files"]) == set(CHANNELS) and summary["panels"]
    code, out, err = run_isl(["evaluate", f"--predictions_dir={predictions}", f"--truth_dir={well}",
                              "--region=24:48,0:48", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert {row["channel"] for row in rows} == set(CHANNELS)
    assert all(0 < row["crps"] < 1 and 0 <= row["coverage_90"] <= 1 for row in rows)

    # isl export writes one SavedModel or package of the ensemble (tests/infer/test_ensemble_graph.py).
    # The registry's kind: asked first, as its file marks it.
    assert registry.kind_of(output) is ensemble_kind.KIND and registry.KINDS[0] is ensemble_kind.KIND

    # A member changed since the fit is refused, naming it.
    config = presets.get_preset("tiny")
    saving.save_model_dir(builder.build_model(config), config, members[1])
    code, _, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={well}",
                            f"--output_dir={tmp_path / 'stale'}", "--noprogress"], capsys)
    assert code == 2 and f"member {members[1]} changed since the ensemble was fitted" in err


def test_tta_of_one_model_folder_averages_its_eight_transforms(tiny_model_dir, well, tmp_path, capsys):
    plain, augmented = str(tmp_path / "plain"), str(tmp_path / "tta")
    arguments = [f"--model_dir={tiny_model_dir}", f"--input_dir={well}", "--statistics=median,mean",
                 "--channels=DAPI_CONFOCAL", "--nopanels", "--nosave_calibration", "--noprogress", "--format=tiff",
                 "--names=short"]
    code, out, err = run_isl(["predict", f"--output_dir={plain}", *arguments], capsys)
    assert code == 0, err
    code, out, err = run_isl(["predict", f"--output_dir={augmented}", "--tta", *arguments], capsys)
    assert code == 0, err
    assert "8 member predictions, test-time augmentation" in out
    import tifffile

    def image(folder, statistic):
        well_dir = os.path.join(folder, os.listdir(folder)[0])
        return tifffile.imread(os.path.join(well_dir, f"DAPI_CONFOCAL_{statistic}.tif")).astype(np.float64)

    for statistic in ("MEDIAN", "MEAN"):
        assert image(augmented, statistic).shape == image(plain, statistic).shape == (48, 48)
    # The untrained network is not rotation-invariant: averaging the transforms changes the mean, a little.
    difference = np.abs(image(augmented, "MEAN") - image(plain, "MEAN")) / 65535
    assert 0 < difference.mean() < 0.2

    code, _, err = run_isl(["predict", f"--output_dir={tmp_path / 'x'}", "--tta", "--tile_size=266", *arguments],
                           capsys)
    assert code == 2 and "--tile_size=266 does not apply to this model (heads with --tta)" in err


def test_bad_ensembles_exit_2_naming_the_member_and_the_mismatch(members, well, tmp_path, capsys):
    other = str(tmp_path / "other_z")
    config = presets.get_preset("tiny")
    import dataclasses

    config = dataclasses.replace(config, channels=dataclasses.replace(config.channels, num_z_values=3))
    saving.save_model_dir(builder.build_model(config), config, other)
    base = [f"--data_dir={well}", "--noprogress", f"--output_dir={tmp_path / 'out'}"]
    code, _, err = run_isl(["ensemble", f"--member={members[0]}", f"--member={other}", "--region=0:24,0:48", *base],
                           capsys)
    assert code == 2 and f"member {other}: its z count" in err
    code, _, err = run_isl(["ensemble", f"--member={members[0]}", "--region=0:40,0:48", "--eval_region=24:48,0:48",
                            *base], capsys)
    assert code == 2 and "--region=0:40,0:48 overlaps --eval_region=24:48,0:48" in err
    code, _, err = run_isl(["ensemble", f"--member={members[0]}", f"--member={tmp_path / 'missing'}",
                            "--region=0:24,0:48", *base], capsys)
    assert code == 2 and "missing: not a folder" in err
    assert not os.path.exists(tmp_path / "out")
