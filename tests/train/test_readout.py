"""Fitting the ridge read-out: the accumulated normal equations and a fit on small wells."""

from __future__ import annotations

import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.model import builder
from isl.infer import embedder as embedder_lib
from isl.model import readout as readout_lib
from isl.train import readout as fit_lib
from tests.data import wellmaker


def structured_well(directory: str, seed: int, height: int = 40, width: int = 44) -> None:
    """Phase contrast = smooth blobs + noise; DAPI = the blobs; MAP2 = their square (both learnable)."""
    rng = np.random.default_rng(seed)
    blobs = readout_lib.box_mean(rng.uniform(size=(height, width, 1)).astype(np.float32), 3)[..., 0]
    blobs = (blobs - blobs.min()) / (blobs.max() - blobs.min())
    stack = 0.7 * blobs[np.newaxis] + 0.3 * rng.uniform(size=(13, height, width))
    to16 = lambda image: np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)  # noqa: E731
    wellmaker.write_well(directory, to16(stack), {"DAPI_CONFOCAL": to16(blobs), "MAP2_CONFOCAL": to16(blobs**2)})


def test_normal_equations_solve_the_standardized_ridge_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * rng.uniform(0.1, 5, size=6) + rng.normal(size=6)
    x[:, 5] = 2.0  # A constant feature gets weight 0.
    y = x[:, :2] @ np.array([[1.0, -0.5], [0.3, 2.0]]) + 0.1 * rng.normal(size=(500, 2)) + 4.0
    equations = fit_lib.NormalEquations(6, 2)
    equations.add(x[:200].astype(np.float32), y[:200].astype(np.float32))
    equations.add(x[200:].astype(np.float32), y[200:].astype(np.float32))
    mean, scale, weights, intercept, r_squared = equations.solve(penalty=5.0)
    z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    expected = np.linalg.solve(z.T @ z + 5.0 * np.eye(6), z.T @ (y - y.mean(0)))
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(intercept, y.mean(0), rtol=1e-6)
    assert weights[5].tolist() == [0.0, 0.0] and scale[5] == 1.0
    residual = y - (intercept + z @ weights)
    np.testing.assert_allclose(r_squared, 1 - (residual**2).sum(0) / ((y - y.mean(0)) ** 2).sum(0), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    config = presets.get_preset("tiny")
    return builder.build_model(config), config


def test_a_fit_learns_the_targets_and_scores_an_unseen_well(tiny, tmp_path):
    model, config = tiny
    for seed, name in ((1, "a"), (2, "b"), (3, "c")):
        structured_well(str(tmp_path / name), seed)
    labels = []
    fitted = fit_lib.fit(model, config, [str(tmp_path / "a"), str(tmp_path / "b")], ["DAPI_CONFOCAL", "MAP2_CONFOCAL"],
                         radii=(1, 2), penalty=10.0, eval_dirs=[str(tmp_path / "c")],
                         progress=lambda label, total: lambda: labels.append(label))
    assert fitted.targets == ("DAPI_CONFOCAL", "MAP2_CONFOCAL") and fitted.radii == (1, 2)
    assert fitted.record["pixels"] == 2 * 40 * 44
    assert fitted.weights.shape == (3 * fitted.embedding_size, 2)
    scores = fitted.record["eval_pearson_r"][str(tmp_path / "c")]
    assert scores["DAPI_CONFOCAL"] > 0.8 and scores["MAP2_CONFOCAL"] > 0.7, scores
    assert all(value > 0.6 for value in fitted.record["train_r_squared"].values())
    # The fitted spread is calibrated roughly: the 90% interval holds most of the truth, the 50% one about half.
    half, ninety = fitted.record["eval_interval_coverage"][str(tmp_path / "c")]["DAPI_CONFOCAL"]
    assert 0.3 < half < 0.75 and 0.75 < ninety <= 1.0 and fitted.record["coverage_levels"] == [0.5, 0.9]
    assert any(label.startswith("embed") for label in labels) and any(label.startswith("score") for label in labels)


def test_a_training_well_without_a_target_fails_before_any_embedding(tiny, tmp_path):
    model, config = tiny
    structured_well(str(tmp_path / "a"), 1)
    stack = np.full((13, 20, 20), 30000, np.uint16)
    wellmaker.write_well(str(tmp_path / "nuclei_only"), stack, {"DAPI_CONFOCAL": stack[0]})
    with pytest.raises(errors.InputError, match=r"nuclei_only: no MAP2_CONFOCAL image .*\(it has DAPI_CONFOCAL\)"):
        fit_lib.fit(model, config, [str(tmp_path / "a"), str(tmp_path / "nuclei_only")], ["MAP2_CONFOCAL"],
                    progress=lambda label, total: pytest.fail("embedded before checking every well"))
    with pytest.raises(errors.InputError, match="Unknown target channel NUCLEUS"):
        fit_lib.fit(model, config, [str(tmp_path / "a")], ["NUCLEUS"])


def test_band_features_equal_the_whole_image_features():
    rng = np.random.default_rng(4)
    embedding = rng.normal(size=(37, 23, 3)).astype(np.float32)
    expected = readout_lib.features(embedding, (1, 4)).reshape(37, 23, -1)
    for row0, row1 in ((0, 5), (5, 20), (20, 37), (0, 37)):
        first, last = max(0, row0 - 4), min(37, row1 + 4)
        band = readout_lib.band_features(embedding[first:last], first, 37, row0, row1, (1, 4))
        np.testing.assert_allclose(band, expected[row0:row1], rtol=1e-6, atol=1e-6)


def test_the_banded_fit_gives_the_design_matrix_weights(tiny, tmp_path, monkeypatch):
    """Features accumulated band by band (many bands here) give the weights of the whole design matrix."""
    model, config = tiny
    structured_well(str(tmp_path / "a"), 1, height=70, width=44)
    monkeypatch.setattr(fit_lib, "BAND_PIXELS", 300)  # bands of 6 rows
    fitted = fit_lib.fit(model, config, [str(tmp_path / "a")], ["DAPI_CONFOCAL"], radii=(1, 4), penalty=10.0)
    from isl.data import wells as wells_lib

    well = wells_lib.read_checked_well(config, str(tmp_path / "a"))
    embedder = embedder_lib.Embedder(model, config)
    design = readout_lib.features(embedder(well.inputs), (1, 4))
    equations = fit_lib.NormalEquations(design.shape[1], 1)
    equations.add(design, well.targets["DAPI_CONFOCAL"].reshape(-1, 1))
    mean, scale, weights, intercept, _ = equations.solve(10.0)
    np.testing.assert_allclose(fitted.feature_mean, mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fitted.weights, weights, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(fitted.intercept, intercept, rtol=1e-9)
    bands = list(fit_lib._window_bands(embedder, well, (1, 4), (0, 70, 0, 44), None, "embed"))
    assert len(bands) == 12 and all(len(features) <= 300 for _, _, features in bands)
    assert [band[:2] for band in bands[:2]] == [(0, 6), (6, 12)]
