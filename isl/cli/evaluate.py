"""`isl evaluate`: Score predictions against ground truth (Pearson r, proper scores, calibration)."""

from __future__ import annotations

from typing import Any

SUMMARY = "Score predictions against ground truth (Pearson r, SSIM, information gain, CRPS, coverage)."
DESCRIPTION = """
Score predictions against ground truth (Pearson r, proper scores, calibration).

For every well that `isl predict` wrote under --predictions_dir and its
truth well under --truth_dir: per target channel, Pearson r of the median
against the truth (the paper's metric), MAE, RMSE, PSNR, SSIM, and, for
models that predict a distribution per pixel (the 256-bin heads, a U-Net
with those heads, a read-out), proper scores of that distribution:

  information gain  bits per pixel over the training data's histogram of
                    intensities: mean log2 p(truth) - log2 p_marginal(truth);
                    0 = no better than the histogram, higher is better
                    (needs the histogram that isl calibrate stores in the
                    model folder; without it the gain is not reported)
  log score         -log2 p(truth), bits per pixel (lower is better); NLL in nats
  CRPS              the squared distance between the predicted and the true
                    cumulative distribution, in intensity units 0..1
                    (a point forecast's absolute error; lower is better)
  coverage          the fraction of true values inside the central 50% and
                    90% intervals (honest: 0.50 and 0.90), and the PIT
                    histogram (flat when calibrated), from the randomized PIT

All on the 256 intensity levels, so the routes compare. Writes metrics.json,
metrics.csv and report_<well>.png (images beside a predicted-vs-true 2-D
histogram and the PIT histogram), and prints a condition x label table of
Pearson r. A regression U-Net (one value per pixel) gets the image scores only.

  isl evaluate --predictions_dir=predictions --truth_dir=data/well_A4

The truth wells are read with the channel map isl predict recorded
(--channel_map overrides it); transmitted-light normalisation does not apply
to the truth (stains are only scaled by their bit depth).

--region: all (default), interior (no reflected context), original (the
released code's window [121, 121 + 128k)), or r0:r1,c0:c1 in image pixels.
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("predictions_dir", None, "Output folder of `isl predict` (or one well's folder in it).",
                        flag_values=flag_values)
    flags.DEFINE_multi_string("truth_dir", [], "Folder(s) holding the truth wells; repeat for several.",
                              flag_values=flag_values)
    flags.DEFINE_string("region", "all", "all, interior, original, or r0:r1,c0:c1 (image pixels).",
                        flag_values=flag_values)
    flags.DEFINE_string("statistic", "median", "Which predicted statistic to score: median (the paper's), mean, "
                        "or another one isl predict wrote.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where to write the metrics and figures (default: --predictions_dir).",
                        flag_values=flag_values)
    flags.DEFINE_list("channel_map", None, "FROM=TO[,...]: read the truth files' channel FROM as TO (default: the map "
                      "isl predict recorded in prediction.json), e.g. HOECHST=DAPI_CONFOCAL.", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.eval import evaluate as evaluate_lib

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    if not flag_values["predictions_dir"].value:
        raise errors.InputError("--predictions_dir is required.")
    result = evaluate_lib.evaluate(
        flag_values["predictions_dir"].value,
        flag_values["truth_dir"].value,
        flag_values["output_dir"].value,
        flag_values["region"].value,
        flag_values["statistic"].value,
        flag_values["channel_map"].value,
    )
    for row in result["rows"]:
        coverage = ""
        if row.get("coverage_50") is not None and row["coverage_50"] == row["coverage_50"]:
            coverage = (
                f"  NLL {row['nll_nats']:.3f} nats  coverage 50% {row['coverage_50']:.3f}  90% {row['coverage_90']:.3f}"
                f"  CRPS {row['crps']:.4f}"
            )
            gain = row.get("information_gain_bits")
            coverage += (f"  gain {gain:.3f} bit" if gain == gain else "  gain n/a (no marginal)")
            coverage += {True: "", False: "  (uncalibrated)", None: "  (no calibration.json)"}[row.get("calibrated")]
        print(
            f"{row['well']}  {row['channel']:<18} r {row['pearson_r']:.4f}  MAE {row['mae']:.4f}  "
            f"RMSE {row['rmse']:.4f}  PSNR {row['psnr_db']:.2f} dB  SSIM {row['ssim']:.4f}{coverage}"
        )
    print()
    print(result["text"])
    files = result["files"]
    print(f"\nWrote {files['metrics_json']}, {files['metrics_csv']} and {len(files['figures'])} report figure(s).")
    return {
        "metrics_json": files["metrics_json"],
        "metrics_csv": files["metrics_csv"],
        "figures": files["figures"],
        "table_pearson_r": evaluate_lib._clean(result["table"]),
        "rows": evaluate_lib._clean(result["rows"]),
    }
