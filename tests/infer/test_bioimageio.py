"""bioimage.io packages of tiny models of every kind, checked by the community's own `bioimageio test`.

The default tests export the tiny 256-bin model once and run `bioimageio test` on it in a fresh process
(about 30 s); the graphs of the other kinds are compared with `isl predict`'s computations in-process. The slow
tests export a U-Net regression and a read-out end to end, and the shipped checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from isl import config as config_lib
from isl import errors
from isl import presets
from isl.eval import calibration as calibration_lib
from isl.infer import bioimageio as bioimageio_lib
from isl.infer import embedder as embedder_lib
from isl.infer import export
from isl.infer.kinds import registry
from isl.io.model_dir import ModelDir
from isl.model import builder
from isl.model import readout as readout_lib
from isl.model import saving

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

TEST_SIZE = 46  # 42 + 4: the tiny preset's geometry, output 12 x 12.
MAINTAINER_ALERT = "maintainers"  # The one warning left without --maintainer (bioimageio checks it online).
CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "..", "checkpoints", "condition_b_sample")
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "condition_b_sample")


def _trained_model_dir(tmp_path_factory, name: str, config, trained_channels: list[str]) -> str:
    """An untrained model of `config` saved as a model folder whose `trained_channels` are recorded as trained."""
    directory = str(tmp_path_factory.mktemp(name) / "model")
    saving.save_model_dir(builder.build_model(config), config, directory)
    with open(ModelDir(directory).trained_channels, "w") as file:
        json.dump({"target_channels": trained_channels}, file)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _trained_model_dir(tmp_path_factory, "bioimageio_model", presets.get_preset("tiny"),
                              ["DAPI_CONFOCAL", "MAP2_CONFOCAL"])


@pytest.fixture(scope="module")
def regression_dir(tmp_path_factory):
    config = config_lib.apply_overrides(presets.get_preset("tiny"), [
        "model.architecture=unet_regression", "model.unet_levels=2", "model.unet_filters=4", "model.output_size=16"])
    count = len(config.channels.output_target_channels)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, regression_target_mean=tuple(0.1 * (1 + index % 5) for index in range(count)),
        regression_target_std=(0.2,) * count))
    return _trained_model_dir(tmp_path_factory, "bioimageio_regression", config, ["DAPI_CONFOCAL", "NFH_CONFOCAL"])


@pytest.fixture(scope="module")
def readout_dir(tmp_path_factory):
    config = presets.get_preset("tiny")
    directory = str(tmp_path_factory.mktemp("bioimageio_readout") / "model")
    model = builder.build_model(config)
    saving.save_model_dir(model, config, directory)
    size = embedder_lib.Embedder(model, config).embedding_size
    radii = (1, 3)
    features = size * (1 + len(radii))
    rng = np.random.default_rng(0)
    readout = readout_lib.Readout(
        ("DAPI_CONFOCAL", "MAP2_CONFOCAL"), radii, rng.normal(size=features), rng.uniform(0.5, 2.0, size=features),
        rng.normal(size=(features, 2)) * 0.05, np.array([0.4, 0.3]), 1.0, rng.normal(size=(features, 2)) * 0.05,
        np.array([-4.0, -5.0]),
        {"train_dirs": ["plate/well-A1"], "pixels": 4096, "eval_pearson_r": {"plate/well-A2": {"DAPI_CONFOCAL": 0.9}}})
    readout_lib.save(readout, ModelDir(directory).readout)
    return directory


@pytest.fixture(scope="module")
def package(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bioimageio_package")
    return bioimageio_lib.export_package(model_dir, str(root / "tiny"), test_size=TEST_SIZE)


def _listing(directory):
    return sorted(os.listdir(directory))


def _stack(size: int, num_z: int = 13, seed: int = 0) -> np.ndarray:
    """float32 `[1, size, size, num_z]` in [0, 1]: smooth structure, as the preprocessing hands it over."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(num_z, size // 4 + 1, size // 4 + 1))
    return np.moveaxis(np.kron(coarse, np.ones((4, 4)))[:, :size, :size], 0, -1)[None].astype(np.float32)


