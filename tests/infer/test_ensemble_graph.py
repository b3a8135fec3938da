"""`isl export` of an ensemble (`isl.infer.ensemble_graph`): ONE SavedModel whose serving function is `isl predict`
of the ensemble; its bioimage.io package; members missing or changed are refused with nothing written.

A tiny ensemble of all three member kinds (the 256-bin heads, a ridge read-out, a calibrated U-Net regression),
weights written by hand, predicted on a 64 x 80 synthetic well with `isl predict` and served from the exported
SavedModel loaded with plain TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from isl import config as config_lib
from isl import presets
from isl.infer import embedder as embedder_lib
from isl.infer import ensemble as ensemble_lib
from isl.infer.kinds import registry
from isl.io import calibration_file
from isl.io import images as images_lib
from isl.io.model_dir import ModelDir
from isl.model import builder
from isl.model import readout as readout_lib
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.data import wellmaker

CHANNELS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL")
HEIGHT, WIDTH = 64, 80  # Valid sides of the export (64 + 16k).


def _save(directory: str, config, trained=CHANNELS) -> str:
    saving.save_model_dir(builder.build_model(config), config, directory)
    with open(ModelDir(directory).trained_channels, "w") as file:
        json.dump({"target_channels": list(trained)}, file)
    return directory


def _uniform_marginal():
    return {channel: [1.0 / 256] * 256 for channel in CHANNELS}


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """(heads, read-out, calibrated U-Net regression) folders of the tiny preset, side by side."""
    import keras

    root = tmp_path_factory.mktemp("ensemble_members")
    config = presets.get_preset("tiny")
    keras.utils.set_random_seed(11)
    heads = _save(str(root / "heads"), config)
    calibration_file.write(heads, calibration_file.Calibration(
        "heads", {"DAPI_CONFOCAL": {"temperature": 1.7}, "MAP2_CONFOCAL": {"temperature": 0.8}},
        _uniform_marginal()))

    readout_dir = _save(str(root / "readout"), config)
    model = saving.load_model_dir(readout_dir)[0]
    size = embedder_lib.Embedder(model, config).embedding_size
    radii = (1, 3)
    features = size * (1 + len(radii))
    rng = np.random.default_rng(0)
    readout = readout_lib.Readout(
        CHANNELS, radii, rng.normal(size=features), rng.uniform(0.5, 2.0, size=features),
        rng.normal(size=(features, 2)) * 0.05, np.array([0.4, 0.3]), 1.0, rng.normal(size=(features, 2)) * 0.05,
        np.array([-3.0, -3.5]), {"train_dirs": ["plate/well-A1"], "pixels": 4096})
    readout_lib.save(readout, ModelDir(readout_dir).readout)
    histograms = rng.dirichlet(np.full(256, 0.3), size=6)
    calibration_file.write(readout_dir, calibration_file.Calibration("readout", {
        "DAPI_CONFOCAL": {"spread_scale": 1.5, "value_edges": [0.3, 0.6], "spread_edges": [0.05],
                          "histogram_weights": [0.1, 0.9, 0.5, 0.3, 0.7, 0.2], "histograms": histograms.tolist()},
        "MAP2_CONFOCAL": {"spread_scale": 0.7}}, _uniform_marginal()))

    regression = config_lib.apply_overrides(config, [
        "model.architecture=unet_regression", "model.unet_levels=2", "model.unet_filters=4", "model.output_size=16"])
    count = len(regression.channels.output_target_channels)
    regression = dataclasses.replace(regression, model=dataclasses.replace(
        regression.model, regression_target_mean=tuple(0.1 * (1 + index % 5) for index in range(count)),
        regression_target_std=(0.2,) * count))
    regression_dir = _save(str(root / "regression"), regression)
    calibration_file.write(regression_dir, calibration_file.Calibration("regression", {
        "DAPI_CONFOCAL": {"spread": 0.08, "spread_scale": 1.2},
        "MAP2_CONFOCAL": {"spread": 0.05, "value_edges": [0.4], "spread_edges": [],
                          "histogram_weights": [0.3, 0.6], "histograms": rng.dirichlet(np.ones(256), 2).tolist()}},
        _uniform_marginal()))
    return heads, readout_dir, regression_dir


def _ensemble(members, folder: str, combination: str = "both") -> str:
    """An ensemble folder of `members` with hand-set weights (as isl ensemble writes it, fingerprints included)."""
    loaded = [ensemble_lib.load_member(path, registry.load_predictor) for path in members]
    weights = {
        "DAPI_CONFOCAL": {"values": {"weights": [0.02, 0.05, 0.03], "means": [0.5, 0.4, 0.3],
                                     "stds": [0.05, 0.1, 0.2], "intercept": 0.3},
                          "mixture": {"weights": [0.2, 0.5, 0.3]}},
        "MAP2_CONFOCAL": {"values": {"weights": [0.0, 0.04, 0.01], "means": [0.5, 0.3, 0.3],
                                     "stds": [0.1, 0.1, 0.1], "intercept": 0.25},
                          "mixture": {"weights": [0.6, 0.0, 0.4]}},
    }
    record = {"fitted_on": {"window": [0, 32, 0, 80], "well": "synthetic", "tta": False},
              "validation": {}, "marginal": _uniform_marginal(), "marginal_source": "test"}
    ensemble = ensemble_lib.Ensemble(None, loaded, CHANNELS, combination, weights, record)
    ensemble_lib.write(ensemble, folder)
    return folder


@pytest.fixture(scope="module")
def well(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ensemble_export_well") / "well")
    stack, _ = wellmaker.random_well(directory, height=HEIGHT, width=WIDTH, seed=3)
    return directory, stack


def _predicted(output_dir: str, channel: str, statistic: str) -> np.ndarray:
    well_dir = os.path.join(output_dir, os.listdir(output_dir)[0])
    summary = json.load(open(os.path.join(well_dir, "prediction.json")))
    name = summary["files"][channel][statistic]
    return images_lib.read_image(os.path.join(well_dir, name)).astype(np.float64) / 65535.0


@pytest.mark.parametrize("combination", ["both", pytest.param("mixture", marks=pytest.mark.slow)])
def test_the_exported_savedmodel_is_isl_predict_of_the_ensemble(members, well, tmp_path, capsys, combination):
    import tensorflow as tf

    folder = _ensemble(members, str(tmp_path / "ensemble"), combination)
    well_dir, stack = well
    predictions = str(tmp_path / "predictions")
    code, _, err = run_isl(["predict", f"--model_dir={folder}", f"--input_dir={well_dir}",
                            f"--output_dir={predictions}", "--statistics=median,mean,std", "--format=tiff",
                            "--nopanels", "--nosave_calibration", "--noprogress"], capsys)
    assert code == 0, err
    export_dir = str(tmp_path / "export")
    code, out, err = run_isl(["export", f"--model_dir={folder}", f"--export_dir={export_dir}",
                              "--with_distributions"], capsys)
    assert code == 0, err
    assert "Members in the graph" in out
    info = json.load(open(os.path.join(export_dir, "export.json")))
    assert info["format"] == "isl ensemble SavedModel export" and info["statistics"] == ["median", "mean", "std"]
    assert sorted(os.listdir(export_dir)) == ["assets", "ensemble.json", "export.json", "fingerprint.pb",
                                              "saved_model.pb", "variables"]

    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(os.path.join(export_dir, "saved_model.pb"), "rb").read())
    nodes = saved.meta_graphs[0].object_graph_def.nodes  # The members' variables, not their Keras layers.
    variables = sum(node.WhichOneof("kind") == "variable" for node in nodes)
    assert variables > 0 and len(nodes) < variables + 40
    loaded = tf.saved_model.load(export_dir)  # Plain TensorFlow: no isl object in the graph.
    outputs = loaded.signatures["serving_default"](z_stack=tf.constant(np.moveaxis(stack, 0, -1)[None]))
    for channel in CHANNELS:
        for statistic in ("median", "mean", "std"):
            served = outputs[f"{channel}_{statistic}"].numpy()[0]
            expected = _predicted(predictions, channel, statistic)
            assert served.shape == expected.shape == (HEIGHT, WIDTH)
            difference = np.abs(served - expected)
            if statistic == "median" and combination == "mixture":  # 256 bins: a rare one-bin flip at 0.5.
                assert np.mean(difference > 1e-4) < 0.002 and difference.max() <= 1 / 255 + 1e-4, channel
            else:  # The 16-bit image's rounding.
                assert difference.max() < 2e-5, (channel, statistic, difference.max())
        distribution = outputs[f"{channel}_distribution"].numpy()[0]
        assert distribution.shape == (HEIGHT, WIDTH, 256)
        np.testing.assert_allclose(distribution.sum(-1), 1.0, atol=1e-4)
    if combination == "both":  # MAP2's value weights skip the heads, its mixture the read-out: all three still run.
        assert info["served_members"] == list(members)

    # isl predict --saved_model runs single networks: the ensemble's export is named as such, not as damaged.
    code, _, err = run_isl(["predict", f"--saved_model={export_dir}", f"--input_dir={well_dir}",
                            f"--output_dir={tmp_path / 'p2'}", "--noprogress"], capsys)
    assert code == 2 and "an ensemble's SavedModel serves its statistics whole" in err, err

    # A wrong size fails inside the graph, naming the valid ones.
    with pytest.raises(tf.errors.InvalidArgumentError, match="64 \\+ 16k"):
        loaded.signatures["serving_float32"](z_stack=tf.zeros([1, 70, 64, 13]))


def test_a_member_missing_or_changed_exits_2_naming_it_and_writes_nothing(members, tmp_path, capsys):
    copies = []
    for path in members:
        copies.append(str(tmp_path / os.path.basename(path)))
        shutil.copytree(path, copies[-1])
    folder = _ensemble(copies, str(tmp_path / "ensemble"))
    # Missing: the SavedModel; changed since the fit (its calibration.json): the package. Nothing written either way.
    shutil.move(copies[1], copies[1] + ".moved")
    target = tmp_path / "out"
    code, _, err = run_isl(["export", f"--model_dir={folder}", f"--export_dir={target}"], capsys)
    assert code == 2 and f"member {copies[1]} is missing" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    shutil.move(copies[1] + ".moved", copies[1])
    calibration = calibration_file.read(copies[2])
    calibration_file.write(copies[2], dataclasses.replace(
        calibration, channels={**calibration.channels, "DAPI_CONFOCAL": {"spread": 0.2}}))
    code, _, err = run_isl(["export", f"--model_dir={folder}", f"--export_dir={target}", "--format=bioimageio"],
                           capsys)
    assert code == 2 and f"member {copies[2]} changed since the ensemble was fitted" in err, err
    assert not os.path.exists(target) and not os.path.exists(f"{target}.zip")
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".")]
    assert leftovers == []


def test_flags_the_ensemble_export_cannot_honour_are_refused(members, tmp_path, capsys):
    folder = _ensemble(members, str(tmp_path / "ensemble"))
    code, _, err = run_isl(["export", f"--model_dir={folder}", f"--export_dir={tmp_path / 'x'}", "--tile_size=300"],
                           capsys)
    assert code == 2 and "--tile_size does not apply to an ensemble folder" in err
    code, _, err = run_isl(["export", f"--model_dir={folder}", f"--export_dir={tmp_path / 'x'}",
                            "--statistics=median,entropy"], capsys)
    assert code == 2 and "--statistics=entropy: an ensemble (both) exports median, mean, std" in err
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_the_ensemble_package_passes_bioimageio_test_and_names_its_members(members, tmp_path):
    pytest.importorskip("bioimageio.core")
    from isl.infer import bioimageio as bioimageio_lib

    folder = _ensemble(members, str(tmp_path / "ensemble"))
    result = bioimageio_lib.export_package(folder, str(tmp_path / "package"), test_size=64)
    assert result.kind == "ensemble" and result.test == "passed"
    assert [warning for warning in result.warnings if "maintainers" not in warning] == []
    readme = open(os.path.join(result.package_dir, "README.md")).read()
    assert "an ensemble of 3 model folders (heads heads, readout readout, calibrated_regression regression)" in readme
    assert "### Member 2: readout `readout`" in readme and "Cite it for every member" in readme
    assert os.path.isfile(os.path.join(result.package_dir, "ensemble.json"))


@pytest.mark.parametrize("preset", ["tiny", pytest.param("fovea", marks=pytest.mark.slow)])
def test_the_heads_member_graph_is_the_window_isl_predict_gives_the_ensemble(preset, tmp_path):
    """One shift class (tiny: one dense run) and two (the fovea preset's 8-px output on a 16-px phase: the exact
    plan's runs stitched in the graph): bins and mean equal `heads_window`'s on the whole image as the window."""
    import tensorflow as tf

    config = presets.get_preset(preset)
    folder = _save(str(tmp_path / preset), config)
    predictor = registry.load_predictor(model_dir=folder, precision="float32")
    rng = np.random.default_rng(4)
    stack = np.kron(rng.uniform(size=(config.channels.num_z_values, 17, 21)), np.ones((4, 4)))[:, :HEIGHT, :WIDTH]
    stack = stack.astype(np.float32)
    expected_mean, expected_bins = ensemble_lib.heads_window(predictor, stack, (0, HEIGHT, 0, WIDTH), CHANNELS)
    member = predictor.kind.member_graph(predictor, CHANNELS, True)
    mean, bins = member.run(tf.constant(np.moveaxis(stack, 0, -1)[None]))
    np.testing.assert_allclose(bins.numpy()[0], expected_bins, atol=2e-6)
    np.testing.assert_allclose(mean.numpy()[0], expected_mean, atol=2e-6)


def _downstream(operations) -> set:
    """Every op reachable from `operations` through data or control edges."""
    seen, todo = set(), list(operations)
    while todo:
        operation = todo.pop()
        for output in operation.outputs:
            for consumer in output.consumers():
                if consumer not in seen:
                    seen.add(consumer)
                    todo.append(consumer)
        for consumer in operation._control_outputs:
            if consumer not in seen:
                seen.add(consumer)
                todo.append(consumer)
    return seen


def test_the_members_run_one_after_another_in_the_graph(members, tmp_path):
    """TensorFlow runs independent ops concurrently: ungated, the three members' activations would be alive at once
    (the shipped ensemble's package peaked at 3.8 GB). Each member after the first waits for the running sums."""
    import tensorflow as tf

    from isl.infer import ensemble_graph

    folder = _ensemble(members, str(tmp_path / "ensemble"))
    predictor = registry.load_predictor(model_dir=folder, precision="float32")
    composed = ensemble_graph.EnsembleGraph(predictor.ensemble, ("median", "mean", "std"))
    spec = tf.TensorSpec([1, HEIGHT, WIDTH, 13], tf.float32)
    graph = tf.function(lambda z_stack: composed.images(z_stack)[0], autograph=False).get_concrete_function(
        spec).graph
    gates = [operation for operation in graph.get_operations()
             if operation.type == "Identity" and operation.name.startswith("member_gate")]
    assert len(gates) == len(composed.used) - 1 == 2
    # Only the first member, the intercept's shape and the gates read the checked input; every later member reads
    # its gate's copy, and the second gate waits for the sums the second member feeds.
    checked = gates[0].inputs[0]
    assert all(gate.inputs[0] is checked for gate in gates)
    readers = [operation for operation in checked.consumers() if operation not in gates]

    def member_readers(member: int) -> int:
        function = tf.function(lambda z_stack: composed.members[composed.used[member]].run(z_stack)[0],
                               autograph=False).get_concrete_function(spec)
        return len(function.graph.inputs[0].consumers())

    assert len(readers) == member_readers(0) + 1 > 1  # + 1: the intercept's shape (`z_stack[..., :1]`).
    assert gates[1] in _downstream(gates[:1]) and gates[0] not in _downstream(gates[1:])
    assert len(gates[0].outputs[0].consumers()) == member_readers(1) > 0
