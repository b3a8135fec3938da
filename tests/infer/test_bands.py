"""Issue 25: the U-Net regression, the read-out and the ensemble predict band by band (`isl.infer.bands`), and give
the pixels of the whole-window prediction: run once with budgets so large that everything is one band and one pass
(what `isl predict` did before, whole arrays) and once with budgets so small that the window is cut in many bands,
tiles and blocks, every output file must agree to float rounding, with and without truth."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.infer import bands as bands_lib
from isl.infer import embedder as embedder_lib
from isl.infer import ensemble as ensemble_lib
from isl.infer import readout as readout_infer
from isl.infer import regression
from isl.infer.kinds import registry
from isl.io import calibration_file
from isl.io import model_dir as model_dir_lib
from isl.model import builder
from isl.model import readout as readout_lib
from isl.model import saving
from tests.train.test_readout import structured_well

CHANNELS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL")
STATISTICS = ("median", "mean", "std", "q05", "q95")


@pytest.fixture(scope="module")
def wells(tmp_path_factory):
    """A structured well with DAPI and MAP2 truth, and the same stack without any truth."""
    root = tmp_path_factory.mktemp("band_wells")
    truth = str(root / "truth")
    structured_well(truth, 3, 96, 100)
    bare = str(root / "bare")
    os.makedirs(bare)
    for name in os.listdir(truth):
        if "PHASE_CONTRAST" in name:
            shutil.copy(os.path.join(truth, name), bare)
    return truth, bare


@pytest.fixture(scope="module")
def regression_dirs(tmp_path_factory, wells):
    """An untrained tiny U-Net regression folder, and a copy that isl calibrate gave a distribution."""
    root = tmp_path_factory.mktemp("band_regression")
    config = presets.resolve_config("condition_b", recipe="unet_regression", overrides=[
        "model.output_size=32", "model.unet_filters=4", "model.unet_levels=2",
        "model.regression_target_mean=[0.1,0.1,0.1,0.1]", "model.regression_target_std=[0.2,0.2,0.2,0.2]"])
    plain = str(root / "plain")
    saving.save_model_dir(builder.build_model(config, None), config, plain)
    calibrated = str(root / "calibrated")
    shutil.copytree(plain, calibrated)
    _calibrate(calibrated, wells[0])
    return plain, calibrated


def _calibrate(model_dir: str, well: str) -> None:
    predictor = registry.load_predictor(model_dir, apply_calibration=False)
    calibration = registry.calibrate(predictor, well, "0:48,:", [well], "48:96,:", CHANNELS, min_pixels=100)
    calibration_file.write(model_dir, calibration)


@pytest.fixture(scope="module")
def readout_dir(tmp_path_factory, tiny_model_dir, wells):
    """The tiny model with a random ridge read-out (radii 1, 2) on its core, calibrated with histograms."""
    directory = str(tmp_path_factory.mktemp("band_readout") / "readout")
    shutil.copytree(tiny_model_dir, directory)
    predictor = registry.load_predictor(directory)
    size = embedder_lib.Embedder(predictor.model, predictor.config).embedding_size
    rng = np.random.default_rng(4)
    radii = (1, 2)
    features = size * (1 + len(radii))
    readout = readout_lib.Readout(
        CHANNELS, radii, rng.normal(0, 1, features), rng.uniform(0.5, 2, features),
        rng.normal(0, 0.05, (features, 2)), np.array([0.3, 0.4]), 1.0, rng.normal(0, 0.05, (features, 2)),
        np.array([-4.0, -3.5]))
    with open(model_dir_lib.ModelDir(directory).readout, "w", encoding="utf-8") as stream:
        json.dump(readout.to_json(), stream)
    _calibrate(directory, wells[0])
    return directory


def _predict(model_dir, well, output, capsys, **options):
    predictor = registry.load_predictor(model_dir, tta=options.pop("tta", False))
    summary = registry.predict_well(predictor, well, output, progress_enabled=False, image_format="tiff",
                                    channels=CHANNELS, names="short", **options)
    return summary, capsys.readouterr().out


def _files(summary) -> dict[str, np.ndarray]:
    """Every image the prediction wrote, by file name (statistics as 16-bit, calibration maps as float32)."""
    import imageio.v3 as imageio
    import tifffile

    well_dir = summary["well_dir"]
    written = {}
    for group in ("files", "calibration_files"):
        for files in summary[group].values():
            for name in files.values():
                written[name] = tifffile.imread(os.path.join(well_dir, name)).astype(np.float64)

    for name in summary["panels"].values():
        written[name] = imageio.imread(os.path.join(well_dir, name)).astype(np.float64)
    return written


def _assert_same(whole, banded, summary_whole, summary_banded):
    assert sorted(whole) == sorted(banded) and whole
    for name in whole:
        if name.endswith(".png"):  # The panel: drawn band by band, downscaled; 16-bit.
            assert np.abs(whole[name] - banded[name]).max() <= 2, name
        elif "CALIBRATION" in name or any(key in name for key in ("PROBABILITY", "CDF", "CRPS")):
            np.testing.assert_allclose(banded[name], whole[name], atol=1e-5, equal_nan=True, err_msg=name)
        else:  # 16-bit statistics: float rounding may move a value across a rounding edge.
            assert np.abs(whole[name] - banded[name]).max() <= 1, name
    for key in ("truth_channels", "statistics", "channels", "region"):
        assert summary_whole[key] == summary_banded[key], key


def _small_budgets(monkeypatch):
    monkeypatch.setattr(regression, "PASS_BYTES", 1.0)  # Tiles of MIN_TILE with context.
    monkeypatch.setattr(regression, "MIN_TILE", 30)  # Off the 4-px pooling grid: the inputs must be moved onto it.
    monkeypatch.setattr(bands_lib, "BAND_BYTES", 1.0)  # Bands of the fewest rows.
    monkeypatch.setattr(ensemble_lib, "BAND_ROWS", 16)
    monkeypatch.setattr(ensemble_lib, "BLOCK_BYTES", 1.0)  # Blocks of 64 columns.


@pytest.mark.parametrize("calibrated", [False, True])
def test_regression_in_tiles_and_bands_writes_the_whole_pass(regression_dirs, wells, tmp_path, capsys, monkeypatch,
                                                             calibrated):
    model_dir = regression_dirs[1] if calibrated else regression_dirs[0]
    statistics = STATISTICS if calibrated else ("median", "mean")
    for index, well in enumerate(wells):
        whole, out = _predict(model_dir, well, str(tmp_path / f"whole{index}"), capsys, statistics=statistics)
        assert "Expected peak memory: " in out and "(one U-Net pass: " in out
        with monkeypatch.context() as patch:
            _small_budgets(patch)
            banded, out = _predict(model_dir, well, str(tmp_path / f"banded{index}"), capsys, statistics=statistics)
        assert "Expected peak memory: " in out and "U-Net tiles of 24 x 25 px" in out
        assert banded["num_runs"] == 16 and whole["num_runs"] == 1 and banded["exact"] and whole["exact"]
        _assert_same(_files(whole), _files(banded), whole, banded)
        assert bool(whole["truth_channels"]) == (index == 0)
        assert bool(whole["calibration_files"]) == (index == 0 and calibrated)
    # The one-pass prediction is the whole image's (what isl predict wrote before): predict_image of the stack.
    predictor = registry.load_predictor(model_dir)
    from isl.data import wells as wells_lib

    stack = wells_lib.read_checked_well(predictor.config, wells[0]).inputs
    expected = regression.predict_image(predictor.model, stack, predictor.config)
    median = _files(whole)["DAPI_CONFOCAL_MEDIAN.tif"]
    assert np.abs(median - np.round(np.clip(expected[..., 0], 0, 1) * 65535)).max() <= 1


def test_readout_in_bands_writes_the_whole_wells_embedding(readout_dir, wells, tmp_path, capsys, monkeypatch):
    for index, well in enumerate(wells):
        whole, out = _predict(readout_dir, well, str(tmp_path / f"whole{index}"), capsys, statistics=STATISTICS)
        assert "Expected peak memory: " in out
        with monkeypatch.context() as patch:
            _small_budgets(patch)
            banded, out = _predict(readout_dir, well, str(tmp_path / f"banded{index}"), capsys,
                                   statistics=STATISTICS)
        assert "Expected peak memory: " in out
        _assert_same(_files(whole), _files(banded), whole, banded)
        assert bool(whole["calibration_files"]) == (index == 0)
    # Against the whole well's embedding and read-out (what isl predict computed before).
    predictor = registry.load_predictor(readout_dir)
    from isl.data import wells as wells_lib

    stack = wells_lib.read_checked_well(predictor.config, wells[0]).inputs
    value, spread = predictor.readout.predict_distribution(readout_infer.embedder_of(predictor)(stack))
    distributions = readout_infer.calibrated_distributions(predictor.applied_calibration, CHANNELS, value, spread)
    expected = readout_infer.statistic_images(distributions, ("std",))["std"]
    std = _files(whole)["MAP2_CONFOCAL_STD.tif"]
    assert np.abs(std - np.round(np.clip(expected[..., 1], 0, 1) * 65535)).max() <= 1


def test_band_distribution_equals_the_whole_embeddings_read_out():
    rng = np.random.default_rng(0)
    size, radii = 3, (1, 4)
    features = size * (1 + len(radii))
    readout = readout_lib.Readout(("A", "B"), radii, rng.normal(0, 1, features), rng.uniform(0.5, 2, features),
                                  rng.normal(0, 1, (features, 2)), np.zeros(2), 1.0,
                                  rng.normal(0, 0.1, (features, 2)), np.zeros(2))
    embedding = rng.normal(0, 1, (30, 11, size)).astype(np.float32)
    value, spread = readout.predict_distribution(embedding)
    for row0, row1 in ((0, 7), (7, 26), (26, 30)):
        first = max(0, row0 - 4)
        band_value, band_spread = readout_infer.band_distribution(readout, embedding[first : row1 + 4], first, 30,
                                                                  row0, row1)
        np.testing.assert_allclose(band_value, value[row0:row1], atol=1e-5)
        np.testing.assert_allclose(band_spread, spread[row0:row1], rtol=1e-5)


def _ensemble(tiny_model_dir, regression_dir, combination="both"):
    members = [ensemble_lib.load_member(tiny_model_dir, registry.load_predictor),
               ensemble_lib.load_member(regression_dir, registry.load_predictor)]
    weights = {channel: {"values": {"weights": [0.6, 0.4], "means": [0.4, 0.2], "stds": [0.1, 0.2],
                                    "intercept": 0.3},
                         "mixture": {"weights": [0.7, 0.3]}} for channel in CHANNELS}
    return ensemble_lib.Ensemble(None, members, CHANNELS, combination, weights)


@pytest.mark.parametrize("tta", [False, True])
def test_ensemble_in_blocks_writes_the_whole_window(tiny_model_dir, regression_dirs, wells, tmp_path, capsys,
                                                    monkeypatch, tta):
    ensemble = _ensemble(tiny_model_dir, regression_dirs[1])
    # The whole window in one band and one block: what isl predict computed before (one band of 256 rows).
    with monkeypatch.context() as patch:
        patch.setattr(ensemble_lib, "BAND_ROWS", 1024)
        patch.setattr(ensemble_lib, "BLOCK_BYTES", 1e12)
        whole = ensemble_lib.predict_well(ensemble, wells[0], str(tmp_path / "whole"), statistics=STATISTICS,
                                          image_format="tiff", file_names="short", tta=tta)
    out = capsys.readouterr().out
    assert "Expected peak memory: " in out and "members in blocks of 96 x 100 px" in out
    with monkeypatch.context() as patch:
        _small_budgets(patch)
        lines = []
        banded = ensemble_lib.predict_well(ensemble, wells[0], str(tmp_path / "banded"), statistics=STATISTICS,
                                           image_format="tiff", file_names="short", tta=tta, progress=lines.append)
    out = capsys.readouterr().out
    # Six bands of 16 rows, each in two blocks of 50 columns, each block predicted by both members.
    assert len(lines) == 6 * 2 * 2 and "rows 80:96, columns 50:100, member" in lines[-1]
    assert "Expected peak memory: " in out and "members in blocks of 16 x 50 px" in out
    assert whole["calibration_files"] and whole["truth_channels"] == list(CHANNELS)
    _assert_same(_files(whole), _files(banded), whole, banded)
    if not tta:  # Without truth: no calibration TIFFs, no panel, the same statistics.
        bare = ensemble_lib.predict_well(ensemble, wells[1], str(tmp_path / "bare"), statistics=STATISTICS,
                                         image_format="tiff", file_names="short")
        assert bare["calibration_files"] == {} and bare["panels"] == {} and bare["truth_channels"] == []
        for name, image in _files(bare).items():
            assert np.abs(image - _files(whole)[name]).max() <= 1, name


def test_tta_reads_transformed_windows_without_transforming_the_stack():
    stack = np.random.rand(2, 9, 13).astype(np.float32)
    for turns, mirror in ensemble_lib.TRANSFORMS:
        moved = ensemble_lib.transform(stack, turns, mirror, (1, 2))
        view = ensemble_lib.TransformedStack(stack, turns, mirror)
        assert view.shape == moved.shape
        np.testing.assert_array_equal(view[:, 2:7, 1:5], moved[:, 2:7, 1:5])
        rows, columns = np.array([0, 0, 1, 3]), np.array([4, 2, 0])  # Reflected and repeated, as tiles read.
        np.testing.assert_array_equal(view[np.ix_(np.arange(2), rows, columns)],
                                      moved[np.ix_(np.arange(2), rows, columns)])


def test_a_prediction_that_would_not_fit_is_refused_naming_the_flag(regression_dirs, readout_dir, tiny_model_dir,
                                                                   wells, tmp_path, capsys):
    for model_dir in (regression_dirs[0], readout_dir):
        with pytest.raises(errors.InputError, match=r"it would not fit; predict a narrower --region"):
            _predict(model_dir, wells[0], str(tmp_path / "refused"), capsys, available_bytes=1e6)
    with pytest.raises(errors.InputError, match=r"Expected peak memory: .* it would not fit; predict a narrower"):
        ensemble_lib.predict_well(_ensemble(tiny_model_dir, regression_dirs[0]), wells[0], str(tmp_path / "refused"),
                                  available_bytes=1e6)
    assert not os.path.exists(tmp_path / "refused") or not os.listdir(tmp_path / "refused")


def test_wide_calibrated_bands_shrink_their_rows_to_the_memory_target():
    # Session 11: a 4096-px-wide calibrated U-Net modelled 3.8 GB with square 586-px tiles (its bands span the
    # width); the band rows must come down until the modelled peak fits, columns and pixels unchanged.
    import types

    from isl.infer import well as well_lib

    config = presets.resolve_config("condition_b", recipe="unet_regression")
    lazy = types.SimpleNamespace(inputs=None, targets={})  # A lazily read well holds no pixels.
    per_pixel = regression.band_bytes_per_pixel(4, 2, True)
    shape = (4096, 4096)
    square = regression.plan_window(config, shape, (0, 4096, 0, 4096))
    assert regression.band_expected_peak(config, square, shape, per_pixel, lazy, True)["total"] > 3e9
    plan, expected = regression.fit_band_rows(config, square, shape, per_pixel, lazy, True)
    assert expected["total"] <= well_lib.TARGET_PEAK_BYTES
    assert plan.tile < square.tile and plan.columns == square.columns and plan.crop == square.crop
    assert -(-4096 // plan.tile) * plan.tile >= 4096  # The balanced bands still cover every row.
    # A window that fits keeps its square tiles.
    narrow = regression.plan_window(config, shape, (0, 4096, 0, 1024))
    assert regression.fit_band_rows(config, narrow, shape, per_pixel, lazy, True)[0] == narrow


def test_wide_readout_bands_shrink_their_rows_to_the_memory_target():
    # The read-out's bands span the crop's width: at 4096 columns `band_rows_of`'s rows modelled over 3 GB
    # (session 12); the rows come down until the model fits, a narrow window keeps them. The shipped read-out's
    # geometry: 506-px core tiles of 264 output rows on a 256-row stride, 64 embedding channels, radii up to 8.
    import types

    from isl.infer import well as well_lib

    embedder = types.SimpleNamespace(input_size=506, output_size=264, stride=256, border=121, embedding_size=64,
                                     num_z_values=13)
    readout = types.SimpleNamespace(radii=(1, 2, 4, 8), targets=("DAPI_CONFOCAL", "NFH_CONFOCAL", "MAP2_CONFOCAL"),
                                    embedding_size=64)
    lazy = types.SimpleNamespace(inputs=None, targets={})  # A lazily read well holds no pixels.
    margin = 2 * (embedder.border + 8)
    wide, narrow = 4096 + margin, 768 + margin
    per_pixel = readout_infer.band_bytes_per_pixel(readout, 3, 1)
    default = readout_infer.band_rows_of(readout, wide, 3, 1)
    before = bands_lib.expected_peak(readout_infer.embedder_bytes(embedder, wide, default, 8),
                                     default * wide * per_pixel, lazy, 4096, True)
    assert before["total"] > well_lib.TARGET_PEAK_BYTES
    rows, expected = readout_infer.fit_band_rows(readout, embedder, wide, 4096, 3, 1, lazy, True)
    assert expected["total"] <= well_lib.TARGET_PEAK_BYTES and readout_infer.MIN_BAND_ROWS <= rows < default
    assert expected["network"] < before["network"] and expected["rows"] < before["rows"]
    rows, expected = readout_infer.fit_band_rows(readout, embedder, narrow, 768, 3, 1, lazy, True)
    assert rows == readout_infer.band_rows_of(readout, narrow, 3, 1) and expected["total"] < 3e9
