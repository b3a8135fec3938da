"""Every condition preset on synthetic data of its condition (issue 8, REPRODUCE.md section 6).

Each `condition_*` preset is the paper model with one condition's vocabulary.
Here each vocabulary drives the whole flow on synthetic wells of that
condition (its modality, labels and z count): convert, the pipeline's labels,
a few training steps and whole-well prediction. The network is shrunk to the
`tiny` geometry; three of the five flows run by default (see below); the paper-size network
is built and checked in tests/model.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from isl import presets
from isl.data import convert, pipeline, synthetic
from isl.infer.kinds import registry
from isl.train import trainer

# Modality, labels and source z counts (isl_reference.md §3.8).
CONDITIONS = {
    "condition_a": ("BRIGHTFIELD", ("DAPI_WIDEFIELD", "TUJ1_WIDEFIELD", "ISLET_WIDEFIELD"), 13),
    "condition_b": ("PHASE_CONTRAST", ("DAPI_CONFOCAL", "NFH_CONFOCAL", "MAP2_CONFOCAL"), 13),
    "condition_c": ("PHASE_CONTRAST", ("DAPI_CONFOCAL", "DEAD_CONFOCAL"), 13),
    "condition_d": ("PHASE_CONTRAST", ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL"), 13),
    "condition_e": ("DIC", ("DAPI_CONFOCAL", "CELLMASK_CONFOCAL"), 26),
}


def test_every_condition_preset_is_covered():
    assert sorted(CONDITIONS) == sorted(name for name in presets.PRESETS if name.startswith("condition_"))


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_condition_preset_is_the_paper_model_with_its_conditions_vocabulary(name):
    modality, labels, _ = CONDITIONS[name]
    preset = presets.get_preset(name)
    assert preset.channels.input_modalities == (modality,)
    assert set(preset.channels.target_channels) == set(labels)
    assert preset.model == presets.get_preset("paper").model


# The whole flow runs by default for one condition per modality and z count: A (bright
# field), C (phase contrast, 13 z, DEAD) and E (DIC, 26 z). B and D are phase contrast with 13 z like C and
# share one label set (DAPI, NFH, MAP2; in another order), which the test above checks per preset; B's data
# and labels also run end to end in tests/cli/test_demo.py and on the real sample in tests/test_checkpoints.py.
# Their flow is marked slow.
@pytest.mark.parametrize("name", [
    name if name not in ("condition_b", "condition_d") else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(CONDITIONS)
])
def test_condition_preset_converts_trains_and_predicts(name, tmp_path):
    modality, labels, num_z = CONDITIONS[name]
    preset = presets.get_preset(name)
    test_condition_preset_is_the_paper_model_with_its_conditions_vocabulary(name)

    tiny = presets.get_preset("tiny")
    config = dataclasses.replace(
        preset, model=tiny.model, data=tiny.data,
        # No whole-image Pearson during training (tests/train/test_recipe.py covers it): it predicted the eval
        # well once more with a third traced network, and nothing here reads it.
        train=dataclasses.replace(tiny.train, batch_size=4, eval_every_steps=2, eval_batches=1,
                                  checkpoint_every_steps=2, checkpoint_every_minutes=0, eval_pearson=False),
    )
    wells = synthetic.write_synthetic_dataset(str(tmp_path / "wells"), num_wells=2, size=96, num_z=num_z,
                                              seed=3, modality=modality, targets=labels)
    records = str(tmp_path / "records")
    convert.convert([str(tmp_path / "wells")], records, config.channels, eval_wells=["A2"])
    description = pipeline.read_description(records)
    assert description["channels"]["input_modalities"] == [modality]
    assert sorted(description["channels"]["target_channels"]) == sorted(labels)

    inputs, batch_labels = next(iter(pipeline.build_dataset(records, config, seed=0)))
    weights = np.asarray(batch_labels)[..., 1].reshape(-1, config.channels.num_heads)
    labelled_heads = {config.channels.head_names[index] for index in np.flatnonzero(weights.sum(axis=0))}
    expected_targets = set(config.channels.output_target_channels)
    assert {head.split("/")[1] for head in labelled_heads if head.startswith("MAXPROJECT/")} == expected_targets
    # The z mapping (§3.3) spreads 13 or 26 source slices over all 26 z values.
    assert sum(not head.startswith("MAXPROJECT/") for head in labelled_heads) == config.channels.num_z_values

    model_dir = str(tmp_path / "model")
    result = trainer.train(config, records, model_dir, 2, show_progress=False)
    assert result.final_step == 2 and np.isfinite(list(result.losses.values())).all()

    predictor = registry.load_predictor(model_dir=model_dir)
    written = registry.predict_well(predictor, wells[1], str(tmp_path / "predictions"), panels=False,
                                    save_calibration=False, progress_enabled=False)
    files = os.listdir(written["well_dir"])
    for channel in config.channels.output_target_channels:
        assert any(f"channel-{channel}" in file and "MEDIAN" in file.upper() for file in files), (channel, files)
