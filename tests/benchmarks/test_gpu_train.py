"""The TensorFlow-side halves of the GPU training scripts: packing a split, importing the weight parts.

`scripts/gpu_train.py` itself runs on JAX (the lent GPU machines have no TensorFlow); its sampler was
checked against `isl.data.parser` pixel for pixel (BUILD_NOTES.md, "GPU training without TensorFlow").
"""

from __future__ import annotations

import os
import sys

import numpy as np

from isl import presets
from isl.data import convert, synthetic
from isl.io import model_dir as model_dir_lib
from isl.model import builder, saving
from isl.train import dense_eval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gpu_import  # noqa: E402
import gpu_pack  # noqa: E402


def test_pack_writes_the_training_wells_as_converted(tmp_path):
    config = presets.resolve_config("condition_b")
    wells = str(tmp_path / "wells")
    synthetic.write_synthetic_dataset(wells, num_wells=2, size=64, num_z=13, seed=3)
    records = str(tmp_path / "records")
    convert.convert([wells], records, config.channels, eval_wells=["A2"])
    packed_path = str(tmp_path / "well.npz")
    assert gpu_pack.main(["gpu_pack.py", records, packed_path]) == 0
    packed = np.load(packed_path)
    assert packed["inputs_0"].shape == (64, 64, 13) and packed["inputs_0"].dtype == np.uint16
    assert packed["targets_0"].shape == (64, 64, len(config.channels.target_channels))
    (image,) = dense_eval.load_split_images(records, config, split="train")
    scales = packed["scales_0"]
    np.testing.assert_allclose(np.moveaxis(packed["inputs_0"] / scales[0], -1, 0), image.stack, rtol=1e-6)
    for index, name in enumerate(config.channels.target_channels):
        np.testing.assert_allclose(packed["targets_0"][..., index] / scales[1 + index], image.targets[name][0],
                                   rtol=1e-6)


def test_import_joins_the_parts_into_a_model_folder(tmp_path):
    config = presets.resolve_config("tiny")
    model = builder.build_model(config)
    whole = tmp_path / "whole.weights.h5"
    model.save_weights(str(whole))
    data = whole.read_bytes()
    source = tmp_path / "gpu_out"
    source.mkdir()
    part_size = len(data) // 3 + 1
    for index in range(0, len(data), part_size):
        (source / f"paper.weights.h5.part{index // part_size:02d}").write_bytes(data[index : index + part_size])
    from isl import config as config_lib

    config_lib.save_config(config, str(source / "paper.config.json"))
    assert gpu_import.main(["gpu_import.py", str(source), str(tmp_path / "models")]) == 0
    folder = tmp_path / "models" / "paper"
    assert (folder / model_dir_lib.WEIGHTS_FILE).read_bytes() == data
    loaded, _ = saving.load_model_dir(str(folder))
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def test_import_refuses_a_folder_without_configs(tmp_path, capsys):
    assert gpu_import.main(["gpu_import.py", str(tmp_path), str(tmp_path / "models")]) == 2
    assert "no NAME.config.json" in capsys.readouterr().err
