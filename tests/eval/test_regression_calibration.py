"""Issue 24: the U-Net regression's value becomes a calibrated distribution per pixel (isl calibrate), which
isl predict writes (statistics, calibration TIFFs) and isl evaluate scores; uncalibrated it behaves as before."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from isl import presets
from isl.eval import regression_calibration
from isl.io import calibration_file
from isl.io import images
from isl.model import builder
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.train.test_readout import structured_well

CHANNELS = "--channels=DAPI_CONFOCAL,MAP2_CONFOCAL"


def test_fit_gives_the_rms_spread_and_the_readouts_parameters_with_one_spread_group():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, 20_000)
    truth[:8_000] = 0.0  # A background level, as the stains have.
    value = truth + rng.normal(0, 0.05, truth.size)
    bins = np.round(truth * 255).astype(np.int64)
    parameters = regression_calibration.fit(value, bins)
    rms = np.sqrt(np.mean((np.clip(value, 0, 1) - bins / 255) ** 2))
    assert parameters["spread"] == pytest.approx(rms, rel=1e-4)
    assert parameters["spread_edges"] == [] and len(parameters["histogram_weights"]) == 16
    assert 0.3 < parameters["spread_scale"] < 3
    # The record round-trips; a regression record without its spread is refused.
    record = calibration_file.Calibration("regression", {"DAPI_CONFOCAL": parameters},
                                          {"DAPI_CONFOCAL": [1 / 256] * 256}).to_json()
    loaded = calibration_file.Calibration.from_json(json.loads(json.dumps(record)))
    del record["channels"]["DAPI_CONFOCAL"]["spread"]
    with pytest.raises(ValueError, match="no spread for DAPI_CONFOCAL"):
        calibration_file.Calibration.from_json(record)
    # The fitted distribution beats the plain normal curve of the RMS spread (the "before" figures).
    scores = regression_calibration.scores(value, bins, loaded.channels["DAPI_CONFOCAL"], np.full(256, 1 / 256))
    assert scores["after"]["nll_nats"] < scores["before"]["nll_nats"]


@pytest.fixture(scope="module")
def regression_setup(tmp_path_factory):
    """An untrained tiny U-Net regression and a structured well with DAPI and MAP2 truth."""
    root = tmp_path_factory.mktemp("regression_calibration")
    config = presets.resolve_config("condition_b", recipe="unet_regression", overrides=[
        "model.output_size=32", "model.unet_filters=4", "model.unet_levels=2",
        "model.regression_target_mean=[0.1,0.1,0.1,0.1]", "model.regression_target_std=[0.2,0.2,0.2,0.2]"])
    model_dir = str(root / "model")
    saving.save_model_dir(builder.build_model(config, None), config, model_dir)
    well = str(root / "well")
    structured_well(well, 3, 96, 100)
    return model_dir, well


def _read(entry: dict, statistic: str, channel: str = "DAPI_CONFOCAL") -> np.ndarray:
    return images.read_image(os.path.join(entry["well_dir"], entry["files"][channel][statistic])).astype(np.float64)


def test_calibrated_regression_predicts_and_evaluates_a_distribution(regression_setup, tmp_path, capsys):
    source, well = regression_setup
    model_dir = str(tmp_path / "model")
    shutil.copytree(source, model_dir)
    # Uncalibrated: as before (median and mean, no distribution).
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                              f"--output_dir={tmp_path / 'plain'}", CHANNELS, "--noprogress", "--json"], capsys)
    assert code == 0, err
    (plain,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert set(plain["files"]["DAPI_CONFOCAL"]) == {"median", "mean"} and plain["calibration_files"] == {}
    code, out, err = run_isl(["calibrate", f"--model_dir={model_dir}", f"--data_dir={well}", "--region=0:48,:",
                              "--train_region=48:96,:", "--min_pixels=100", "--json"], capsys)
    assert code == 0, err
    assert "Calibrated the regression" in out
    calibration = calibration_file.read(model_dir)
    assert calibration.route == "regression" and set(calibration.channels) == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                              f"--output_dir={tmp_path / 'cal'}", CHANNELS, "--statistics=median,mean,std,q05,q95",
                              "--noprogress", "--json"], capsys)
    assert code == 0, err
    assert "the U-Net regression's value as a distribution per pixel" in out
    (calibrated,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert set(calibrated["calibration_files"]) == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    # The median and the mean stay the regression's value; the interval is a real interval around it.
    np.testing.assert_array_equal(_read(calibrated, "median"), _read(plain, "median"))
    np.testing.assert_array_equal(_read(calibrated, "mean"), _read(plain, "mean"))
    low, high, std = _read(calibrated, "q05"), _read(calibrated, "q95"), _read(calibrated, "std")
    assert np.all(low <= high) and (high - low).mean() > 0 and std.mean() > 0
    code, out, err = run_isl(["evaluate", f"--predictions_dir={tmp_path / 'cal'}", f"--truth_dir={well}",
                              "--region=48:96,0:100", f"--output_dir={tmp_path / 'eval'}", "--json"], capsys)
    assert code == 0, err
    rows = json.load(open(tmp_path / "eval" / "metrics.json"))
    rows = rows["wells"] if isinstance(rows, dict) and "wells" in rows else rows
    text = json.dumps(rows)
    assert '"calibrated": true' in text
    for key in ("coverage_90", "crps", "information_gain_bits"):
        assert f'"{key}": NaN' not in text and f'"{key}"' in text
    code, _, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                            f"--output_dir={tmp_path / 'mode'}", CHANNELS, "--statistics=mode", "--noprogress"], capsys)
    assert code == 2 and "--statistics=mode: a calibrated U-Net regression gives median, mean, std" in err
    # --nocalibration predicts as trained; a channel without calibration is refused, naming the fix.
    code, _, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                            f"--output_dir={tmp_path / 'raw'}", CHANNELS, "--nocalibration", "--statistics=std",
                            "--noprogress"], capsys)
    assert code == 2 and "the U-Net regression predicts one value" in err
    code, _, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                            f"--output_dir={tmp_path / 'nfh'}", "--channels=NFH_CONFOCAL", "--noprogress"], capsys)
    assert code == 2 and "no regression spread for NFH_CONFOCAL" in err and "--channels=DAPI_CONFOCAL" in err
    assert not (tmp_path / "nfh").exists()


def test_the_bioimageio_graph_carries_the_calibrated_std(regression_setup, tmp_path):
    from isl.data import wells as wells_lib
    from isl.infer import export
    from isl.infer import readout as readout_infer
    from isl.infer import regression
    from isl.infer.kinds import registry

    source, well_dir = regression_setup
    model_dir = str(tmp_path / "model")
    shutil.copytree(source, model_dir)
    channels = ("DAPI_CONFOCAL", "MAP2_CONFOCAL")
    with open(os.path.join(model_dir, "trained_channels.json"), "w") as file:  # The package's channels.
        json.dump({"target_channels": list(channels)}, file)
    # Uncalibrated, the package refuses std as before.
    with pytest.raises(Exception, match="U-Net regression .*not std"):
        registry.load_package_model(model_dir, ["median", "std"])
    predictor = registry.load_predictor(model_dir, apply_calibration=False)
    calibration = registry.calibrate(predictor, well_dir, "0:48,:", [well_dir], "48:96,:", channels,
                                     min_pixels=100)
    calibration_file.write(model_dir, calibration)
    package_model = registry.load_package_model(model_dir, ["median", "mean", "std"])
    assert package_model.statistics == ("median", "mean", "std")
    predictor = registry.load_predictor(model_dir, precision="float32")  # As the package runs (the recipe: bf16).
    stack = np.moveaxis(wells_lib.read_checked_well(predictor.config, well_dir).inputs[:, :96, :96], 0, -1)[None]
    served = package_model.serve(stack.astype(np.float32))[export.BIOIMAGEIO_OUTPUT].numpy()[0]
    targets = predictor.config.channels.output_target_channels
    value = regression.predict_image(predictor.model, np.moveaxis(stack[0], -1, 0), predictor.config, clip=False)
    value = value[..., [targets.index(channel) for channel in package_model.channels]]
    distributions = regression_calibration.distributions(calibration, package_model.channels, value)
    expected = readout_infer.statistic_images(distributions, ("median", "std"))
    for index in range(len(package_model.channels)):
        np.testing.assert_allclose(served[..., 3 * index], expected["median"][..., index], atol=2e-5)
        np.testing.assert_allclose(served[..., 3 * index + 1], expected["median"][..., index], atol=2e-5)
        # A value within rounding of a group edge may fall in the next group: nearly every pixel agrees.
        close = np.abs(served[..., 3 * index + 2] - expected["std"][..., index]) < 1e-4
        assert close.mean() > 0.99, close.mean()
    assert expected["std"].mean() > 0


def test_the_spread_recipe_predicts_a_spread_trains_on_the_gaussian_nll_and_calibrates_with_it(tmp_path, capsys):
    from isl.data import wells as wells_lib
    from isl.infer import regression
    from isl.infer.kinds import registry
    from isl.model import losses
    from isl.model import unet_regression

    # The loss: 0.5 z^2 + ln s on labelled pixels; RegressionLoss takes it for 2T outputs, the MSE for T.
    standardized = np.array([[1.0, 2.0]], np.float32)
    mean, log_spread, weights = np.zeros((1, 2), np.float32), np.log([[2.0, 1.0]]).astype(np.float32), np.ones((1, 2))
    expected = np.mean([0.5 * (1 / 2) ** 2 + np.log(2.0), 0.5 * 4.0])
    assert float(losses.gaussian_nll(standardized, mean, log_spread, weights.astype(np.float32),
                                     beta=0)) == pytest.approx(expected, rel=1e-5)
    beta_weighted = np.mean([4.0 * (0.5 * (1 / 2) ** 2 + np.log(2.0)), 0.5 * 4.0])  # s^(2 beta), beta = 1.
    assert float(losses.gaussian_nll(standardized, mean, log_spread, weights.astype(np.float32))) == pytest.approx(
        beta_weighted, rel=1e-5)
    loss = unet_regression.RegressionLoss(0, (0.5,), (0.25,))
    labels = np.array([[[[[0.75, 1.0]]]]], np.float32)  # standardized 1.0
    assert float(loss(labels, np.zeros((1, 1, 1, 1), np.float32))) == pytest.approx(1.0)
    spread_output = np.array([[[[0.0, np.log(2.0)]]]], np.float32)
    assert float(loss(labels, spread_output)) == pytest.approx(4.0 * (0.5 / 4 + np.log(2.0)), rel=1e-5)

    config = presets.resolve_config("condition_b", recipe="unet_regression_spread", overrides=[
        "model.output_size=32", "model.unet_filters=4", "model.unet_levels=2",
        "model.regression_target_mean=[0.1,0.1,0.1,0.1]", "model.regression_target_std=[0.2,0.2,0.2,0.2]"])
    model = builder.build_model(config, None)
    assert config.model.regression_spread and model.output_shape[-1] == 8
    model_dir = str(tmp_path / "model")
    saving.save_model_dir(model, config, model_dir)
    well = str(tmp_path / "well")
    structured_well(well, 3, 96, 100)
    predictor = registry.load_predictor(model_dir, apply_calibration=False)
    stack = wells_lib.read_checked_well(predictor.config, well).inputs
    values, spread = regression.predict_image(predictor.model, stack, predictor.config, with_spread=True)
    assert values.shape == spread.shape == (96, 100, 4) and np.all(spread > 0) and np.ptp(spread) > 0
    calibration = registry.calibrate(predictor, well, "0:48,:", [well], "48:96,:",
                                     ("DAPI_CONFOCAL", "MAP2_CONFOCAL"), min_pixels=100)
    parameters = calibration.channels["DAPI_CONFOCAL"]
    assert parameters["spread"] == 1.0 and len(parameters["spread_edges"]) == 1  # Grouped by the predicted spread.
    calibration_file.write(model_dir, calibration)
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}",
                              f"--output_dir={tmp_path / 'p'}", CHANNELS, "--statistics=median,std,q05,q95",
                              "--noprogress", "--json"], capsys)
    assert code == 0, err
    assert "the predicted spread times, per channel," in out
    (entry,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert set(entry["calibration_files"]) == {"DAPI_CONFOCAL", "MAP2_CONFOCAL"}
    assert np.all(_read(entry, "q05") <= _read(entry, "q95"))
