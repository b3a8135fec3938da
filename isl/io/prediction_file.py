"""`prediction.json`: the record `isl predict` leaves in each predicted well's folder.

The one owner of its name and of its reading and writing. `isl predict`
(`isl.infer.well`, also for the regression U-Net) writes it with
`write_summary`; `isl evaluate` reads it with `read_summary`. Its keys:

    well, input_dir, metadata, model, model_name, channel_config, channels,
    statistics, border, region {row_offset, column_offset, height, width},
    geometry {input_size, output_size, border, phase} (None for models
    without a border), image_shape [height, width], num_source_z, format,
    files {channel: {statistic: file}}, truth_channels, calibration_files,
    panels, num_runs, seconds, and plan figures where they apply.

Records written before the geometry was recorded lack `geometry`;
`isl.eval.evaluate` then computes it from the model's `config.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from isl import errors
from isl.io import atomic

PREDICTION_FILE = "prediction.json"


def path(well_dir: str) -> str:
    """`well_dir/prediction.json`."""
    return os.path.join(well_dir, PREDICTION_FILE)


def exists(well_dir: str) -> bool:
    return os.path.isfile(path(well_dir))


def write_summary(well_dir: str, summary: dict[str, Any]) -> str:
    """Writes `summary` as indented JSON, atomically; returns the path."""
    target = path(well_dir)
    atomic.write_text(target, json.dumps(summary, indent=2) + "\n")
    return target


def read_summary(well_dir: str) -> dict[str, Any]:
    """The record of a predicted well.

    Raises:
        InputError: naming the file, when it is missing or not JSON.
    """
    target = path(well_dir)
    try:
        with open(target, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise errors.InputError(f"{target}: cannot read ({error}).") from None
