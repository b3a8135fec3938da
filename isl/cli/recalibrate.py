"""`isl recalibrate`: Re-estimate a trained model's batch-norm statistics (beyond the paper)."""

from __future__ import annotations

import json
import os
from typing import Any

SUMMARY = "Re-estimate a trained model's batch-norm statistics from training batches (beyond the paper)."
DESCRIPTION = """
Re-estimate a trained model's batch-norm moving statistics ("precise BN"),
an option beyond the paper.

The paper's batch norm keeps moving averages with momentum 0.999, a horizon
of about 1,000 steps. After a short run (the few thousand steps a CPU can
afford) they still hold much of their initial values and of the statistics
of early weights, and inference-mode predictions suffer. This command sets
every batch-norm layer's moving mean and variance to the average of the
batch statistics over --batches training batches of --data_dir (the same
pipeline and augmentation as training). The weights are not changed.

Not `isl calibrate`, which leaves the weights alone and fits the predicted
uncertainty (a temperature per channel) on a validation split; after
recalibrating, run `isl calibrate` again.

Writes config.json, model.weights.h5 and recalibration.json into
--output_dir (default: --model_dir, whose weights file is then replaced
atomically; its checkpoints are left as they are).

Example:
  isl recalibrate --model_dir=models/condb --data_dir=records --batches=100 --output_dir=models/condb_recalibrated
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("model_dir", None, "Model directory from `isl train`.", flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "TFRecords folder written by `isl convert` (its training split is used).",
                        flag_values=flag_values)
    flags.DEFINE_integer("batches", 100, "Training batches to average.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where to write the recalibrated model (default: --model_dir).",
                        flag_values=flag_values)
    flags.DEFINE_integer("seed", 1, "Seed of the batches drawn.", flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl import progress as progress_lib
    from isl.data import pipeline
    from isl.io import atomic
    from isl.io import model_dir as model_dir_lib
    from isl.model import saving
    from isl.train import recalibrate as recalibrate_lib

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("model_dir", "data_dir"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    if flag_values["batches"].value < 1:
        raise errors.InputError(f"--batches must be >= 1. Received: {flag_values['batches'].value}")
    model_dir = flag_values["model_dir"].value
    output_dir = flag_values["output_dir"].value or model_dir
    if os.path.isfile(model_dir_lib.ModelDir(output_dir).readout):
        raise errors.InputError(
            f"{output_dir}: holds a read-out ({model_dir_lib.READOUT_FILE}) fitted to the current batch-norm "
            "statistics; recalibrate into another --output_dir and fit the read-out again with isl readout."
        )
    # In the precision it was trained with (mixed-precision batch norm
    # computes its statistics in float32), fed the training patches.
    model, config = saving.load_model_dir(model_dir)
    dataset = pipeline.build_dataset(flag_values["data_dir"].value, config, split="train",
                                     seed=flag_values["seed"].value)
    total = flag_values["batches"].value
    bar = progress_lib.Progress(total, "recalibrate", enabled=flag_values["progress"].value)
    figures = recalibrate_lib.recalibrate_batch_norm(
        model, dataset, total, progress=lambda done, _: bar.update(1)
    )
    bar.close()
    os.makedirs(output_dir, exist_ok=True)
    saving.save_model_dir(model, config, output_dir)
    trained_channels = model_dir_lib.ModelDir(model_dir).trained_channels
    if os.path.isfile(trained_channels) and os.path.abspath(output_dir) != os.path.abspath(model_dir):
        with open(trained_channels) as file:
            atomic.write_text(model_dir_lib.ModelDir(output_dir).trained_channels, file.read())
    record = {
        "source_model_dir": os.path.abspath(model_dir),
        "data_dir": os.path.abspath(flag_values["data_dir"].value),
        "seed": flag_values["seed"].value,
        **figures,
    }
    record_path = os.path.join(output_dir, "recalibration.json")
    atomic.write_text(record_path, json.dumps(record, indent=2) + "\n")
    print(
        f"Recalibrated {figures['layers']} batch-norm layers over {figures['batches']} batches of "
        f"{config.train.batch_size}: mean |shift| of the moving means {figures['mean_shift']:.4f}, "
        f"median new/old variance {figures['variance_ratio']:.3f}."
    )
    print(f"Model: {os.path.abspath(output_dir)} (config.json, model.weights.h5, recalibration.json)")
    return {"output_dir": os.path.abspath(output_dir), **figures}
