"""Named transmitted-light normalisations, their record in dataset.json and config.json, and the warning."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from isl import config as config_lib
from isl import presets
from isl import errors
from isl.cli import main
from isl.data import normalization
from isl.data import wells
from isl.io import images
from tests.conftest import SAMPLE_DIR

SAMPLE = str(SAMPLE_DIR)


def _raw_phase(seed=0, shape=(3, 40, 48), mean=1600.0, std=150.0, bits=14):
    """A dim 14-bit phase-like stack (mean ~0.1 of full scale), `[z, H, W]` uint16."""
    rng = np.random.default_rng(seed)
    stack = rng.normal(mean, std, shape)
    return np.clip(np.round(stack), 0, 2**bits - 1).astype(np.uint16)


def test_paper_gives_mean_half_and_the_papers_spread_per_slice_clipped():
    stack = _raw_phase().astype(np.float32) / 16383.0
    stack[1] *= 3.0  # Slices are normalised one by one.
    result = normalization.normalize_stack(stack, "paper")
    assert result.dtype == np.float32 and result.shape == stack.shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    np.testing.assert_allclose(result.mean(axis=(1, 2)), 0.5, atol=2e-3)
    np.testing.assert_allclose(result.std(axis=(1, 2)), normalization.PAPER_SPREAD, rtol=2e-2)
    flat = normalization.normalize_stack(np.full((1, 4, 4), 0.2, np.float32), "paper")
    assert np.all(flat == 0.5)


def test_percentile_maps_p3_and_p99_8_of_the_stack_to_0_and_1_and_none_is_identity():
    stack = np.linspace(0, 1, 2 * 50 * 50, dtype=np.float32).reshape(2, 50, 50) ** 2
    result = normalization.normalize_stack(stack, "percentile")
    low, high = np.percentile(stack, [3, 99.8])
    np.testing.assert_allclose(result, np.clip((stack - low) / (high - low), 0, 1), atol=1e-6)
    assert np.array_equal(normalization.normalize_stack(stack, "none"), stack)
    with pytest.raises(errors.InputError, match="Unknown normalization 'zscore'"):
        normalization.normalize_stack(stack, "zscore")


def test_the_warning_says_what_is_off_and_what_to_do():
    dim = _raw_phase().astype(np.float32) / 65535.0  # 14-bit values read as 16-bit: mean ~0.02.
    warning = normalization.check_statistics(dim, "well X", "none")
    assert "well X" in warning and "--normalization=paper" in warning
    assert normalization.check_statistics(normalization.normalize_stack(dim, "paper"), "well X", "paper") is None


@pytest.mark.skipif(not os.path.isdir(SAMPLE), reason="../shared/data/condition_b_sample is not present")
def test_paper_normalisation_leaves_the_papers_own_data_nearly_unchanged():
    well = wells.read_well(SAMPLE, config_lib.ChannelConfig())
    result = normalization.normalize_stack(well.inputs, "paper")
    assert np.abs(result - well.inputs).mean() < 0.003
    assert normalization.check_statistics(well.inputs, "sample", "none") is None


def _user_fov(directory, normalise_bits=14):
    """A manifest field of view: 14-bit phase OME-TIFF z-stack + 12-bit Hoechst label."""
    import tifffile

    os.makedirs(directory, exist_ok=True)
    tifffile.imwrite(os.path.join(directory, "phase.ome.tif"), _raw_phase(shape=(3, 40, 48)),
                     metadata={"axes": "ZYX", "SignificantBits": normalise_bits})
    label = np.full((40, 48), 4095, np.uint16)
    label[:20] = 1000
    images.write_image(os.path.join(directory, "hoechst.tif"), label)
    with open(os.path.join(directory, "manifest.csv"), "w") as handle:
        handle.write("file,channel,z,bits\nphase.ome.tif,PHASE_CONTRAST,,\nhoechst.tif,DAPI_CONFOCAL,,12\n")
    return label


def test_convert_records_the_normalisation_and_label_bit_depth_and_warns(tmp_path, capsys):
    fov = str(tmp_path / "fov")
    _user_fov(fov)
    base = ["convert", f"--input_dir={fov}", "--eval_every=0", "--noprogress", "--json"]
    assert main.run_command(base + [f"--output_dir={tmp_path / 'raw'}"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "--normalization=paper" in captured.err
    assert main.run_command(base + [f"--output_dir={tmp_path / 'paper'}", "--normalization=paper"]) == 0
    captured = capsys.readouterr()
    assert "warning:" not in captured.err
    description = json.loads((tmp_path / "paper" / "dataset.json").read_text())
    assert description["normalization"] == "paper" and description["warnings"] == []
    (record,) = description["wells"]
    assert record["input_source_max_value"] == 16383 and record["target_max_values"] == [4095]
    # The records decode to the normalised stack and the label / (2**12 - 1).
    import tensorflow as tf

    from isl.data import decoder

    shard = os.path.join(tmp_path, "paper", description["splits"]["train"]["shards"][0])
    example = decoder.decode(next(iter(tf.data.TFRecordDataset(shard))))
    stack = example["inputs"].numpy().astype(np.float32) / example["input_max_value"].numpy()
    np.testing.assert_allclose(stack.mean(axis=(0, 1)), 0.5, atol=2e-3)
    label = example["targets"].numpy()[..., 0] / example["target_max_values"].numpy()[0]
    assert label.max() == 1.0 and abs(label[0, 0] - 1000 / 4095) < 1e-6
    # A config naming another normalisation than the records' is refused.
    config = presets.resolve_config("tiny", overrides=["data.normalization=percentile"])
    with pytest.raises(errors.InputError, match="converted with --normalization=paper"):
        normalization.config_for_dataset(config, str(tmp_path / "paper"))
    adopted = normalization.config_for_dataset(presets.resolve_config("tiny"), str(tmp_path / "paper"))
    assert adopted.data.normalization == "paper"


def test_read_well_applies_the_models_normalisation_and_flags_raw_data(tmp_path):
    fov = str(tmp_path / "fov")
    _user_fov(fov)
    raw = wells.read_well(fov, config_lib.ChannelConfig())
    assert raw.metadata["normalization"] == "none" and "--normalization=paper" in raw.metadata["warnings"][0]
    assert abs(raw.inputs.mean() - 1600 / 16383) < 0.01  # 14 bits declared in the OME metadata.
    normalised = wells.read_well(fov, config_lib.ChannelConfig(), normalization="paper")
    assert normalised.metadata["warnings"] == []
    np.testing.assert_allclose(normalised.inputs.mean(axis=(1, 2)), 0.5, atol=2e-3)
    assert normalised.targets["DAPI_CONFOCAL"].max() == 1.0  # 12-bit label from the manifest's bits column.


def test_a_label_above_its_declared_bit_depth_names_the_file(tmp_path):
    fov = str(tmp_path / "fov")
    _user_fov(fov)
    images.write_image(os.path.join(fov, "hoechst.tif"), np.full((40, 48), 5000, np.uint16))  # > 4095 (12 bits)
    with pytest.raises(errors.InputError, match=r"hoechst.tif: holds values up to 5000, above 4095"):
        wells.read_well(fov, config_lib.ChannelConfig())