def test_the_tiny_package_passes_bioimageio_test_in_a_fresh_process(package):
    """`bioimageio test` (python -m bioimageio.core test) passed on it, with no warning but the maintainer's."""
    from bioimageio.spec import load_description

    assert package.validation in ("passed", "valid-format") and package.test == "passed"
    assert package.kind == "distribution"
    assert [warning for warning in package.warnings if MAINTAINER_ALERT not in warning] == []
    # Trained heads only (trained_channels.json): median, mean, std per channel along one channel axis.
    assert package.outputs == tuple(
        f"{channel}_{statistic}"
        for channel in ("dapi_confocal", "map2_confocal") for statistic in ("median", "mean", "std"))
    files = _listing(package.package_dir)
    for name in ("rdf.yaml", "saved_model.zip", "test_input.npy", "test_output_prediction.npy", "sample_input.tif",
                 "sample_output.tif", "cover.png", "README.md", "config.json"):
        assert name in files
    assert np.load(os.path.join(package.package_dir, "test_input.npy")).shape == (1, TEST_SIZE, TEST_SIZE, 26)
    output = np.load(os.path.join(package.package_dir, "test_output_prediction.npy"))
    assert output.shape == (1, TEST_SIZE - 34, TEST_SIZE - 34, 6) and output.dtype == np.float32
    rdf = open(os.path.join(package.package_dir, "rdf.yaml")).read()
    for fragment in ("format_version: 0.5", "tensorflow_saved_model_bundle", "step: 4", "min: 42", "offset: -34",
                     "scale_linear", "CC-BY-4.0", "10.1016/j.cell.2018.03.040", "mismatched_elements_per_million",
                     "sample_tensor"):
        assert fragment in rdf, fragment
    readme = open(os.path.join(package.package_dir, "README.md")).read()
    assert "Christiansen" in readme and "CC BY 4.0" in readme and "records no training data" in readme
    # The zip beside the folder is a package too, and its name fits bioimage.io's 64 characters.
    with zipfile.ZipFile(package.zip_path) as archive:
        assert "rdf.yaml" in archive.namelist()
    description = load_description(package.zip_path, perform_io_checks=True)
    assert description.validation_summary.status != "failed", description.validation_summary
    assert len(description.name) <= bioimageio_lib.MAX_NAME
    assert not [name for name in _listing(os.path.dirname(package.package_dir)) if name.startswith(".")]


