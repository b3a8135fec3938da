"""`isl calibrate`: fit honest uncertainty after training (a temperature, or a read-out's spread and histograms)."""

from __future__ import annotations

import os
from typing import Any

SUMMARY = "Fit each channel's predicted distributions to a validation split (temperature / read-out histograms)."
DESCRIPTION = """
Make the per-pixel uncertainty honest after training (beyond the paper).

Not `isl recalibrate`, which re-estimates the batch-norm statistics of the
network's weights: this command leaves every weight as it is and fits, per
target channel, one number on labelled validation pixels:

  * the 256-bin heads: a temperature T, the distribution becoming
    softmax(logits / T) (T > 1 widens an overconfident distribution);
  * a read-out (`isl readout`, a normal distribution per pixel): a scale
    of its spread, and conditional histograms: the validation pixels are
    grouped by predicted value (16 groups) and spread (2), and each group's
    histogram of true 8-bit levels is mixed into the normal curve with a
    fitted weight. A stain's background (up to 42% of its pixels on one
    level) gets the mass a smooth curve cannot give it; the median stays the
    read-out's value (--noreadout_histograms: the scale only);
  * a U-Net regression (--recipe=unet_regression): its one value per pixel
    becomes the read-out's distribution: a spread per channel (the
    validation RMS error, or the spread the model predicts with
    --recipe=unet_regression_spread), its scale and the same conditional
    histograms. `isl predict` then writes std, quantiles and calibration
    TIFFs for it; its median and mean stay the regression's value.

Each minimises the negative log-likelihood of the true 8-bit levels, a
proper score. It also stores the training data's histogram of 8-bit levels
per channel (from --train_dir inside --train_region, add-one smoothed), the
reference of the information gain that `isl evaluate` reports. Everything is
written to MODEL_DIR/calibration.json; `isl predict` (and so `isl evaluate`)
and `isl export` apply it from then on (`isl predict --nocalibration`
predicts as trained).

Fit on a validation split that was not trained on, and report on another
(the test split): never tune on the rows you report.

  isl calibrate --model_dir=checkpoints/condition_b_sample --data_dir=sample_well \\
      --region=768:896,0:768 --train_region=0:768,0:768

A split without truth, or with fewer than --min_pixels labelled pixels per
channel, exits with code 2.
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ()


def define_flags(flag_values: Any) -> None:
    from absl import flags

    from isl.eval import calibrate as calibrate_lib

    flags.DEFINE_string("model_dir", None, "Model directory (from isl train or isl readout); calibration.json is "
                        "written into it.", flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Folder of the well holding the validation split, with its real stains.",
                        flag_values=flag_values)
    flags.DEFINE_string("region", None, "The validation pixels, r0:r1,c0:c1 in image pixels (ends exclusive; an "
                        "empty end means the edge).", flag_values=flag_values)
    flags.DEFINE_multi_string("train_dir", [], "Folder(s) of the training wells, for the marginal histogram "
                              "(default: --data_dir).", flag_values=flag_values)
    flags.DEFINE_string("train_region", None, "The training pixels of --train_dir, r0:r1,c0:c1, for the marginal "
                        "histogram of the information gain (required: the model folder does not record it).",
                        flag_values=flag_values)
    flags.DEFINE_list("channels", [], "Target channels to calibrate (default: the read-out's, or the channels "
                      "the model was trained on).", flag_values=flag_values)
    flags.DEFINE_boolean("readout_histograms", True, "Read-out: mix conditional histograms of the true levels "
                         "(by predicted value and spread) into its normal distribution (False: fit the spread "
                         "scale only).", flag_values=flag_values)
    flags.DEFINE_integer("min_pixels", calibrate_lib.MIN_PIXELS, "The least labelled validation pixels per channel.",
                         flag_values=flag_values)
    from isl.cli import data_flags

    data_flags.define(flag_values, ("normalization", "channel_map", "set"))


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.infer.kinds import registry
    from isl.io import calibration_file

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("model_dir", "data_dir", "region", "train_region"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    if flag_values["min_pixels"].value < 1:
        raise errors.InputError(f"--min_pixels must be >= 1. Received: {flag_values['min_pixels'].value}")
    model_dir = flag_values["model_dir"].value
    data_dir = flag_values["data_dir"].value
    for flag, path in [("data_dir", data_dir)] + [("train_dir", path) for path in flag_values["train_dir"].value]:
        if not os.path.isdir(path):
            raise errors.InputError(f"--{flag}={path}: not a folder.")
    if not os.path.isdir(model_dir):
        raise errors.InputError(f"--model_dir={model_dir}: not a folder.")
    from isl.cli import data_flags

    predictor = registry.load_predictor(model_dir, apply_calibration=False)
    # The data contract: the wells are read as the model's config.json records (or the flags say).
    predictor.config = data_flags.model_config(predictor.config, flag_values, model_dir, "calibrate")
    calibration = registry.calibrate(
        predictor, data_dir, flag_values["region"].value, flag_values["train_dir"].value or [data_dir],
        flag_values["train_region"].value, flag_values["channels"].value or None, flag_values["min_pixels"].value,
        readout_histograms=flag_values["readout_histograms"].value,
    )
    path = calibration_file.write(model_dir, calibration)
    name = "temperature" if calibration.route == "heads" else "spread_scale"
    print(f"Calibrated the {calibration.route} on {data_dir} --region={flag_values['region'].value} "
          f"in {calibration.fitted_on['seconds']:.0f} s (validation figures before -> after):")
    for channel, parameters in calibration.channels.items():
        before, after = calibration.scores[channel]["before"], calibration.scores[channel]["after"]
        print(f"  {channel:<18} {name} {parameters[name]:.3f}   "
              f"50% interval {before['coverage_50']:.1%} -> {after['coverage_50']:.1%}   "
              f"90% interval {before['coverage_90']:.1%} -> {after['coverage_90']:.1%}   "
              f"information gain {before['information_gain_bits']:.3f} -> {after['information_gain_bits']:.3f} bit"
              f"   CRPS {before['crps']:.4f} -> {after['crps']:.4f}")
        if "histograms" in parameters:
            weights = parameters["histogram_weights"]
            print(f"  {'':<18} conditional histograms of {len(weights)} groups (predicted value x spread), "
                  f"weight {min(weights):.2f}..{max(weights):.2f}")
    print(f"Wrote {path}; isl predict applies it from now on (--nocalibration predicts as trained).")
    # The histograms stay in the file: 256 numbers per group would drown the --json summary.
    channels = {channel: {key: value for key, value in parameters.items() if key != "histograms"}
                for channel, parameters in calibration.channels.items()}
    return {"calibration": path, "route": calibration.route, "channels": channels, "scores": calibration.scores}
