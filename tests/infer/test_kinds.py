"""The model-kind registry (`isl.infer.kinds`): each real kind's folder is recognised, and a kind registered in a
test is what `isl predict` runs, so the registry is the one dispatch."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil

import pytest

from isl import config as config_lib
from isl import presets
from isl.infer import well as well_lib
from isl.infer.kinds import base
from isl.infer.kinds import heads
from isl.infer.kinds import readout
from isl.infer.kinds import regression
from isl.infer.kinds import registry
from isl.io import model_dir as model_dir_lib
from tests.cli.conftest import run_isl


def _config_only(directory: pathlib.Path, config: config_lib.ExperimentConfig) -> str:
    directory.mkdir()
    config_lib.save_config(config, str(directory / model_dir_lib.CONFIG_FILE))
    return str(directory)


def test_each_real_kind_is_recognised_from_its_folder(tiny_model_dir, tiny_config, tmp_path):
    assert registry.kind_of(tiny_model_dir) is heads.KIND
    readout_dir = tmp_path / "readout"
    shutil.copytree(tiny_model_dir, readout_dir)
    (readout_dir / model_dir_lib.READOUT_FILE).write_text("{}")
    assert registry.kind_of(str(readout_dir)) is readout.KIND
    regression_config = config_lib.apply_overrides(tiny_config, ["model.architecture=unet_regression"])
    assert registry.kind_of(_config_only(tmp_path / "regression", regression_config)) is regression.KIND
    # A folder without config.json falls to the heads, whose loader names what is missing.
    (tmp_path / "empty").mkdir()
    assert registry.kind_of(str(tmp_path / "empty")) is heads.KIND
    assert [kind.name for kind in registry.KINDS][-1] == "heads"  # The fallback is asked last.


def test_a_loaded_folder_carries_its_kind(tiny_model_dir):
    predictor = registry.load_predictor(model_dir=tiny_model_dir)
    assert predictor.kind is heads.KIND and predictor.kind.label(predictor) == "heads"
    geometry = predictor.kind.input_geometry(predictor)
    assert geometry.border == predictor.geometry.border
    assert geometry.num_z_values == predictor.config.channels.num_z_values
    assert "median" in predictor.kind.statistics(predictor) and predictor.kind.distribution(predictor)


class FakeKind(base.ModelKind):
    """A kind no real folder is: marked by `fake.json`, it writes one text file per well."""

    name = "fake"
    words = "a fake model"

    def recognises(self, layout, config):
        return os.path.isfile(os.path.join(layout.root, "fake.json"))

    def load(self, model_dir, precision, open_folder=None):
        assert open_folder is registry.load_predictor  # What a kind made of model folders loads them with.
        config = presets.get_preset("tiny")
        return well_lib.Predictor(config=config, geometry=None, source=model_dir, kind=self)

    def statistics(self, predictor):
        return ("median",)

    def unsupported(self, predictor):
        return {"tile_size": (0, "a fake model has no tiles")}

    def uncalibrated_note(self, predictor):
        return "Uncalibrated: a fake model."

    def predict_well_files(self, predictor, input_dir, output_dir, **options):
        well_dir = os.path.join(output_dir, os.path.basename(input_dir))
        os.makedirs(well_dir)
        with open(os.path.join(well_dir, "FAKE.txt"), "w") as file:
            file.write(",".join(options["statistics"]))
        return {"well": os.path.basename(input_dir), "well_dir": well_dir, "ignored_files": [], "exact": True,
                "region": {"height": 1, "width": 1}, "channels": ["DAPI_CONFOCAL"], "statistics": ["median"],
                "seconds": 0.0, "num_runs": 1, "modality": "", "normalization": "none", "channel_map": [],
                "panels": {}, "files": {"DAPI_CONFOCAL": {"median": "FAKE.txt"}}, "calibration_files": {}}


@pytest.fixture
def fake_kind():
    kind = FakeKind()
    registry.register(kind)
    try:
        yield kind
    finally:
        registry.unregister(kind.name)


def test_a_registered_kind_is_what_isl_predict_runs(fake_kind, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "fake.json").write_text(json.dumps({}))
    well = tmp_path / "B2"
    well.mkdir()
    output = tmp_path / "out"
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}", f"--output_dir={output}",
                              "--statistics=median,std", "--noprogress"], capsys)
    assert code == 0, err
    assert (output / "B2" / "FAKE.txt").read_text() == "median,std"  # Installed by the registry's predict_well.
    assert "Uncalibrated: a fake model." in out
    assert not [name for name in os.listdir(output) if name.startswith(well_lib.STAGING_PREFIX)]
    code, _, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}", f"--output_dir={output}",
                            "--tile_size=64", "--noprogress"], capsys)
    assert code == 2 and "--tile_size=64 does not apply to this model (fake): a fake model has no tiles" in err
    code, _, err = run_isl(["calibrate", f"--model_dir={model_dir}", f"--data_dir={well}", "--region=0:1,0:1",
                            "--train_region=0:1,0:1"], capsys)
    assert code == 2 and "a fake model has nothing isl calibrate can fit" in err


def test_registering_a_name_twice_is_refused(fake_kind):
    with pytest.raises(ValueError, match="fake"):
        registry.register(FakeKind())


# The commands that handle every kind: none of them may test a kind's architecture or files itself.
CONSUMERS = ("isl/cli/predict.py", "isl/cli/calibrate.py", "isl/cli/export.py", "isl/cli/evaluate.py",
             "isl/infer/bioimageio.py", "isl/infer/bioimageio_graph.py", "isl/infer/export.py", "isl/infer/well.py",
             "isl/eval/calibrate.py", "isl/eval/evaluate.py", "isl/benchmarks/predict.py")
KIND_BRANCH = re.compile(
    r"architecture (==|!=)|\.readout is (not )?None|ModelDir\([^)]*\)\.readout|\"unet_regression\"")


def test_only_the_kinds_branch_on_a_kind():
    root = pathlib.Path(__file__).resolve().parents[2]
    found = [f"{path}:{number}" for path in CONSUMERS
             for number, line in enumerate((root / path).read_text().splitlines(), 1) if KIND_BRANCH.search(line)]
    assert not found, found
