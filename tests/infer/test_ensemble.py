"""Ensembles and test-time augmentation (`isl.infer.ensemble`): transforms, alignment with a known answer, weights."""

from __future__ import annotations

import types

import numpy as np
import pytest

from isl import errors
from isl.infer import ensemble as ensemble_lib
from isl.infer import predict as predict_lib
from isl.infer.kinds import heads as heads_kind
from tests.infer import fakes


def test_each_transform_is_undone_and_moves_the_window_with_the_image():
    image = np.random.rand(3, 10, 14)
    seen = set()
    for turns, mirror in ensemble_lib.TRANSFORMS:
        moved = ensemble_lib.transform(image, turns, mirror, (1, 2))
        np.testing.assert_array_equal(ensemble_lib.untransform(moved, turns, mirror, (1, 2)), image)
        seen.add(moved.tobytes())
        row0, row1, column0, column1 = ensemble_lib.transformed_window((10, 14), (2, 7, 3, 12), turns, mirror)
        # The window of the transformed image is the transformed window of the image.
        np.testing.assert_array_equal(moved[:, row0:row1, column0:column1],
                                      ensemble_lib.transform(image[:, 2:7, 3:12], turns, mirror, (1, 2)))
    assert len(seen) == 8  # The eight dihedral transforms, all different.


class _CoordinateMember:
    """A member whose 'prediction' is each pixel's row index in the image it was given (not equivariant)."""

    has_distribution = False

    def predict(self, stack, window, channels):
        row0, row1, column0, column1 = window
        rows = np.arange(row0, row1, dtype=np.float32)[:, None, None]
        return np.broadcast_to(rows, (row1 - row0, column1 - column0, len(channels))).copy(), None


def test_tta_of_a_row_index_is_the_mean_of_the_four_edge_distances():
    # Under the 8 transforms a pixel's row index in the transformed image is r, c, H-1-r, W-1-c, twice each:
    # the mean is (H + W - 2) / 4 at every pixel. A misaligned or unmoved transform changes it.
    stack = np.zeros((1, 12, 12), np.float32)
    value, probabilities = ensemble_lib.member_window(_CoordinateMember(), stack, (0, 12, 0, 12), ["A"], tta=True)
    assert probabilities is None
    np.testing.assert_allclose(value, np.full((12, 12, 1), (12 + 12 - 2) / 4), atol=1e-6)
    part, _ = ensemble_lib.member_window(_CoordinateMember(), stack, (3, 9, 2, 7), ["A"], tta=True)
    np.testing.assert_allclose(part, value[3:9, 2:7], atol=1e-6)


def _identity_heads_member(tiny_config, border: int = 4, phase: int = 8):
    """A heads member whose network puts all mass on the 8-bit bin of its centre input pixel (first z value):
    the answer of any correctly aligned prediction is the input itself, whatever the tiles and phases."""
    geometry = fakes.fake_geometry(8, border, phase)
    targets = tiny_config.channels.output_target_channels
    heads = tuple(tiny_config.channels.num_input_heads + index for index in range(len(targets)))

    def run(inputs, keep_rows, keep_columns):
        inputs = np.asarray(inputs)
        centre = inputs[:, border: inputs.shape[1] - border, border: inputs.shape[2] - border, 0]
        centre = centre[:, keep_rows][:, :, keep_columns]
        bins = np.clip(np.round(centre * 255), 0, 255).astype(int)
        one_hot = np.eye(256, dtype=np.float32)[bins][:, :, :, None, :].repeat(len(heads), axis=3)
        return {"mean": (bins / 255.0)[..., None].repeat(len(heads), axis=3).astype(np.float32),
                "distribution": one_hot}

    predictor = types.SimpleNamespace(config=tiny_config, geometry=geometry, head_temperatures=lambda heads: None,
                                      kind=heads_kind.KIND, _run_functions={("ensemble_window", heads): run})
    member = ensemble_lib.Member("identity", predictor, "heads", tuple(targets))
    return member, targets


def test_tta_of_the_heads_comes_back_aligned_through_tiles_and_phases(tiny_config, monkeypatch):
    monkeypatch.setattr(ensemble_lib, "HEADS_TILE", 40)  # Several tiles, each with its 8-px phase runs.
    member, targets = _identity_heads_member(tiny_config)
    stack = np.random.rand(1, 45, 37).astype(np.float32)
    expected = np.round(stack[0] * 255) / 255
    window = (5, 41, 3, 30)
    value, probabilities = ensemble_lib.member_window(member, stack, window, targets, tta=True)
    np.testing.assert_allclose(value[..., 0], expected[5:41, 3:30], atol=1e-6)
    # Each of the eight mapped-back predictions put all its mass on the same (true) bin.
    assert probabilities.shape == (36, 27, len(targets), 256)
    np.testing.assert_allclose(probabilities.max(axis=-1), 1.0, atol=1e-6)
    medians = ensemble_lib.bin_statistic_images(probabilities, ("median",))["median"]
    np.testing.assert_allclose(medians[..., 0], expected[5:41, 3:30], atol=1e-6)


