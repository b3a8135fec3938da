"""`isl predict`: Predict fluorescence images for whole wells of any size."""

from __future__ import annotations

import os
from typing import Any

SUMMARY = "Predict fluorescence images for whole wells of any size."
DESCRIPTION = """
Predict fluorescence images for whole wells of any size.

Runs the network fully convolutionally on large tiles, so the result equals
the model's own patch-by-patch prediction at a fraction of the time: for
models trained with 8-px outputs, the original's 250-px patches on an 8-px
grid (four runs per tile, one per 8-px phase and axis); for models trained
with outputs of 8 + 16k px (e.g. 24), patches on a 16-px grid (one run per
tile).

Writes, per well, into OUTPUT_DIR/<well>/: one 16-bit image per target
channel and statistic in the lab's naming (kind-PREDICTED, statistic-MEDIAN,
...); when the well holds ground truth, target_error_panel.png,
input_error_panel.png and calibration TIFFs for `isl evaluate`; and
prediction.json.

  isl predict --model_dir=checkpoints/condition_b_sample --input_dir=well_A4 --output_dir=predictions

Memory: the outputs are written band by band as the tiles finish, and the
panels drawn downscaled, so the run stays within about 3 GB (tiles sized for
it; the decoded well, about 52 bytes per pixel, is what still grows with the
image). It prints its expected peak first and exits with code 2, naming the
flag to change (--tile_size, --statistics, --nopanels), when that would not
fit the free memory.

SIGTERM stops it after the running tile and exits with code 143: finished
wells stay (each with its prediction.json); the well in progress may hold
some of its images but no prediction.json; no file is half-written.

--border=reflect (default) keeps the input's height and width (border pixels
see a reflected context); --border=valid gives the interior only, every
pixel from real context; --border=original the released code's window
[121, 121 + 128k).

--region=r0:r1,c0:c1 predicts a window, for every kind of model: the
network's heads and a read-out give the same pixels as the whole-well
prediction; the U-Net regression reads its training patch side of context
around the window (close to, not equal to, the whole field). Files of
channels the model does not have are ignored, with one line saying so.

The wells are read with the model's recorded data contract (config.json:
data.normalization, data.channel_map); --normalization, --channel_map and
--set data.* override it. A transmitted-light stack of another modality
(BRIGHTFIELD for a PHASE_CONTRAST model) is an error until you map it, e.g.
--channel_map=BRIGHTFIELD=PHASE_CONTRAST. A flag a kind of model cannot
honour (--tile_size for a read-out, --border=valid for the U-Net
regression, ...) exits with code 2 and the reason; nothing is ignored.
--names=short writes DAPI_CONFOCAL_MEDIAN.png instead of the lab's
150-character names. TensorFlow's start-up messages are hidden unless
ISL_TF_LOG=1 (or TF_CPP_MIN_LOG_LEVEL=0/1) is set.

--phases=1 runs one pass per tile for 8-px models too: about 4x faster,
but half the pixels per axis come from output positions the model never
trained (measured on the real sample with trained weights: medians equal
in 94% of pixels, mean difference 0.07 of 255 levels, at most 8).
"""
# After SIGTERM, a watcher ends the command this long after the signal if the
# main thread is still inside one native call (a tile run, a training step).
SIGTERM_GRACE_SECONDS = 5.0


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    from isl.cli import data_flags

    flags.DEFINE_string("model_dir", None, "Model directory from `isl train` (config.json + model.weights.h5).",
                        flag_values=flag_values)
    flags.DEFINE_string("saved_model", None, "Exported SavedModel directory from `isl export` (uses its 'logits' "
                        "signature).", flag_values=flag_values)
    flags.DEFINE_multi_string("input_dir", [], "Folder of one well; repeat for several wells.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where to write; one sub-folder per well.", flag_values=flag_values)
    flags.DEFINE_list(
        "statistics", ["median"],
        "Per-pixel statistics to write: median (the paper's), mean, std, mode, p_nonzero, entropy, and "
        "quantiles q01..q99 (e.g. q05,q95 for a 90% band).",
        flag_values=flag_values,
    )
    flags.DEFINE_list("channels", [], "Target channels to predict (default: those the model was trained on, per its "
                      "trained_channels.json; else all of its target channels).", flag_values=flag_values)
    flags.DEFINE_enum("border", "reflect", ["reflect", "valid", "original"], "Output geometry (see above).",
                      flag_values=flag_values)
    flags.DEFINE_integer("tile_size", 0, "Largest tile side in input pixels (250 + 16k for the paper model, 266 + 16k "
                         "for 24-px models; a smaller value is an error naming the valid sizes); 0 chooses it from "
                         "the measured memory per pixel and the available RAM.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 1, "Tiles per network call.", flag_values=flag_values)
    flags.DEFINE_enum("format", "png", ["png", "tiff"], "Image format of the predictions (16-bit either way).",
                      flag_values=flag_values)
    flags.DEFINE_enum("names", "lab", ["lab", "short"], "Output file names: lab (the paper's file-name grammar, "
                      "about 150 characters, e.g. lab-...,channel-DAPI_CONFOCAL,...,kind-PREDICTED.png) or short "
                      "(DAPI_CONFOCAL_MEDIAN.png); prediction.json lists the files either way.",
                      flag_values=flag_values)
    flags.DEFINE_bool("panels", True, "Write the error panels when the well holds ground truth.",
                      flag_values=flag_values)
    flags.DEFINE_enum("panel_bits", "16", ["16", "8"], "Error panels as the original's 16-bit RGB PNGs, or 8-bit "
                      "PNGs of at most 2^21 pixels, small enough to mail.", flag_values=flag_values)
    flags.DEFINE_bool("simplify_panels", True, "3-column panels (median, truth, error) as the original's default; "
                      "--nosimplify_panels gives 12 columns.", flag_values=flag_values)
    flags.DEFINE_bool("save_calibration", True, "With ground truth, write per-pixel calibration TIFFs (probability of "
                      "the true bin, CDF below it) for `isl evaluate`.", flag_values=flag_values)
    flags.DEFINE_bool("calibration", True, "Apply the model folder's calibration.json (isl calibrate: a temperature "
                      "or spread scale per channel); --nocalibration predicts as trained. A folder without one "
                      "predicts uncalibrated and says so.", flag_values=flag_values)
    flags.DEFINE_enum("precision", "", ["", "float32", "bfloat16"], "Compute precision; '' runs as trained (a "
                      "bfloat16-trained model runs in float32 on a CPU without native bfloat16, amx_bf16 or "
                      "avx512_bf16, where float32 is faster). bfloat16 needs --model_dir.", flag_values=flag_values)
    data_flags.define(flag_values, ("normalization", "channel_map", "set"))
    flags.DEFINE_bool("progress", True, "Show a progress line on stderr.", flag_values=flag_values)
    flags.DEFINE_integer(
        "phases", 0,
        "0: exact (the model's own patch-wise prediction; one run per tile for models trained with outputs of "
        "8 + 16k, k >= 1, e.g. 24 px; four runs per tile for 8-px models). 1: one run per tile for any model; "
        "for 8-px models an approximation (see README).", flag_values=flag_values,
    )
    data_flags.define(flag_values, ("region",), region_help=(
        "Predict only this window r0:r1,c0:c1 (image pixels, ends exclusive; an empty end means the edge), "
        "reading context from the well around it; every model kind."))
    flags.DEFINE_bool("tta", False, "Test-time augmentation: average the predictions of the eight rotations and "
                      "mirror images of the input, mapped back (bin probabilities, or a U-Net regression's values); "
                      "8x the time. Any model folder or ensemble (isl ensemble).", flag_values=flag_values)
    flags.DEFINE_bool(
        "inference_graph", True,
        "Fold batch norm into the activations for prediction (same outputs up to float rounding; --model_dir only).",
        flag_values=flag_values,
    )


def stopped_hint(flag_values: Any) -> str:
    """Where things stand after SIGTERM (exit code 143)."""
    return (f"Wells listed above are complete under {flag_values['output_dir'].value} (each has "
            "prediction.json); the well in progress is not. Run the command again for the rest.")


def calibration_note(predictor: Any) -> str:
    """One line: whether the predicted distributions are calibrated (isl calibrate), and how (the kind says)."""
    if predictor.calibration is None:
        return predictor.kind.uncalibrated_note(predictor)
    if not predictor.apply_calibration:
        return "Uncalibrated (--nocalibration): the model folder's calibration.json is not applied."
    if predictor.calibration_in_graph:
        return "Calibrated: the export applies its calibration inside the graph."
    return predictor.kind.calibration_note(predictor)


def precision_note(predictor: Any, requested: str) -> str:
    """One line: the compute precision and why (asked for, as trained, or chosen by the CPU)."""
    from isl.infer import well as well_lib

    dtype = predictor.compute_dtype
    if requested:
        return f"Precision: {dtype} (--precision)."
    if predictor.model is None:
        return f"Precision: {dtype} (as exported)."
    if predictor.trained_precision == "bfloat16" and dtype == "float32":
        return ("Precision: float32: the model was trained in bfloat16, but this CPU has no native bfloat16 "
                "(amx_bf16 or avx512_bf16), where float32 is faster; --precision=bfloat16 runs as trained.")
    native = " on this CPU's native bfloat16" if dtype == "bfloat16" and well_lib.native_bfloat16() else ""
    return f"Precision: {dtype} (as trained{native})."


def refuse_unsupported(predictor: Any, flag_values: Any) -> None:
    """Raises InputError (exit 2) for a flag given with a value the model's kind cannot honour
    (`ModelKind.unsupported`: name -> (the value that changes nothing, why))."""
    from isl import errors

    kind = predictor.kind.label(predictor)
    for name, (neutral, reason) in predictor.kind.unsupported(predictor).items():
        flag = flag_values[name]
        if not flag.present:
            continue
        if name == "save_calibration" and not flag.value:
            continue
        if name != "save_calibration" and flag.value == neutral:
            continue
        value = flag.value if not isinstance(flag.value, bool) else ("" if flag.value else "no")
        shown = f"--{value}{name}" if isinstance(flag.value, bool) else f"--{name}={value}"
        raise errors.InputError(f"{shown} does not apply to this model ({kind.replace('_', ' ')}): {reason}.")


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.cli import data_flags
    from isl.infer.kinds import registry

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    if not flag_values["input_dir"].value:
        raise errors.InputError("--input_dir is required (the folder of one well; repeat for several).")
    if not flag_values["output_dir"].value:
        raise errors.InputError("--output_dir is required.")
    if flag_values["tile_size"].value < 0 or flag_values["batch_size"].value < 1:
        raise errors.InputError("--tile_size must be >= 0 and --batch_size >= 1.")
    if flag_values["phases"].value not in (0, 1):
        raise errors.InputError(f"--phases must be 0 (exact) or 1. Received: {flag_values['phases'].value}")
    window = data_flags.region(flag_values)
    predictor = registry.load_predictor(
        flag_values["model_dir"].value, flag_values["saved_model"].value, flag_values["precision"].value,
        inference_graph=flag_values["inference_graph"].value, apply_calibration=flag_values["calibration"].value,
        tta=flag_values["tta"].value,
    )
    refuse_unsupported(predictor, flag_values)
    statistics = flag_values["statistics"].value
    if not flag_values["statistics"].present and predictor.kind.default_statistics(predictor) is not None:
        statistics = list(predictor.kind.default_statistics(predictor))
    predictor.config = data_flags.model_config(
        predictor.config, flag_values, flag_values["model_dir"].value or flag_values["saved_model"].value, "predict")
    print(calibration_note(predictor))
    if "precision" not in predictor.kind.unsupported(predictor):  # A kind that runs as trained says nothing.
        print(precision_note(predictor, flag_values["precision"].value))
    output_dir = flag_values["output_dir"].value
    wells = []
    for input_dir in flag_values["input_dir"].value:
        summary = registry.predict_well(
            predictor,
            input_dir,
            output_dir,
            statistics=statistics,
            channels=flag_values["channels"].value or None,
            border_mode=flag_values["border"].value,
            tile_size=flag_values["tile_size"].value or None,
            image_format=flag_values["format"].value,
            panels=flag_values["panels"].value,
            simplified_panels=flag_values["simplify_panels"].value,
            panel_bits=int(flag_values["panel_bits"].value),
            save_calibration=flag_values["save_calibration"].value,
            batch_size=flag_values["batch_size"].value,
            progress_enabled=flag_values["progress"].value,
            phases=flag_values["phases"].value,
            window=window,
            names=flag_values["names"].value,
        )
        report_well(summary)
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


def report_well(summary: dict[str, Any]) -> None:
    """Prints what `isl predict` did for one well (from its prediction.json contents)."""
    ignored = summary["ignored_files"]
    if ignored:
        names = ", ".join(os.path.basename(path) for path in ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        print(f"{summary['well']}: ignoring {len(ignored)} file(s) of channels the model does not have ({names}).")
    height, width = summary["region"]["height"], summary["region"]["width"]
    if summary["exact"]:
        approximate = ""
    elif "context_pixels" in summary:
        what = "tiles" if summary["num_runs"] > 1 else "window"
        approximate = f", {what} read with {summary['context_pixels']} px of context: approximate"
    else:
        approximate = ", --phases=1: approximate"
    print(
        f"{summary['well']}: {len(summary['channels'])} channel(s) x {len(summary['statistics'])} statistic(s), "
        f"{height} x {width} px in {summary['seconds']:.1f} s "
        f"({summary.get('runs_described') or str(summary['num_runs']) + ' tile runs' + approximate})"
        f" -> {summary['well_dir']}"
    )
    print(f"{summary['well']}: read {summary['modality'] or 'the stack'} with normalization "
          f"{summary['normalization']}" + (f", channel map {','.join(summary['channel_map'])}"
                                           if summary["channel_map"] else "")
          + ("; panels: " + ", ".join(summary["panels"].values()) if summary["panels"] else ""))
