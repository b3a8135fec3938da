"""The paper's Condition E story through `isl train`: a model trained on one
condition learns a new modality (DIC) and a new label (CELLMASK_CONFOCAL)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from isl import presets
from isl.cli import main
from isl.io import filenames
from isl.model import builder
from isl.model import saving
from isl.train import transfer
from tests.train.conftest import FAST_OVERRIDES
from tests.train.conftest import SMALL_NETWORK

CONDITION_B = ("channels.input_modalities=PHASE_CONTRAST",
               "channels.target_channels=DAPI_CONFOCAL,MAP2_CONFOCAL,NFH_CONFOCAL")
CONDITION_E = ("channels.input_modalities=DIC", "channels.target_channels=DAPI_CONFOCAL,CELLMASK_CONFOCAL")
RENAME = {"PHASE_CONTRAST": "DIC", "MAP2_CONFOCAL": "CELLMASK_CONFOCAL"}


def relabel_wells(source: str, destination: str) -> None:
    """Copies synthetic wells as a DIC / DAPI + CELLMASK condition (NFH dropped)."""
    for well in sorted(os.listdir(source)):
        os.makedirs(os.path.join(destination, well))
        for name in sorted(os.listdir(os.path.join(source, well))):
            key = filenames.parse(name)
            if key.channel == "NFH_CONFOCAL":
                continue
            renamed = dataclasses.replace(key, channel=RENAME.get(key.channel, key.channel))
            shutil.copy(os.path.join(source, well, name),
                        os.path.join(destination, well, filenames.format_name(renamed)))


# About 60 s (a training run to start from, then the transfer run). Slow: tests/train/test_transfer.py covers the
# transfer mechanics and tests/test_presets.py's condition E flow the new modality in the default run.
@pytest.mark.slow
def test_condition_b_model_learns_dic_and_cellmask(trained_model_dir, records_dir, tmp_path, capsys):
    from isl.data import convert

    # A condition-B model: the trained small network in B's vocabulary.
    trained_dir, _, _ = trained_model_dir
    b_config = presets.resolve_config("tiny", overrides=list(FAST_OVERRIDES + SMALL_NETWORK + CONDITION_B))
    b_model = builder.build_model(b_config)
    transfer.restore_from(b_model, trained_dir)
    b_dir = str(tmp_path / "condition_b")
    saving.save_model_dir(b_model, b_config, b_dir)

    # Condition E data: DIC with DAPI and CELLMASK labels.
    wells = os.path.join(os.path.dirname(records_dir), "wells")
    relabel_wells(wells, str(tmp_path / "e_wells"))
    e_config = presets.resolve_config("tiny", overrides=list(CONDITION_E))
    convert.convert([str(tmp_path / "e_wells")], str(tmp_path / "e_records"), e_config.channels, eval_every=3)

    e_dir = str(tmp_path / "condition_e")
    arguments = ["train", f"--data_dir={tmp_path / 'e_records'}", f"--model_dir={e_dir}", "--preset=tiny",
                 *[f"--set={item}" for item in FAST_OVERRIDES + SMALL_NETWORK + CONDITION_E],
                 f"--restore_from={b_dir}", "--freeze_core", "--steps=4", "--json", "--noprogress"]
    assert main.run_command(arguments) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["final_step"], summary["resumed_from_step"]) == (4, 0)
    assert summary["transfer"]["new"] == [
        "head_MAXPROJECT_CELLMASK_CONFOCAL_bn", "head_MAXPROJECT_CELLMASK_CONFOCAL_conv"]
    assert summary["transfer"]["relearned"] == []
    assert "MAXPROJECT_CELLMASK_CONFOCAL" in " ".join(summary["final_head_losses"])
    assert "New (absent from the source)" in captured.err

    # The frozen core kept B's weights; the new head and the projection learned.
    e_model, saved_config = saving.load_model_dir(e_dir)
    assert saved_config.channels.input_modalities == ("DIC",)
    core_layer = next(layer for layer in b_model.layers if layer.name.startswith("lower_scale_0") and layer.weights)
    for before, after in zip(core_layer.weights, e_model.get_layer(core_layer.name).weights):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert not np.array_equal(b_model.get_layer("projection").kernel.numpy(),
                              e_model.get_layer("projection").kernel.numpy())