def test_tta_with_phase_sensitive_tiles_gives_a_window_the_pixels_of_the_whole_image(tiny_config, monkeypatch):
    monkeypatch.setattr(ensemble_lib, "HEADS_TILE", 40)
    member, targets = _identity_heads_member(tiny_config)
    phase_run = fakes.phase_averaging(4, 8)

    def run(inputs, keep_rows, keep_columns):
        value = phase_run(inputs, keep_rows, keep_columns)["value"][..., :1]
        mean = np.clip(value, 0, 1).repeat(len(targets), axis=3)
        bins = np.round(mean * 255).astype(int)
        return {"mean": mean, "distribution": np.eye(256, dtype=np.float32)[bins]}

    (key,) = member.predictor._run_functions
    member.predictor._run_functions[key] = run
    stack = np.random.rand(1, 48, 40).astype(np.float32)
    whole, _ = ensemble_lib.member_window(member, stack, (0, 48, 0, 40), targets, tta=True)
    part, _ = ensemble_lib.member_window(member, stack, (8, 40, 16, 40), targets, tta=True)
    np.testing.assert_allclose(part, whole[8:40, 16:40], atol=1e-6)


def test_value_weights_recover_a_known_combination_and_mixture_weights_the_better_member():
    rng = np.random.default_rng(0)
    truth = rng.random(5000)
    a = truth + 0.3 * rng.standard_normal(5000)
    b = 2 * truth + 0.6 * rng.standard_normal(5000) + 1  # Same information, other scale and offset.
    noise = rng.random(5000)
    fitted = ensemble_lib.fit_values(np.stack([a, b, noise], -1), truth)
    assert fitted["weights"][0] == pytest.approx(fitted["weights"][1], rel=0.15)
    assert fitted["weights"][2] < 0.05 * fitted["weights"][0]
    assert fitted["intercept"] == pytest.approx(truth.mean())
    # Member 1 gives the true bin 0.5, member 2 0.01: the log score wants nearly all the weight on member 1.
    weights = ensemble_lib.fit_mixture(np.stack([np.full(1000, 0.5), np.full(1000, 0.01)], -1))
    assert weights[0] > 0.99 and weights.sum() == pytest.approx(1.0)
    # Each member right on a different half: the weights split.
    halves = np.concatenate([np.tile([[0.9, 0.001]], (500, 1)), np.tile([[0.001, 0.9]], (500, 1))])
    np.testing.assert_allclose(ensemble_lib.fit_mixture(halves), [0.5, 0.5], atol=0.01)


def test_bin_statistics_and_calibration_maps_match_the_heads_run_function():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5, 1, 256)).astype(np.float32) * 3
    probabilities = tf.nn.softmax(logits).numpy()
    truth = rng.random((6, 5)).astype(np.float32)
    truth[0, 0] = np.nan

    def network(inputs):
        return tf.constant(logits[None])

    run = predict_lib.make_run_function(network, ("median", "mean", "std"), (0.05, 0.95), with_truth=True)
    bins = np.round(np.nan_to_num(truth) * 255).astype(np.int32)[None, ..., None]
    expected = {key: np.asarray(value)[0, ..., 0] for key, value in run(
        np.zeros((1, 6, 5, 2), np.float32), np.arange(6, dtype=np.int32), np.arange(5, dtype=np.int32),
        bins).items()}
    images = ensemble_lib.bin_statistic_images(probabilities[..., 0, :], ("median", "mean", "std", "q05", "q95"))
    for name in ("median", "mean", "std", "q05", "q95"):
        np.testing.assert_allclose(images[name], expected[name], atol=2e-5)
    maps = ensemble_lib.calibration_maps(probabilities[..., 0, :], truth)
    assert np.isnan(maps["crps"][0, 0])
    for key in ("true_bin_probability", "cdf_below_true", "crps"):
        np.testing.assert_allclose(maps[key].ravel()[1:], expected[key].ravel()[1:], atol=2e-5)


