"""`isl curves`: Plot the training curves of one or more runs into a PNG."""

from __future__ import annotations

import os
from typing import Any

SUMMARY = "Plot the training curves of one or more runs into a PNG."
DESCRIPTION = """
Plot the training curves of one or more runs (model directories of `isl
train`) into one PNG, from their TensorBoard logs; no tensorboard package
is needed. Each run is one line, labelled by --name (default: the folder
name). --tag picks the scalar: `loss` (the total ISL loss, default),
`head_MAXPROJECT_DAPI_CONFOCAL` (one head's loss), `steps_per_second`.
--smooth averages over that many logged points (the trainer logs every 10
steps). The numbers are also written beside the figure as CSV.

Example:
  isl curves --model_dir=runs/paper --model_dir=runs/unet --name=ISL --name=U-Net --output=curves.png
"""


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_multi_string("model_dir", [], "Model directory of `isl train` (repeatable).", flag_values=flag_values)
    flags.DEFINE_multi_string("name", [], "Legend name of each --model_dir, in order (default: folder names).",
                              flag_values=flag_values)
    flags.DEFINE_string("tag", "loss", "Scalar to plot.", flag_values=flag_values)
    flags.DEFINE_enum("split", "train", ["train", "validation"], "Log folder: training or evaluation scalars.",
                      flag_values=flag_values)
    flags.DEFINE_integer("smooth", 5, "Moving-average window in logged points (1: none).", flag_values=flag_values)
    flags.DEFINE_string("title", "", "Figure title.", flag_values=flag_values)
    flags.DEFINE_string("output", None, "PNG to write (a .csv with the same stem is written beside it).",
                        flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.eval import curves
    from isl.eval import report
    from isl.io import atomic

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    model_dirs = list(flag_values["model_dir"].value or [])
    names = list(flag_values["name"].value or [])
    output = flag_values["output"].value
    if not model_dirs:
        raise errors.InputError("--model_dir is required (repeat it for several runs).")
    if not output:
        raise errors.InputError("--output is required.")
    if names and len(names) != len(model_dirs):
        raise errors.InputError(f"{len(names)} --name for {len(model_dirs)} --model_dir; give one per run or none.")
    if flag_values["smooth"].value < 1:
        raise errors.InputError("--smooth must be >= 1.")
    names = names or [os.path.basename(os.path.normpath(directory)) for directory in model_dirs]
    tag, split = flag_values["tag"].value, flag_values["split"].value
    series = []
    csv_lines = ["run,step,value,smoothed"]
    for name, directory in zip(names, model_dirs):
        steps, values = curves.read_scalars(directory, tag, split)
        smoothed = curves.smooth(values, flag_values["smooth"].value)
        series.append((name, steps, smoothed))
        csv_lines += [f"{name},{step},{value:.6g},{mean:.6g}" for step, value, mean in zip(steps, values, smoothed)]
        print(f"{name}: {len(steps)} points, steps {steps[0]}..{steps[-1]}, {tag} {values[0]:.4f} -> "
              f"{values[-1]:.4f} (last {min(len(values), flag_values['smooth'].value)}-point mean {smoothed[-1]:.4f})")
    figure = curves.curves_figure(series, title=flag_values["title"].value, y_label=tag)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    report.write_figure(output, figure)
    csv_path = os.path.splitext(output)[0] + ".csv"
    atomic.write_text(csv_path, "\n".join(csv_lines) + "\n")
    print(f"Wrote {os.path.abspath(output)} and {os.path.abspath(csv_path)}")
    return {"output": os.path.abspath(output), "csv": os.path.abspath(csv_path),
            "final": {name: float(s[-1]) for name, _, s in series}}
