"""Scores `isl predict` outputs against ground truth, per well and channel.

For each predicted well (a folder with `prediction.json`) and its truth well
(same well name, or the only one given): per target channel with truth,

* Pearson r of the median against the truth (the paper's metric, §6.1),
  MAE, RMSE, PSNR and SSIM (`isl.eval.metrics`);
* the predicted distributions, from the per-pixel TIFFs that `isl predict`
  wrote (`isl.eval.calibration`): the proper scores (log score, information
  gain over the training data's intensity histogram, CRPS), the 50% / 90%
  interval coverage and the PIT histogram. The histogram (the marginal) is
  the one `isl calibrate` stored in the model folder, copied into
  `prediction.json` by `isl predict`; without it the information gain is
  not reported (NaN) and the row says why (`information_gain_note`). A model
  without a distribution (the regression U-Net) has no calibration files, so
  these are NaN too;

over the pixels where the truth exists, inside `region`. Several wells are
summarised as a condition x channel table of Pearson r (the paper's layout:
the mean over the wells of a condition).

Regions (image coordinates): "all" (everything predicted), "interior" (the
window `isl predict --border=valid` predicts: whole output blocks whose
input patches lie inside the image, no reflected pixels), "original" (the
released code's window, `--border=original`), or "r0:r1,c0:c1". The interior
and original windows depend on the model's patch geometry, which
`prediction.json` records (`isl.model.geometry.output_region` is their one
owner); for a record without it, the geometry is computed from the model's
`config.json`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import convert as convert_lib
from isl.eval import calibration as calibration_lib
from isl.eval import metrics as metrics_lib
from isl.eval import report as report_lib
from isl.io import atomic
from isl.io import model_dir as model_dir_lib
from isl.io import prediction_file
from isl.model import geometry as geometry_lib

PREDICTION_FILE = prediction_file.PREDICTION_FILE
BORDER_REGIONS = {"interior": "valid", "original": "original"}
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
CSV_COLUMNS = (
    "well", "condition", "channel", "pearson_r", "mae", "rmse", "psnr_db", "ssim",
    "nll_nats", "normalized_nll", "log_score_bits", "information_gain_bits", "crps", "coverage_50", "coverage_90",
    "pit_max_deviation", "calibrated", "num_pixels",
)
CALIBRATION_COLUMNS = (
    "nll_nats", "normalized_nll", "log_score_bits", "information_gain_bits", "marginal_log_score_bits", "crps",
    "coverage_50", "coverage_90", "pit_max_deviation",
)


def find_predictions(predictions_dir: str) -> list[str]:
    """Folders holding `prediction.json`: the folder itself or its sub-folders.

    Raises:
        InputError: when there are none.
    """
    if not os.path.isdir(predictions_dir):
        raise errors.InputError(f"{predictions_dir}: not a folder.")
    if prediction_file.exists(predictions_dir):
        return [predictions_dir]
    found = sorted(
        os.path.join(predictions_dir, name)
        for name in os.listdir(predictions_dir)
        if prediction_file.exists(os.path.join(predictions_dir, name))
    )
    if not found:
        raise errors.InputError(
            f"{predictions_dir}: no {PREDICTION_FILE} here or in its sub-folders; run `isl predict` first."
        )
    return found


def prediction_geometry(summary: dict[str, Any], well_dir: str) -> geometry_lib.PatchSizes:
    """The patch geometry of the model that made a prediction.

    From `prediction.json`'s `geometry`; for a record written before it was
    recorded, computed from the `config.json` of the model it names.

    Raises:
        InputError: when the model had no border (the regression U-Net), or
            neither the record nor the model's config gives the geometry.
    """
    if "geometry" in summary:
        if summary["geometry"] is None:
            raise errors.InputError(
                f"{prediction_file.path(well_dir)}: the model predicts whole images without a border, so the "
                "interior and original regions do not apply; use --region=all or r0:r1,c0:c1."
            )
        try:
            return geometry_lib.PatchGeometry.from_record(summary["geometry"])
        except (KeyError, TypeError, ValueError) as error:
            raise errors.InputError(f"{prediction_file.path(well_dir)}: malformed geometry ({error}).") from None
    config_path = model_dir_lib.ModelDir(str(summary.get("model", ""))).config
    try:
        config = config_lib.load_config(config_path)
        return geometry_lib.geometry(config.model)
    except (OSError, ValueError, errors.InputError) as error:
        raise errors.InputError(
            f"{prediction_file.path(well_dir)} records no model geometry, and its model's {config_path} cannot give "
            f"it ({error}). Predict again with this version of `isl predict`, or use --region=all or r0:r1,c0:c1."
        ) from None


def region_mask(
    spec: str,
    image_shape: tuple[int, int],
    prediction_region: dict[str, int],
    geometry: geometry_lib.PatchSizes | None = None,
) -> np.ndarray:
    """Boolean `[height, width]` over the prediction's output pixels.

    Args:
        spec: "all", "interior", "original" or "r0:r1,c0:c1" (image coordinates,
            `isl.data.convert.parse_region`; an empty end means the edge).
        image_shape: the input image's (height, width).
        prediction_region: `row_offset`, `column_offset`, `height`, `width`.
        geometry: the model's patch geometry (`prediction_geometry`); needed
            for "interior" (`output_region(..., "valid")`) and "original"
            (`output_region(..., "original")`).
    """
    rows = np.arange(prediction_region["height"]) + prediction_region["row_offset"]
    columns = np.arange(prediction_region["width"]) + prediction_region["column_offset"]
    height, width = image_shape
    if spec == "all":
        ranges = ((0, height), (0, width))
    elif spec in BORDER_REGIONS:
        if geometry is None:
            raise ValueError(f"region {spec!r} needs the model's geometry.")
        try:
            window = geometry_lib.output_region(image_shape, geometry, BORDER_REGIONS[spec])
        except errors.InputError:
            raise errors.InputError(
                f"--region={spec}: an image of {height} x {width} px has no {spec} window for this model "
                f"(input {geometry.input_size} px, border {geometry.border}); use --region=all."
            ) from None
        ranges = ((window.row_offset, window.row_offset + window.height),
                  (window.column_offset, window.column_offset + window.width))
    else:
        try:
            parsed = convert_lib.parse_region(spec, "--region")
        except errors.InputError as error:
            raise errors.InputError(f"{error} Or all, interior, original.") from None
        ranges = tuple((start, side if end == -1 else end) for (start, end), side in zip(parsed, (height, width)))
    (row_start, row_end), (column_start, column_end) = ranges
    mask = (
        ((rows >= row_start) & (rows < row_end))[:, None]
        & ((columns >= column_start) & (columns < column_end))[None, :]
    )
    if not mask.any():
        raise errors.InputError(f"--region {spec!r} does not overlap the predicted pixels.")
    return mask


def _read_unit(path: str) -> np.ndarray:
    """A predicted image as float32 in [0, 1] (16-bit PNG/TIFF) or a float TIFF."""
    from isl.io import images

    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        try:
            array = tifffile.imread(path)
        except (OSError, ValueError) as error:
            raise errors.InputError(f"{path}: cannot read ({error}).") from None
        if np.issubdtype(array.dtype, np.floating):
            return array.astype(np.float32)
        return images.to_float(array)
    return images.to_float(images.read_image(path))


def _truth_well(summary: dict[str, Any], truth_dirs: Sequence[str], channels: config_lib.ChannelConfig,
                channel_map: Sequence[str] | None = None) -> Any:
    """The truth well of a prediction, read with the prediction's channel map (`channel_map` overrides it).

    Files of channels the model does not have are skipped, as `isl predict` skips them.
    """
    from isl.data import channel_map as channel_map_lib
    from isl.data import wells as wells_lib

    mapping = channel_map_lib.parse(summary.get("channel_map", []) if channel_map is None else channel_map)
    candidates = []
    for directory in truth_dirs:
        scan = wells_lib.scan_wells([directory], channels, ignore_unknown=True, channel_map=mapping)
        for source in scan.wells:
            candidates.append((source.name, source.directory))
    matching = [directory for name, directory in candidates if name == summary["well"]]
    if not matching and len(candidates) == 1:
        matching = [candidates[0][1]]
    if not matching:
        raise errors.InputError(
            f"No truth for the predicted well {summary['well']}: --truth_dir holds "
            f"{', '.join(name for name, _ in candidates) or 'no wells'}."
        )
    # Read as isl predict read it (only the stains are scored; the stack's normalisation only avoids a false warning).
    # Lazily: planes in a temporary file, read by bands (`isl.data.wells.read_well`), never the whole well.
    normalization = summary.get("normalization", "none")
    return wells_lib.read_well(matching[0], channels, ignore_unknown=True, channel_map=mapping,
                               normalization=normalization, lazy=True)


def _truth_channel(well: Any, channels: config_lib.ChannelConfig, channel: str, rows: slice,
                   columns: slice) -> tuple[np.ndarray, np.ndarray]:
    """One target channel's truth in a window, `assemble.target_stack`'s values and masks, built by bands of rows.

    Returns:
        (values float32, masks float32), each `[rows, columns]`.
    """
    from isl.data import assemble

    index = channels.output_target_channels.index(channel)
    height, width = rows.stop - rows.start, columns.stop - columns.start
    values, masks = np.empty((height, width), np.float32), np.empty((height, width), np.float32)
    for band in metrics_lib.row_bands(height):
        window = slice(rows.start + band.start, rows.start + band.stop)
        cropped = {name: image[window, columns] for name, image in well.targets.items()}
        band_values, band_masks = assemble.target_stack(cropped, channels, shape=(band.stop - band.start, width))
        values[band], masks[band] = band_values[..., index], band_masks[..., index]
    return values, masks


def evaluate_well(
    well_dir: str,
    truth_dirs: Sequence[str],
    region: str = "all",
    statistic: str = "median",
    channel_map: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Scores one predicted well's `statistic` images (the median, the paper's, by default).

    Returns:
        (rows, figure rows): one metrics dict per channel with truth, and the
        images for the report figure.
    """
    summary = prediction_file.read_summary(well_dir)
    channel_values = summary.get("channel_config")
    channels = (
        config_lib.config_from_dict({"channels": channel_values}).channels
        if channel_values
        else config_lib.ChannelConfig()
    )
    well = _truth_well(summary, truth_dirs, channels, channel_map)
    image_shape = tuple(summary["image_shape"])
    if tuple(well.inputs.shape[1:]) != image_shape:
        raise errors.InputError(
            f"{well_dir}: predicted for a {image_shape[0]} x {image_shape[1]} image, but the truth well "
            f"{well.name} is {well.inputs.shape[1]} x {well.inputs.shape[2]}."
        )
    predicted_region = summary["region"]
    rows_slice = slice(predicted_region["row_offset"], predicted_region["row_offset"] + predicted_region["height"])
    columns_slice = slice(
        predicted_region["column_offset"], predicted_region["column_offset"] + predicted_region["width"]
    )
    geometry = prediction_geometry(summary, well_dir) if region in BORDER_REGIONS else None
    selection = region_mask(region, image_shape, predicted_region, geometry)
    results, figure_rows = [], []
    for channel, files in summary["files"].items():
        truth, known = _truth_channel(well, channels, channel, rows_slice, columns_slice)
        mask = (known > 0) & selection
        del known
        if not mask.any():
            continue
        if statistic not in files:
            raise errors.InputError(
                f"{well_dir}: no {statistic!r} prediction for {channel} (written: {', '.join(files)}); "
                f"predict it with isl predict --statistics={statistic} or choose --statistic."
            )
        prediction = _read_unit(os.path.join(well_dir, files[statistic]))
        row: dict[str, Any] = {
            "well": summary["well"],
            "condition": summary.get("metadata", {}).get("condition", "") or summary["well"],
            "channel": channel,
            "statistic": statistic,
            "region": region,
        }
        row.update(metrics_lib.image_metrics(prediction, truth, mask))
        row.update(_distribution_scores(well_dir, summary, channel, truth, mask))
        results.append(row)
        caption = f"r = {row['pearson_r']:.3f}, SSIM {row['ssim']:.3f}"
        if not math.isnan(row.get("coverage_90", math.nan)):
            caption += f", 50%/90% coverage {row['coverage_50']:.2f}/{row['coverage_90']:.2f}"
        if not math.isnan(row.get("information_gain_bits", math.nan)):
            caption += f", gain {row['information_gain_bits']:.2f} bit"
        # The figure's tiles are drawn now, at their small size, so no whole image waits for the figure.
        figure_rows.append(report_lib.drawn_row(
            {
                "channel": channel,
                "prediction": np.where(mask, prediction, 0),
                "truth": np.where(mask, truth, 0),
                "histogram": metrics_lib.histogram_2d(prediction, truth, mask),
                "caption": caption,
                "pit_histogram": row.get("pit_histogram"),
            }
        ))
        del prediction, truth, mask
    return results, figure_rows


