"""Packs a converted training split into one small .npz for `scripts/gpu_train.py` (runs where TensorFlow is).

The GPU machines this project is lent have JAX and PyTorch but no TensorFlow, and nothing can be installed
there from the network; `scripts/gpu_train.py` therefore trains with Keras 3 on JAX from raw numpy arrays.
This script decodes the wells of a split written by `isl convert` (our TFRecord reader, so the pixels are
exactly those `isl train` sees) and stores, per well:

    inputs_<i>   [height, width, num_source_z] uint16, the transmitted-light slices
    targets_<i>  [height, width, T] uint16, the config's target channels in vocabulary order
    scales_<i>   [1 + T] float32, the input type's maximum, then each target's maximum value

Usage: python scripts/gpu_pack.py DATA_DIR OUT.npz [PRESET]   (PRESET default condition_b)
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    data_dir, out_path = argv[1], argv[2]
    preset = argv[3] if len(argv) == 4 else "condition_b"
    import tensorflow as tf

    from isl import presets
    from isl.data import decoder, pipeline

    config = presets.resolve_config(preset)
    names = list(config.channels.target_channels)
    arrays: dict[str, np.ndarray] = {}
    files = pipeline.list_shards(data_dir, "train")
    for index, serialized in enumerate(tf.data.TFRecordDataset(files)):
        decoded = decoder.decode(serialized)
        well_names = [name.decode() for name in decoded["target_channels"].numpy()]
        missing = [name for name in names if name not in well_names]
        if missing:
            print(f"{data_dir}: well {index} lacks target channels {missing}", file=sys.stderr)
            return 2
        columns = [well_names.index(name) for name in names]
        arrays[f"inputs_{index}"] = decoded["inputs"].numpy()
        arrays[f"targets_{index}"] = decoded["targets"].numpy()[..., columns]
        maxima = decoded["target_max_values"].numpy()[columns]
        arrays[f"scales_{index}"] = np.concatenate([[decoded["input_max_value"].numpy()], maxima]).astype(np.float32)
        print(f"well {index}: inputs {arrays[f'inputs_{index}'].shape}, targets {names}")
    np.savez_compressed(out_path, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
