"""`isl predict`: Predict fluorescence images for whole wells of any size."""

from __future__ import annotations

import os
from typing import Any

SUMMARY = "Predict fluorescence images for whole wells of any size."
DESCRIPTION = """
Predict fluorescence images for whole wells of any size.

Runs the network fully convolutionally on large tiles, covering both 8-px
phases per axis, so the result equals the original's 250-px patch-by-patch
stitching (isl_reference.md §5.1) at a fraction of the time. Writes, per
well, into OUTPUT_DIR/<well>/: one 16-bit image per target channel and
statistic in the lab's naming (kind-PREDICTED, statistic-MEDIAN, ...);
when the well holds ground truth, target_error_panel.png,
input_error_panel.png and calibration TIFFs for `isl evaluate`; and
prediction.json.

  isl predict --model_dir=checkpoints/paper --input_dir=data/well_A4 --output_dir=predictions

SIGTERM stops it after the running tile and exits with code 143: finished
wells stay (each with its prediction.json); the well in progress may hold
some of its images but no prediction.json; no file is half-written.

--border=reflect (default) keeps the input's height and width (border pixels
see a reflected context); --border=valid gives the interior only, every
pixel from real context; --border=original the released code's window
[121, 121 + 128k).
"""
IMPLEMENTED = True
# After SIGTERM, a watcher ends the command this long after the signal if the
# main thread is still inside one native call (a tile run, a training step).
SIGTERM_GRACE_SECONDS = 5.0


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("model_dir", None, "Model directory from `isl train` (config.json + model.weights.h5).", flag_values=flag_values)
    flags.DEFINE_string("saved_model", None, "Exported SavedModel directory from `isl export` (uses its 'logits' signature).", flag_values=flag_values)
    flags.DEFINE_multi_string("input_dir", [], "Folder of one well; repeat for several wells.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where to write; one sub-folder per well.", flag_values=flag_values)
    flags.DEFINE_list(
        "statistics", ["median"],
        "Per-pixel statistics to write: median (the paper's), mean, std, mode, p_nonzero, entropy, and "
        "quantiles q01..q99 (e.g. q05,q95 for a 90% band).",
        flag_values=flag_values,
    )
    flags.DEFINE_list("channels", [], "Target channels to predict (default: those the model was trained on, per its trained_channels.json; else all of its target channels).", flag_values=flag_values)
    flags.DEFINE_enum("border", "reflect", ["reflect", "valid", "original"], "Output geometry (see above).", flag_values=flag_values)
    flags.DEFINE_integer("tile_size", 0, "Largest tile side in input pixels (250 + 16k for the paper model); 0 chooses it from available RAM.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 1, "Tiles per network call.", flag_values=flag_values)
    flags.DEFINE_enum("format", "png", ["png", "tiff"], "Image format of the predictions (16-bit either way).", flag_values=flag_values)
    flags.DEFINE_bool("panels", True, "Write the error panels when the well holds ground truth.", flag_values=flag_values)
    flags.DEFINE_bool("simplify_panels", True, "3-column panels (median, truth, error) as the original's default; --nosimplify_panels gives 12 columns.", flag_values=flag_values)
    flags.DEFINE_bool("save_calibration", True, "With ground truth, write per-pixel calibration TIFFs (probability of the true bin, CDF below it) for `isl evaluate`.", flag_values=flag_values)
    flags.DEFINE_enum("precision", "", ["", "float32", "bfloat16"], "Compute precision; '' runs as trained. bfloat16 needs --model_dir.", flag_values=flag_values)
    flags.DEFINE_enum("normalization", None, ["none", "paper", "percentile"],
                      "Transmitted-light normalisation of the inputs (default: the model's data.normalization, "
                      "recorded from its training data); e.g. paper for raw microscope data with a model trained "
                      "on the paper's images.", flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress line on stderr.", flag_values=flag_values)


def stopped_hint(flag_values: Any) -> str:
    """Where things stand after SIGTERM (exit code 143)."""
    return (f"Wells listed above are complete under {flag_values['output_dir'].value} (each has "
            "prediction.json); the well in progress is not. Run the command again for the rest.")


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.infer import well as well_lib

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    if not flag_values["input_dir"].value:
        raise errors.InputError("--input_dir is required (the folder of one well; repeat for several).")
    if not flag_values["output_dir"].value:
        raise errors.InputError("--output_dir is required.")
    if flag_values["tile_size"].value < 0 or flag_values["batch_size"].value < 1:
        raise errors.InputError("--tile_size must be >= 0 and --batch_size >= 1.")
    predictor = well_lib.load_predictor(
        flag_values["model_dir"].value, flag_values["saved_model"].value, flag_values["precision"].value
    )
    if flag_values["normalization"].value is not None:
        import dataclasses

        config = predictor.config
        predictor.config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, normalization=flag_values["normalization"].value)
        )
    output_dir = flag_values["output_dir"].value
    wells = []
    for input_dir in flag_values["input_dir"].value:
        summary = well_lib.predict_well(
            predictor,
            input_dir,
            output_dir,
            statistics=flag_values["statistics"].value,
            channels=flag_values["channels"].value or None,
            border_mode=flag_values["border"].value,
            tile_size=flag_values["tile_size"].value or None,
            image_format=flag_values["format"].value,
            panels=flag_values["panels"].value,
            simplified_panels=flag_values["simplify_panels"].value,
            save_calibration=flag_values["save_calibration"].value,
            batch_size=flag_values["batch_size"].value,
            progress_enabled=flag_values["progress"].value,
        )
        height, width = summary["region"]["height"], summary["region"]["width"]
        print(
            f"{summary['well']}: {len(summary['channels'])} channel(s) x {len(summary['statistics'])} statistic(s), "
            f"{height} x {width} px in {summary['seconds']:.1f} s ({summary['num_runs']} tile runs)"
            f" -> {summary['well_dir']}"
        )
        wells.append(summary)
    print(f"Predictions written under {os.path.abspath(output_dir)}")
    return {
        "output_dir": os.path.abspath(output_dir),
        "wells": [
            {
                "well": summary["well"],
                "well_dir": summary["well_dir"],
                "files": summary["files"],
                "panels": summary["panels"],
                "calibration_files": summary["calibration_files"],
                "seconds": summary["seconds"],
            }
            for summary in wells
        ],
    }