def test_the_saved_model_holds_the_variables_not_the_keras_layers(package, model_dir, tmp_path):
    """Every consumer restores each object and function of the SavedModel: a tracked Keras model added one object
    per layer and its own traced functions (the shipped ensemble's package: 23,167 objects, 847 functions, 0.85 GB
    to load; 593, 339 and 0.40 GB with the variables alone)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    with zipfile.ZipFile(os.path.join(package.package_dir, "saved_model.zip")) as archive:
        archive.extractall(tmp_path / "saved_model")
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(tmp_path / "saved_model" / "saved_model.pb", "rb").read())
    meta_graph = saved.meta_graphs[0]
    variables = [node for node in meta_graph.object_graph_def.nodes if node.WhichOneof("kind") == "variable"]
    read = registry.load_package_model(model_dir).tracked  # The inference model (batch norm folded).
    assert len(variables) == len(read.weights) > 0
    assert len(meta_graph.object_graph_def.nodes) < len(variables) + 40  # The variables, the signatures, a few more.
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    assert sorted(loaded.signatures) == ["serve", "serving_default"]


def test_the_stored_outputs_are_the_graphs_and_the_rdf_states_the_tolerance(package, model_dir):
    """This process imported TensorFlow with oneDNN on, bioimageio test runs without it: the float32 graph and the
    stated tolerance make the fresh test pass all the same (the fixture ran it)."""
    from ruyaml import YAML

    stack = np.load(os.path.join(package.package_dir, "test_input.npy"))
    stored = np.load(os.path.join(package.package_dir, "test_output_prediction.npy"))
    here = bioimageio_lib.test_outputs(registry.load_package_model(model_dir), stack)
    np.testing.assert_allclose(here, stored, atol=1e-6)
    rdf = YAML(typ="safe").load(open(os.path.join(package.package_dir, "rdf.yaml")))
    (tolerance,) = rdf["config"]["bioimageio"]["reproducibility_tolerance"]
    assert tolerance["mismatched_elements_per_million"] == bioimageio_lib.MISMATCHED_PER_MILLION <= 5000
    assert rdf["config"]["isl"]["compute"] == "float32"


def test_the_dense_graph_equals_the_stitched_exact_plan(model_dir):
    """For one shift class (the tiny preset, the shipped 24-px checkpoint) one dense run is the exact plan."""
    package_model = registry.load_package_model(model_dir)
    stack = _stack(42 + 4 * 7, num_z=5)
    dense = package_model.serve(stack)[export.BIOIMAGEIO_OUTPUT].numpy()
    functions = export.ServingFunctions(package_model.tracked, package_model.config, package_model.statistics,
                                        channels=package_model.channels)
    stitched = functions.bioimageio_outputs(stack)[export.BIOIMAGEIO_OUTPUT].numpy()
    assert dense.shape == stitched.shape == (1, 70 - 34, 70 - 34, 6)
    np.testing.assert_allclose(dense, stitched, atol=2e-5)


def test_the_regression_graph_is_isl_predicts(regression_dir):
    from isl.infer import regression

    package_model = registry.load_package_model(regression_dir)
    assert package_model.kind == "regression" and package_model.statistics == ("median", "mean")
    assert package_model.channels == ("DAPI_CONFOCAL", "NFH_CONFOCAL") and package_model.border == 0
    stack = _stack(64 + 16 * 2)
    served = package_model.serve(stack)[export.BIOIMAGEIO_OUTPUT].numpy()[0]
    predictor = registry.load_predictor(model_dir=regression_dir)
    expected = regression.predict_image(predictor.model, np.moveaxis(stack[0], -1, 0), predictor.config)
    targets = predictor.config.channels.output_target_channels
    for index, channel in enumerate(package_model.channels):
        for position in (0, 1):  # median and mean: the one predicted value
            np.testing.assert_allclose(served[..., 2 * index + position], expected[..., targets.index(channel)],
                                       atol=1e-5)


@pytest.mark.parametrize("side", [64, 96])
def test_the_readout_graph_is_isl_predicts(readout_dir, side, monkeypatch):

    # Tiles of 72 output pixels: a 64-px image runs as one tile, a 96-px image as 2 x 2 Embedder tiles.
    monkeypatch.setattr(embedder_lib, "TILE_OUTPUT", 72)
    package_model = registry.load_package_model(readout_dir)
    assert package_model.kind == "readout" and package_model.border == 0
    assert package_model.output_names == ("dapi_confocal_median", "dapi_confocal_mean", "dapi_confocal_std",
                                          "map2_confocal_median", "map2_confocal_mean", "map2_confocal_std")
    stack = _stack(side, seed=side)
    served = package_model.serve(stack)[export.BIOIMAGEIO_OUTPUT].numpy()[0]
    predictor = registry.load_predictor(model_dir=readout_dir)
    embedder = embedder_lib.Embedder(predictor.model, predictor.config)
    assert embedder.num_tiles((side, side)) == (1 if side == 64 else 4)
    value, spread = predictor.readout.predict_distribution(embedder(np.moveaxis(stack[0], -1, 0)))
    expected = readout_lib.statistic_images(value, spread, ("median", "mean", "std"))
    for index in range(2):
        for position, name in enumerate(("median", "mean", "std")):
            np.testing.assert_allclose(served[..., 3 * index + position], expected[name][..., index], atol=2e-5)


def test_statistics_the_kind_does_not_give_are_refused(regression_dir, readout_dir, tmp_path):
    with pytest.raises(errors.InputError, match="not std"):
        bioimageio_lib.export_package(regression_dir, str(tmp_path / "a"), statistics=["median", "std"])
    with pytest.raises(errors.InputError, match="not entropy"):
        bioimageio_lib.export_package(readout_dir, str(tmp_path / "b"), statistics=["median", "entropy"])
    assert _listing(tmp_path) == []


def test_a_package_is_never_written_over_an_existing_folder(model_dir, package, tmp_path, capsys):
    from tests.cli.conftest import run_isl

    existing = tmp_path / "pkg"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    code, _, err = run_isl(["export", "--format=bioimageio", f"--model_dir={model_dir}",
                            f"--export_dir={existing}"], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert _listing(existing) == ["mine.txt"] and _listing(tmp_path) == ["pkg"]
    code, _, err = run_isl(["export", "--format=bioimageio", f"--model_dir={model_dir}",
                            f"--export_dir={tmp_path / 'other'}", "--name=" + "x" * 65], capsys)
    assert code == 2 and "at most 64" in err and _listing(tmp_path) == ["pkg"]


def test_failing_test_leaves_no_folder_and_no_zip(model_dir, tmp_path, monkeypatch):
    """`bioimageio test` fails (here: made to fail): nothing is left behind, nothing is reported as passed."""
    def failing_test(rdf_path):
        raise errors.InputError(f"{rdf_path}: bioimageio test failed (the test outputs are not reproduced): x")

    monkeypatch.setattr(bioimageio_lib, "test_package", failing_test)
    with pytest.raises(errors.InputError, match="bioimageio test failed"):
        bioimageio_lib.export_package(model_dir, str(tmp_path / "pkg"), test_size=TEST_SIZE)
    assert _listing(tmp_path) == []


def test_untrained_heads_are_refused_in_both_formats(model_dir, tmp_path):
    untrained = str(tmp_path / "untrained")
    shutil.copytree(model_dir, untrained)
    with open(ModelDir(untrained).trained_channels, "w") as file:
        json.dump({"target_channels": []}, file)
    with pytest.raises(errors.InputError, match="no trained target heads"):
        bioimageio_lib.export_package(untrained, str(tmp_path / "pkg"), test_size=TEST_SIZE)
    with pytest.raises(errors.InputError, match="no trained target heads"):
        export.export_model(untrained, str(tmp_path / "saved"))
    assert _listing(tmp_path) == ["untrained"]


def test_cli_untrained_heads_exit_2_with_one_line(model_dir, tmp_path, capsys):
    from isl.cli import main

    untrained = str(tmp_path / "untrained")
    shutil.copytree(model_dir, untrained)
    with open(ModelDir(untrained).trained_channels, "w") as file:
        json.dump({"target_channels": ["NOT_A_CHANNEL"]}, file)
    code = main.run_command(["export", "--format=bioimageio", f"--model_dir={untrained}",
                             f"--export_dir={tmp_path / 'pkg'}"])
    assert code == 2
    assert "no trained target heads" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "pkg") and not os.path.exists(tmp_path / "pkg.zip")


@pytest.mark.slow
def test_a_package_whose_outputs_do_not_reproduce_fails_bioimageio_test(package, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(package.package_dir, copy)
    path = copy / "test_output_prediction.npy"
    np.save(path, np.load(path) + 0.25)
    with pytest.raises(errors.InputError, match="bioimageio test failed"):
        bioimageio_lib.test_package(str(copy / "rdf.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["regression", "readout"])
def test_every_kind_passes_bioimageio_test(kind, regression_dir, readout_dir, tmp_path):
    source = {"regression": regression_dir, "readout": readout_dir}[kind]
    result = bioimageio_lib.export_package(source, str(tmp_path / kind))
    assert result.kind == kind and result.test == "passed"
    assert [warning for warning in result.warnings if MAINTAINER_ALERT not in warning] == []
    output = np.load(os.path.join(result.package_dir, "test_output_prediction.npy"))
    assert output.shape[1:3] == result.test_input_shape[1:3]  # Same-size kinds: reflect-padded inside.
    if kind == "readout":
        readme = open(os.path.join(result.package_dir, "README.md")).read()
        assert "4096 pixels" in readme and "well-A2: DAPI_CONFOCAL 0.900" in readme


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SAMPLE), reason="needs the real Condition B sample")
def test_the_shipped_checkpoint_passes_bioimageio_test(tmp_path):
    result = bioimageio_lib.export_package(CHECKPOINT, str(tmp_path / "condition_b"), sample_well=SAMPLE,
                                           sample_origin=(710, 227), test_size=314)
    assert result.test == "passed" and result.test_input_shape == (1, 314, 314, 13)
    assert [warning for warning in result.warnings if MAINTAINER_ALERT not in warning] == []


def _calibrated_copy(readout_dir, tmp_path, channels):
    """A copy of the read-out folder with a hand-written calibration.json (no fingerprint: trusted)."""
    from isl.io import calibration_file

    directory = str(tmp_path / "calibrated")
    shutil.copytree(readout_dir, directory)
    uniform = [1.0 / 256] * 256
    calibration_file.write(directory, calibration_file.Calibration(
        "readout", channels, {name: uniform for name in channels}))
    return directory


def test_the_readout_graph_applies_the_spread_scale_and_the_conditional_histograms(readout_dir, tmp_path,
                                                                                  monkeypatch):
    """isl calibrate's read-out calibration is in the package graph as in isl predict: the spread scale, and
    the 256-bin mixture with conditional histograms (mean and std of the mixture, the median the value)."""
    from isl.infer import readout as readout_infer

    monkeypatch.setattr(embedder_lib, "TILE_OUTPUT", 72)
    stack = _stack(64, seed=3)
    plain = registry.load_package_model(readout_dir).serve(stack)[export.BIOIMAGEIO_OUTPUT].numpy()[0]
    scaled_dir = _calibrated_copy(readout_dir, tmp_path, {"DAPI_CONFOCAL": {"spread_scale": 2.0},
                                                          "MAP2_CONFOCAL": {"spread_scale": 0.5}})
    scaled = registry.load_package_model(scaled_dir).serve(stack)[export.BIOIMAGEIO_OUTPUT].numpy()[0]
    np.testing.assert_allclose(scaled[..., 0], plain[..., 0], atol=1e-6)  # the median is the value
    np.testing.assert_allclose(scaled[..., 2], np.minimum(plain[..., 2] * 2.0, 1.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled[..., 5], np.minimum(plain[..., 5] * 0.5, 1.0), rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(5)
    histograms = rng.dirichlet(np.full(256, 0.3), size=6)
    mixture = {"value_edges": [0.3, 0.6], "spread_edges": [float(np.median(plain[..., 2]))],
               "histogram_weights": [0.1, 0.9, 0.5, 0.3, 0.7, 0.2], "histograms": histograms.tolist(),
               "spread_scale": 1.5}
    mixed_dir = _calibrated_copy(readout_dir, tmp_path / "m", {"DAPI_CONFOCAL": mixture})
    served = registry.load_package_model(mixed_dir).serve(stack)[export.BIOIMAGEIO_OUTPUT].numpy()[0]
    predictor = registry.load_predictor(model_dir=mixed_dir)
    embedder = embedder_lib.Embedder(predictor.model, predictor.config)
    value, spread = predictor.readout.predict_distribution(embedder(np.moveaxis(stack[0], -1, 0)))
    distributions = [calibration_lib.ReadoutDistribution.of(predictor.calibration.channels.get(channel, {}),
                                                          value[..., index], spread[..., index])
                     for index, channel in enumerate(predictor.readout.targets)]
    assert distributions[0].mixed and not distributions[1].mixed
    expected = readout_infer.statistic_images(distributions, ("median", "mean", "std"))
    for index in range(2):
        for position, name in enumerate(("median", "mean", "std")):
            np.testing.assert_allclose(served[..., 3 * index + position], expected[name][..., index], atol=2e-5)
    assert not np.allclose(served[..., 1], plain[..., 1], atol=1e-3)  # the mixture moved DAPI's mean
