"""`isl export` end to end: model dir -> SavedModel, and `isl predict --saved_model` parity."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from isl.data import synthetic
from isl.infer import export
from isl.io import images
from isl.io import model_dir as model_dir_lib
from isl.model import builder
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.train import tuning_helpers

# One 16-bit step: predictions are written as 16-bit images.
ONE_LEVEL = 1 / 65535


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = tuning_helpers.small_config()
    directory = str(tmp_path_factory.mktemp("cli_export") / "model")
    saving.save_model_dir(builder.build_model(config), config, directory)
    return directory


@pytest.fixture(scope="module")
def well_dir(tmp_path_factory):
    """One synthetic well, transmitted light only (the model predicts DAPI)."""
    root = str(tmp_path_factory.mktemp("cli_export_well"))
    (well,) = synthetic.write_synthetic_dataset(root, num_wells=1, size=(60, 68), num_z=2, seed=1)
    for path in glob.glob(os.path.join(well, "*MAXPROJECT*")):
        os.remove(path)
    return well


def test_export_then_predict_from_the_saved_model_matches_the_model_dir(model_dir, well_dir, tmp_path, capsys):
    export_dir = str(tmp_path / "export")
    code, out, err = run_isl(["export", f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["signatures"] == list(export.SIGNATURES)
    assert summary["outputs"] == ["DAPI_CONFOCAL_median", "DAPI_CONFOCAL_mean", "DAPI_CONFOCAL_std"]
    for name in ("saved_model.pb", export.KERAS_ARCHIVE, model_dir_lib.CONFIG_FILE, export.EXPORT_INFO_FILE):
        assert os.path.exists(os.path.join(export_dir, name)), name

    predictions = {}
    for source in (f"--model_dir={model_dir}", f"--saved_model={export_dir}"):
        output_dir = str(tmp_path / source.split("=")[0].strip("-"))
        code, _, err = run_isl(
            ["predict", source, f"--input_dir={well_dir}", f"--output_dir={output_dir}", "--statistics=median,mean",
             "--noprogress", "--nopanels"],
            capsys,
        )
        assert code == 0, err
        files = sorted(glob.glob(os.path.join(output_dir, "**", "*.png"), recursive=True))
        predictions[source.split("=")[0]] = {
            os.path.relpath(path, output_dir): images.to_float(images.read_image(path)) for path in files}
    from_model, from_export = predictions["--model_dir"], predictions["--saved_model"]
    assert from_model and set(from_model) == set(from_export)
    for name, image in from_model.items():
        np.testing.assert_allclose(from_export[name], image, atol=ONE_LEVEL + 1e-7, err_msg=name)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--export_dir=OUT"], "--model_dir is required"),
        (["--model_dir=/no/such/model", "--export_dir=OUT"], "not found"),
        (["--model_dir=MODEL", "--export_dir=OUT", "--statistics=median,bogus"], "Unknown statistic"),
        (["--model_dir=MODEL", "--export_dir=OUT", "--statistics=median,q05"], "quantiles qNN are not available"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(model_dir, tmp_path, capsys, arguments, message):
    arguments = [argument.replace("MODEL", model_dir).replace("OUT", str(tmp_path / "out")) for argument in arguments]
    code, _, err = run_isl(["export", *arguments], capsys)
    assert code == 2
    assert message in err
    assert not os.path.exists(tmp_path / "out")
