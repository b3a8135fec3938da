"""Turns the weight parts written by `scripts/gpu_train.py` into model folders (runs where TensorFlow is).

For each NAME in the folder (paper, unet): joins NAME.weights.h5.partNN into model.weights.h5, copies
NAME.config.json to config.json, in OUT_DIR/NAME, and checks that `isl.model.saving.load_model_dir` loads it
(TensorFlow backend; the weights were written by Keras on JAX under the same layer names). The folders are
then ordinary model folders for `isl predict`, `isl evaluate` and `isl recalibrate`.

Usage: python scripts/gpu_import.py GPU_OUT_DIR OUT_DIR
"""

from __future__ import annotations

import glob
import os
import shutil
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    source, destination = argv[1], argv[2]
    from isl.io import model_dir as model_dir_lib
    from isl.model import saving

    names = sorted({os.path.basename(path).split(".")[0] for path in glob.glob(os.path.join(source, "*.config.json"))})
    if not names:
        print(f"{source}: no NAME.config.json written by scripts/gpu_train.py", file=sys.stderr)
        return 2
    for name in names:
        parts = sorted(glob.glob(os.path.join(source, f"{name}.weights.h5.part*")))
        if not parts:
            print(f"{source}: {name}.config.json has no weight parts", file=sys.stderr)
            return 2
        folder = os.path.join(destination, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, model_dir_lib.WEIGHTS_FILE), "wb") as whole:
            for part in parts:
                with open(part, "rb") as handle:
                    whole.write(handle.read())
        shutil.copyfile(os.path.join(source, f"{name}.config.json"), os.path.join(folder, model_dir_lib.CONFIG_FILE))
        model, config = saving.load_model_dir(folder)
        print(f"{folder}: {config.model.architecture}, {model.count_params():,} weights, loads")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
