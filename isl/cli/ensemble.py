"""`isl ensemble`: several model folders fitted to predict as one (`isl predict` runs the folder it writes through
the model-kind registry, `isl.infer.kinds.ensemble`)."""

from __future__ import annotations

import os
from typing import Any

SUMMARY = "Combine model folders into one ensemble model folder, weights fitted on a validation window."
DESCRIPTION = """
Combine several model folders (the paper network's heads, a read-out from
`isl readout`, a U-Net regression, calibrated or not) into one model folder
that `isl predict` and `isl evaluate` use like any other (an option beyond
the paper).

Every member predicts the same pixels; per target channel the ensemble
combines either:

  values   each member's value (its estimate of the mean) standardised by
           its mean and standard deviation on the validation window, summed
           with non-negative weights (least squares against the truth, so
           the best validation Pearson r of such a sum) and mapped back to
           intensities with the truth's validation mean;
  mixture  each member's per-pixel distribution over the 256 intensity bins,
           mixed with weights that maximise the validation log score (EM);
  both     (default when every member has a distribution) median and mean
           from the values, std, quantiles and the calibration TIFFs from the
           mixture.

The weights are fitted on --data_dir --region only (the validation split),
never on the rows you report: give the evaluation window as --eval_region
and an overlap is refused. A U-Net regression has a distribution once `isl
calibrate` gave it one; the heads and a read-out use their calibration.json
when present.

Writes OUTPUT_DIR/ensemble.json: the members by path (relative to OUTPUT_DIR,
so the two can move together; not copied: the paper network's weights are
39 MB, and a member changed later is detected by its fingerprint and
refused), the weights and their validation figures. Members must read the
wells alike (input channel, modalities, z count, normalisation, channel map)
and predict every ensemble channel; otherwise exit 2 names the member and
the mismatch. `isl export` refuses an ensemble (see BUILD_NOTES): export or
package its members.

  isl ensemble --member=checkpoints/condition_b_sample --member=models/unet_regression \\
      --data_dir=well --region=768:896,0:768 --eval_region=896:1024,0:768 --output_dir=models/ensemble
  isl predict --model_dir=models/ensemble --input_dir=well --output_dir=predictions \\
      --statistics=median,mean,std,q05,q95 [--tta]

`isl predict --tta` (any model folder, or an ensemble) averages the
predictions of the eight rotations and mirror images of the input, mapped
back: bin probabilities for a distribution, values for a U-Net regression.
It costs eight predictions.
"""

OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_multi_string("member", [], "A member model folder; repeat for each (at least one).",
                              flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Folder of the well holding the validation window, with its real stains.",
                        flag_values=flag_values)
    flags.DEFINE_string("region", None, "The validation window r0:r1,c0:c1 the weights are fitted on (image pixels, "
                        "ends exclusive; an empty end means the edge).", flag_values=flag_values)
    flags.DEFINE_string("eval_region", None, "The window you will report (evaluate) in the same well: refused when "
                        "it overlaps --region.", flag_values=flag_values)
    flags.DEFINE_enum("combination", None, ["mixture", "values", "both"], "How members combine (see above); default "
                      "both when every member has a distribution, else values.", flag_values=flag_values)
    flags.DEFINE_list("channels", [], "Target channels (default: the first member's).", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "The ensemble model folder to write (ensemble.json).",
                        flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Print a line per member and band.", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.cli import data_flags
    from isl.data import convert
    from isl.data import wells as wells_lib
    from isl.infer import ensemble as ensemble_lib
    from isl.infer.kinds import registry

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("data_dir", "region", "output_dir"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    if not flag_values["member"].value:
        raise errors.InputError("--member is required (a model folder; repeat for each member).")
    data_dir, output_dir = flag_values["data_dir"].value, flag_values["output_dir"].value
    if not os.path.isdir(data_dir):
        raise errors.InputError(f"--data_dir={data_dir}: not a folder.")
    region = data_flags.region(flag_values)
    eval_region = data_flags.region(flag_values, "eval_region")
    members = [ensemble_lib.load_member(path, registry.load_predictor) for path in flag_values["member"].value]
    channels = ensemble_lib.check_members(members, flag_values["channels"].value or None)
    combination = flag_values["combination"].value or ensemble_lib.default_combination(members)
    ensemble_lib.check_combination(combination, members)
    well = wells_lib.read_checked_well(members[0].config, data_dir)
    window = convert.well_window(well, region)
    if eval_region is not None:
        evaluated = convert.well_window(well, eval_region, "--eval_region")
        if convert.overlaps((window[:2], window[2:]), (evaluated[:2], evaluated[2:])):
            raise errors.InputError(
                f"--region={flag_values['region'].value} overlaps --eval_region={flag_values['eval_region'].value}: "
                "the weights must be fitted on pixels you do not report; give a validation window beside the "
                "evaluation one.")

    def progress(line: str) -> None:
        if flag_values["progress"].value:
            print(f"  predicting {line}", flush=True)

    print(f"Fitting {combination} weights of {len(members)} member(s) for {', '.join(channels)} on {data_dir} "
          f"--region={flag_values['region'].value}", flush=True)
    ensemble = ensemble_lib.fit(members, well, window, channels, combination, progress=progress)
    path = ensemble_lib.write(ensemble, output_dir)
    validation = ensemble.record["validation"]
    for index, member in enumerate(members):
        print(f"  member {index + 1}: {member.kind:<22} {member.model_dir}")
    for channel in channels:
        scores, weights = validation[channel], ensemble.weights[channel]
        values = weights["values"]["weights"]
        shares = [w / sum(values) if sum(values) > 0 else 0.0 for w in values]
        line = (f"  {channel:<18} Pearson r: members {' / '.join(f'{r:.3f}' for r in scores['members_pearson'])}"
                f" -> values {scores['values_pearson']:.3f} (shares of the standardised weights "
                f"{' / '.join(f'{w:.2f}' for w in shares)})")
        if "mixture_log_score_bits" in scores:
            line += (f"; mean log2 p(true bin): members "
                     f"{' / '.join(f'{s:.3f}' for s in scores['members_log_score_bits'])} -> mixture "
                     f"{scores['mixture_log_score_bits']:.3f} (weights "
                     f"{' / '.join(f'{w:.3f}' for w in weights['mixture']['weights'])})")
        print(line)
    print(f"Wrote {path} in {ensemble.record['fitted_on']['seconds']:.0f} s; isl predict --model_dir={output_dir} "
          "predicts with it.")
    return {"ensemble": os.path.abspath(path), "combination": combination, "channels": list(channels),
            "weights": ensemble.weights, "validation": validation}