def test_members_that_read_the_wells_differently_or_lack_a_channel_are_refused(tiny_config):
    import dataclasses

    def member(name, config, channels):
        return ensemble_lib.Member(name, types.SimpleNamespace(config=config), "heads", channels)

    first = member("a", tiny_config, ("DAPI_CONFOCAL", "MAP2_CONFOCAL"))
    other_z = dataclasses.replace(tiny_config, channels=dataclasses.replace(tiny_config.channels, num_z_values=3))
    with pytest.raises(errors.InputError, match=r"member b: its z count .* member a has"):
        ensemble_lib.check_members([first, member("b", other_z, first.channels)])
    other_norm = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, normalization="paper"))
    with pytest.raises(errors.InputError, match=r"member c: its normalisation"):
        ensemble_lib.check_members([first, member("c", other_norm, first.channels)])
    with pytest.raises(errors.InputError, match=r"member d: it does not predict MAP2_CONFOCAL"):
        ensemble_lib.check_members([first, member("d", tiny_config, ("DAPI_CONFOCAL",))])
    assert ensemble_lib.check_members([first, member("e", tiny_config, first.channels + ("NFH_CONFOCAL",))]) \
        == first.channels


def test_the_shipped_condition_b_ensemble_names_its_members_relatively_and_they_match_its_fingerprints():
    import json
    import os

    from isl.io import calibration_file
    from tests.conftest import REPOSITORY_ROOT

    folder = REPOSITORY_ROOT / "checkpoints" / "condition_b_ensemble"
    record = json.loads((folder / ensemble_lib.ENSEMBLE_FILE).read_text())
    assert record["combination"] == "both"
    assert [member["kind"] for member in record["members"]] == ["readout", "calibrated_regression", "heads"]
    for member in record["members"]:
        assert not os.path.isabs(member["path"])
        member_dir = os.path.normpath(os.path.join(folder, member["path"]))
        assert calibration_file.fingerprint(member_dir) == member["fingerprint"], member_dir
        assert ensemble_lib._calibration_fingerprint(member_dir) == member["calibration_fingerprint"], member_dir
    # Fitted on the validation rows only, beside the reported test rows 896:1024.
    assert record["fitted_on"]["window"] == [768, 896, 0, 768]


def test_tta_of_one_folder_combines_as_its_kind_writes():
    from isl.infer.kinds import readout
    from isl.infer.kinds import regression

    def combination(kind, has_distribution):
        predictor = types.SimpleNamespace(kind=kind, calibration_record=lambda: None)
        member = ensemble_lib.Member("m", predictor, kind.name, ("A",), has_distribution)
        return ensemble_lib.single(member, ("A",)).combination

    assert combination(heads_kind.KIND, True) == combination(readout.KIND, True) == "mixture"
    assert combination(regression.KIND, True) == "both"  # Its value as median and mean, its distribution's std.
    assert combination(regression.KIND, False) == "values"


def _mixed_distribution(shape: tuple[int, ...], seed: int):
    from isl.eval import calibration

    generator = np.random.default_rng(seed)
    histograms = generator.random((3, 256))
    histograms /= histograms.sum(axis=1, keepdims=True)
    return calibration.ReadoutDistribution(
        value=generator.random(shape).astype(np.float32),
        spread=(0.02 + 0.1 * generator.random(shape)).astype(np.float32),
        weight=generator.random(shape).astype(np.float32), group=generator.integers(0, 3, shape),
        histograms=histograms)


def test_dense_probabilities_is_the_same_whatever_the_chunk():
    distributions = [_mixed_distribution((40, 50), seed) for seed in (0, 1)]
    whole = ensemble_lib.dense_probabilities(distributions, chunk=40 * 50)
    chunked = ensemble_lib.dense_probabilities(distributions, chunk=333)
    assert whole.shape == (40, 50, 2, 256) and whole.dtype == np.float32
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_allclose(whole.sum(axis=-1), 1.0, atol=1e-5)


def test_dense_probabilities_temporaries_stay_within_the_modelled_chunk():
    # Session 11: 65,536-pixel chunks made 0.8 GB of float64 temporaries beside the block's bins (the ensemble's
    # unmodelled peak). The temporaries of one chunk must stay within `dense_chunk_bytes` scaled to the chunk.
    import tracemalloc

    chunk, pixels = 2048, 4 * 2048
    distributions = [_mixed_distribution((pixels,), 2)]
    result_bytes = pixels * 256 * 4
    tracemalloc.start()
    try:
        ensemble_lib.dense_probabilities(distributions, chunk=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    modelled = ensemble_lib.dense_chunk_bytes() * chunk / ensemble_lib.DENSE_CHUNK_PIXELS
    assert peak - result_bytes <= modelled, (peak - result_bytes, modelled)
    # ... and the default chunk really is small: its temporaries are about 0.1 GB.
    assert ensemble_lib.dense_chunk_bytes() <= 0.15e9