def _distribution_scores(
    well_dir: str, summary: dict[str, Any], channel: str, truth: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """The proper scores, coverage and PIT of one channel (NaN where they cannot be computed, with a note)."""
    calibration = summary.get("calibration")
    scores: dict[str, Any] = {key: math.nan for key in CALIBRATION_COLUMNS}
    scores["calibrated"] = None if calibration is None else bool(calibration.get("applied"))
    files = summary.get("calibration_files", {}).get(channel)
    if not files:
        scores["information_gain_note"] = (
            "the prediction has no calibration files (no truth when predicted, --nosave_calibration, or a model "
            "without a distribution)")
        return scores
    probability = _read_unit(os.path.join(well_dir, files["true_bin_probability"]))
    below = _read_unit(os.path.join(well_dir, files["cdf_below_true"]))
    crps = _read_unit(os.path.join(well_dir, files["crps"])) if "crps" in files else None
    marginal = (calibration or {}).get("marginal", {}).get(channel)
    if marginal is None:
        scores["information_gain_note"] = (
            "no marginal histogram: the model folder has no calibration.json with this channel "
            "(isl calibrate --train_region stores it)")
    # The true bins as uint8, band by band (`true_bins` makes int64 of a whole image).
    bins = np.empty(truth.shape, np.uint8)
    for band in metrics_lib.row_bands(truth.shape[0]):
        bins[band] = calibration_lib.true_bins(truth[band])
    scores.update(
        {f"calibration_{key}" if key == "num_pixels" else key: value
         for key, value in calibration_lib.calibration_metrics(
             probability, below, mask, crps=crps, true_bins=bins,
             marginal=None if marginal is None else np.asarray(marginal, np.float64)).items()})
    return scores


def condition_table(rows: Sequence[dict[str, Any]], metric: str = "pearson_r") -> dict[str, dict[str, float]]:
    """condition -> channel -> mean of `metric` over that condition's wells."""
    table: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        table.setdefault(row["condition"], {}).setdefault(row["channel"], []).append(row[metric])
    return {
        condition: {
            channel: float(np.nanmean(values)) if values else math.nan for channel, values in by_channel.items()
        }
        for condition, by_channel in table.items()
    }


def format_table(table: dict[str, dict[str, float]], metric: str = "pearson_r") -> str:
    """The condition x channel table as aligned text."""
    channels = sorted({channel for by_channel in table.values() for channel in by_channel})
    width = max([len("condition")] + [len(condition) for condition in table]) + 2
    lines = [
        f"{metric} by condition (rows) and label (columns)",
        "condition".ljust(width) + "".join(c[:16].rjust(18) for c in channels),
    ]
    for condition, by_channel in sorted(table.items()):
        cells = "".join(
            (
                f"{by_channel[channel]:.3f}"
                if channel in by_channel and not math.isnan(by_channel[channel])
                else "-"
            ).rjust(18)
            for channel in channels
        )
        lines.append(condition.ljust(width) + cells)
    return "\n".join(lines)


def evaluate(
    predictions_dir: str,
    truth_dirs: Sequence[str],
    output_dir: str | None = None,
    region: str = "all",
    statistic: str = "median",
    channel_map: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores every predicted well; writes metrics.json, metrics.csv, report PNGs.

    Returns:
        {"rows": [...], "table": {...}, "files": {...}, "text": table text}.
    """
    if not truth_dirs:
        raise errors.InputError("--truth_dir is required (the folder(s) of the truth wells).")
    output_dir = output_dir or predictions_dir
    os.makedirs(output_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    figures = []
    for well_dir in find_predictions(predictions_dir):
        well_rows, figure_rows = evaluate_well(well_dir, truth_dirs, region, statistic, channel_map)
        rows += well_rows
        if figure_rows:
            name = os.path.basename(os.path.normpath(well_dir))
            figure = report_lib.report_figure(figure_rows, title=f"{name} ({region} region)")
            path = os.path.join(output_dir, f"report_{name}.png")
            figures.append(report_lib.write_figure(path, figure))
    if not rows:
        raise errors.InputError(
            f"{predictions_dir}: none of the predicted channels has ground truth in {', '.join(truth_dirs)}."
        )
    table = condition_table(rows)
    text = format_table(table)
    metrics_json = os.path.join(output_dir, METRICS_JSON)
    atomic.write_text(
        metrics_json,
        json.dumps(_clean({"region": region, "rows": rows, "table_pearson_r": table}), indent=2, default=_json_value)
        + "\n",
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in CSV_COLUMNS})
    metrics_csv = os.path.join(output_dir, METRICS_CSV)
    atomic.write_text(metrics_csv, buffer.getvalue())
    return {
        "rows": rows,
        "table": table,
        "text": text,
        "files": {"metrics_json": metrics_json, "metrics_csv": metrics_csv, "figures": figures},
    }


def _clean(value: Any) -> Any:
    """NaN and infinities -> None, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
