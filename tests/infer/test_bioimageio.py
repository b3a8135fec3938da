"""bioimage.io packages of the tiny model, checked by the real bioimageio.spec and bioimageio.core."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.infer import bioimageio as bioimageio_lib
from isl.infer import export
from isl.io.model_dir import ModelDir
from isl.model import builder
from isl.model import saving

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

TEST_SIZE = 46  # 42 + 4: the tiny preset's geometry, output 12 x 12.


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = presets.get_preset("tiny")
    directory = str(tmp_path_factory.mktemp("bioimageio_model") / "model")
    saving.save_model_dir(builder.build_model(config), config, directory)
    with open(ModelDir(directory).trained_channels, "w") as file:
        json.dump({"target_channels": ["DAPI_CONFOCAL", "MAP2_CONFOCAL"]}, file)
    return directory


@pytest.fixture(scope="module")
def package(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bioimageio_package")
    result = bioimageio_lib.export_package(model_dir, str(root / "tiny"), test_size=TEST_SIZE)
    return result


def _listing(directory):
    return sorted(os.listdir(directory))


def test_package_is_valid_and_bioimageio_core_reproduces_its_test_outputs(package):
    from bioimageio.spec import load_description

    assert package.validation in ("passed", "valid-format") and package.test == "passed"
    # Trained heads only (trained_channels.json): median, mean, std per channel along one channel axis.
    assert package.outputs == tuple(
        f"{channel}_{statistic}"
        for channel in ("dapi_confocal", "map2_confocal") for statistic in ("median", "mean", "std"))
    files = _listing(package.package_dir)
    for name in ("rdf.yaml", "saved_model.zip", "test_input.npy", "test_output_prediction.npy", "cover.png",
                 "README.md", "config.json"):
        assert name in files
    assert np.load(os.path.join(package.package_dir, "test_input.npy")).shape == (1, TEST_SIZE, TEST_SIZE, 26)
    output = np.load(os.path.join(package.package_dir, "test_output_prediction.npy"))
    assert output.shape == (1, TEST_SIZE - 34, TEST_SIZE - 34, 6) and output.dtype == np.float32
    rdf = open(os.path.join(package.package_dir, "rdf.yaml")).read()
    for fragment in ("format_version: 0.5", "tensorflow_saved_model_bundle", "step: 4", "min: 42", "offset: -34",
                     "scale_linear", "CC-BY-4.0", "10.1016/j.cell.2018.03.040"):
        assert fragment in rdf, fragment
    readme = open(os.path.join(package.package_dir, "README.md")).read()
    assert "Christiansen" in readme and "CC BY 4.0" in readme
    # The zip beside the folder is a package too.
    assert os.path.isfile(package.zip_path)
    with zipfile.ZipFile(package.zip_path) as archive:
        assert "rdf.yaml" in archive.namelist()
    description = load_description(package.zip_path, perform_io_checks=True)
    assert description.validation_summary.status != "failed", description.validation_summary
    assert not [name for name in _listing(os.path.dirname(package.package_dir)) if name.startswith(".")]


def test_a_package_whose_test_does_not_reproduce_is_refused(package, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(package.package_dir, copy)
    path = copy / "test_output_prediction.npy"
    np.save(path, np.load(path) + 0.25)
    with pytest.raises(errors.InputError, match="does not reproduce the test outputs"):
        bioimageio_lib.test_package(str(copy / "rdf.yaml"))


def test_failing_test_leaves_no_folder_and_no_zip(model_dir, tmp_path, monkeypatch):
    """The export's own check fails (here: the test made to fail): nothing is left behind."""
    def failing_test(rdf_path):
        raise errors.InputError(f"{rdf_path}: bioimageio.core's test_model does not reproduce the test outputs: x")

    monkeypatch.setattr(bioimageio_lib, "test_package", failing_test)
    monkeypatch.setattr(export, "export_keras_model", _fake_export)
    monkeypatch.setattr(bioimageio_lib, "run_endpoint", lambda directory, stack: {
        export.BIOIMAGEIO_OUTPUT: np.full((1, 12, 12, 6), 0.5, np.float32)})
    with pytest.raises(errors.InputError, match="does not reproduce"):
        bioimageio_lib.export_package(model_dir, str(tmp_path / "pkg"), test_size=TEST_SIZE)
    assert _listing(tmp_path) == []


def _fake_export(model, config, export_dir, *args, **kwargs):
    """A stand-in SavedModel (with `run_endpoint` patched): the check under test comes later."""
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "saved_model.pb"), "w") as file:
        file.write("fake")


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
