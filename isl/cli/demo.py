"""`isl demo`: Run the whole pipeline on embedded synthetic data, end to end."""

from __future__ import annotations

from typing import Any

SUMMARY = "Run the whole pipeline on embedded synthetic data, end to end."
DESCRIPTION = """
Run the whole pipeline on embedded synthetic data, end to end.

Steps (each prints what it made and where):
  1. generate a small synthetic dataset of neurons in the lab's file naming
     (13 phase-contrast z slices + DAPI/MAP2/NFH confocal, 16-bit PNG) into
     OUTPUT_DIR/raw;
  2. convert it into TFRecords in OUTPUT_DIR/records (1 well in 4 held out);
  3. pull batches through the training pipeline and report the tensor shapes
     and patches per second;
  4. train the model (tiny preset: a few minutes on 2 cores) into
     OUTPUT_DIR/model;
  5. predict the held-out well at full size (median and standard deviation
     of every pixel's 256-bin distribution, plus the paper's error panels)
     into OUTPUT_DIR/predictions;
  6. evaluate: Pearson r per channel against the real labels, MAE, RMSE,
     PSNR, SSIM and the calibration of the predicted intervals.

Uses the `tiny` preset unless told otherwise. Re-running replaces
OUTPUT_DIR/raw, records and predictions; training resumes from the model
folder's last checkpoint (or does nothing if it already finished): delete
OUTPUT_DIR to start afresh.

Example:
  isl demo --output_dir=isl_demo
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("output_dir", "isl_demo", "Demo folder.", flag_values=flag_values)
    flags.DEFINE_string("preset", "tiny", "Preset for the model geometry and channels.", flag_values=flag_values)
    flags.DEFINE_string("config", None, "JSON config file layered over the preset.", flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).",
                              flag_values=flag_values)
    flags.DEFINE_integer("num_wells", 4, "Synthetic wells to generate.", flag_values=flag_values)
    flags.DEFINE_integer("image_size", 256, "Side of the synthetic images in pixels.", flag_values=flag_values)
    flags.DEFINE_integer("num_z", 13, "Transmitted-light z slices per well.", flag_values=flag_values)
    flags.DEFINE_integer("batches", 8, "Training batches to pull through the pipeline.", flag_values=flag_values)
    flags.DEFINE_integer("train_steps", 500, "Training steps (batch 16).", flag_values=flag_values)
    flags.DEFINE_list(
        "steps",
        [],
        "Run only these demo steps (generate, convert, pipeline, train, predict, evaluate); default: all.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("seed", 0, "Random seed of the synthetic data and the pipeline.", flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show progress bars on stderr.", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import presets
    from isl import demo
    from isl import errors

    if positional:
        raise errors.InputError(f"unexpected arguments {positional}.")
    for name in ("num_wells", "image_size", "num_z", "batches", "train_steps"):
        if flag_values[name].value < 1:
            raise errors.InputError(f"--{name} must be >= 1. Received: {flag_values[name].value}")
    config = presets.resolve_config(
        flag_values["preset"].value, flag_values["config"].value, list(flag_values["set"].value or [])
    )
    results = demo.run_demo(
        flag_values["output_dir"].value,
        config=config,
        num_wells=flag_values["num_wells"].value,
        image_size=flag_values["image_size"].value,
        num_z=flag_values["num_z"].value,
        num_batches=flag_values["batches"].value,
        train_steps=flag_values["train_steps"].value,
        steps=list(flag_values["steps"].value or []) or None,
        seed=flag_values["seed"].value,
        show_progress=flag_values["progress"].value,
    )
    print(f"Demo outputs are in {results['output_dir']}")
    return results
