"""`isl benchmark`: Measure speed and memory: 'isl benchmark data|model|predict|scaling'."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

SUMMARY = "Measure speed and memory: 'isl benchmark data|model|predict|scaling'."
DESCRIPTION = """
Measure speed and memory: 'isl benchmark data|model|predict|scaling'.

  data     patches/s delivered by the training pipeline (on --data_dir, or a
           synthetic well the size of the real sample) and the peak RSS of
           converting one well.
  model    forward/backward step time of the model; with --output_sizes,
           labelled output pixels per second and per CPU-second of a
           training step at each output size, float32 and bfloat16.
  predict  whole-well prediction: the old plan and the new one side by side
           (seconds, output px/s, peak RSS, ratio; --model_dir, --plans).
  scaling  seconds and peak RSS of predict, evaluate, readout, U-Net
           training, convert, export and the other kinds' predict (--commands:
           predict, evaluate, readout, train, convert, export, predict_unet
           with --unet_model_dir, predict_readout with --readout_model_dir,
           predict_ensemble with --ensemble_model_dir) against image size (--sizes, default
           512,1024,2048,4096): --sample_dir is mirrored to each size in the
           work folder --data_dir; each command runs in its own process and
           its own peak RSS is reported, with the CPU model and the load.

Each benchmark prints its figures and the command line that reproduces them;
--json prints them as one JSON line. Timings on a shared machine are noisy:
compare ratios measured in the same run.

Example:
  isl benchmark data --data_dir=condition_b_sample --json
"""

# Benchmark name -> module with `run(options: BenchmarkOptions) -> dict`.
BENCHMARKS: dict[str, str] = {
    "data": "isl.benchmarks.data",
    "model": "isl.benchmarks.model",
    "predict": "isl.benchmarks.predict",
    "scaling": "isl.benchmarks.scaling",
}


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("data_dir", None, "Data to benchmark on: an image folder or an 'isl convert' output.",
                        flag_values=flag_values)
    flags.DEFINE_string("sample_dir", None, "A real sample well (image folder).", flag_values=flag_values)
    flags.DEFINE_string("preset", "paper", "Preset (model geometry, batch size).", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 3, "Timing repeats (the median and the spread are reported).",
                         flag_values=flag_values)
    flags.DEFINE_integer("image_size", None, "Image side for synthetic inputs (default: per benchmark).",
                         flag_values=flag_values)
    flags.DEFINE_integer("batch_size", None, "Batch size (default: the preset's).", flag_values=flag_values)
    flags.DEFINE_integer("steps", None, "Steps (batches) per timing repeat (default: per benchmark).",
                         flag_values=flag_values)
    flags.DEFINE_string("precision", "float32", "Compute precision: float32 or bfloat16 (model: comma-separated list; "
                        "predict: one, and with --model_dir as trained unless given).",
                        flag_values=flag_values)
    flags.DEFINE_string("output_sizes", "", "model: measure training throughput (labelled output pixels per "
                        "second and per CPU-second) at these output sizes, e.g. 8,24,56,120,248.",
                        flag_values=flag_values)
    flags.DEFINE_float("memory_budget_gb", 16.0, "model --output_sizes: the largest batch whose modelled training "
                       "step fits this many GB is used.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "predict: a trained model directory (default: the preset, random "
                        "weights).", flag_values=flag_values)
    flags.DEFINE_string("plans", "old,new", "predict: plans to compare, comma-separated: old, new, new_xla, one.",
                        flag_values=flag_values)
    flags.DEFINE_integer("tile_size", 0, "predict: tile side (0: from memory).", flag_values=flag_values)
    flags.DEFINE_string("sizes", "512,1024,2048,4096", "scaling: image sides, comma-separated.",
                        flag_values=flag_values)
    flags.DEFINE_string("commands", "predict,evaluate,readout,train", "scaling: commands to measure, "
                        "comma-separated, of predict, evaluate, readout, train, convert, export, predict_unet, "
                        "predict_readout, predict_ensemble.",
                        flag_values=flag_values)
    flags.DEFINE_string("unet_model_dir", None, "scaling: a unet_regression model for predict_unet.",
                        flag_values=flag_values)
    flags.DEFINE_string("readout_model_dir", None, "scaling: a read-out model folder for predict_readout.",
                        flag_values=flag_values)
    flags.DEFINE_string("ensemble_model_dir", None, "scaling: an ensemble folder for predict_ensemble.",
                        flag_values=flag_values)
    flags.DEFINE_integer("model_steps", 2, "data: timed training steps of the preset's model, to compare the "
                         "pipeline's patches/s with what the model consumes (0 skips).", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors

    if len(positional) != 1 or positional[0] not in BENCHMARKS:
        raise errors.InputError(
            f"name one benchmark: {' | '.join(BENCHMARKS)}. Received: {' '.join(positional) or 'nothing'}"
        )
    name = positional[0]
    try:
        module = importlib.import_module(BENCHMARKS[name])
    except ModuleNotFoundError as error:
        if error.name == BENCHMARKS[name]:
            raise errors.InputError(f"benchmark {name!r} is not implemented yet.") from None
        raise
    return module.run(options_from_flags(flag_values))


def options_from_flags(flag_values: Any) -> Any:
    """The `isl.benchmarks.options.BenchmarkOptions` the flags describe."""
    from isl.benchmarks.options import BenchmarkOptions

    names = [field.name for field in dataclasses.fields(BenchmarkOptions) if field.name != "precision_given"]
    values = {name: flag_values[name].value for name in names if name in flag_values}
    values = {name: value for name, value in values.items() if value is not None or name in _OPTIONAL}
    return BenchmarkOptions(**values, precision_given="precision" in flag_values and flag_values["precision"].present)


# Options whose None means "per benchmark" (the others fall back to the dataclass default).
_OPTIONAL = ("data_dir", "sample_dir", "image_size", "batch_size", "steps", "model_dir")
