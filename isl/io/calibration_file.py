"""`calibration.json`: the calibration `isl calibrate` stores in a model directory.

The one owner of its contents, reading and writing. Keys:

    format_version   1
    route            "heads" (256-bin heads: a temperature per channel),
                     "readout" (a normal distribution per pixel: a spread scale per channel) or
                     "regression" (the U-Net regression's value as the read-out's centre, with a
                     constant spread per channel, `"spread"` (a factor on the model's predicted
                     spread for `model.regression_spread`), and the read-out's parameters;
                     `isl.eval.regression_calibration`)
    channels         {channel: {"temperature": T} or {"spread_scale": s[, "value_edges": [V - 1],
                     "spread_edges": [S - 1], "histogram_weights": [V * S], "histograms":
                     [V * S rows of 256 probabilities]]}}: the read-out's optional conditional
                     histograms (`isl.eval.calibration.ReadoutDistribution`); a record with only a spread
                     scale (older files) is a plain normal distribution
    marginal         {channel: [256 probabilities]}: the training data's histogram of
                     8-bit levels (add-one smoothed), the reference of the information gain
    marginal_source  {"dirs", "region", "num_pixels": {channel: n}, "pseudo_count"}
    fitted_on        {"dir", "region", "num_pixels": {channel: n}, "model_fingerprint"}: the validation
                     split, and the SHA-256 of the weights (and readout.json) it was fitted to
    scores           {channel: {"before": {...}, "after": {...}}}: validation figures

`isl predict` applies it (heads: logits / T before the softmax; read-out:
`isl.eval.calibration.ReadoutDistribution`) unless told not to, and copies it into `prediction.json`, where
`isl evaluate` finds the marginal. A model directory without this file
predicts as trained, and says it is uncalibrated. A record whose fingerprint
no longer matches the folder's weights (trained or recalibrated since) is
refused (`check_fresh`) rather than applied to other weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

from isl import errors
from isl.io import atomic
from isl.io import model_dir as model_dir_lib

FORMAT_VERSION = 1
ROUTES = ("heads", "readout", "regression")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A model directory's calibration (module docstring)."""

    route: str
    channels: dict[str, dict[str, Any]]
    marginal: dict[str, list[float]]
    marginal_source: dict[str, Any] = dataclasses.field(default_factory=dict)
    fitted_on: dict[str, Any] = dataclasses.field(default_factory=dict)
    scores: dict[str, Any] = dataclasses.field(default_factory=dict)

    def temperature(self, channel: str) -> float:
        """The channel's temperature (1 when it has none)."""
        return float(self.channels.get(channel, {}).get("temperature", 1.0))

    def spread_scale(self, channel: str) -> float:
        """The channel's spread scale (1 when it has none)."""
        return float(self.channels.get(channel, {}).get("spread_scale", 1.0))

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        """Raises ValueError for a malformed record."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        if data.get("route") not in ROUTES:
            raise ValueError(f"route {data.get('route')!r}, expected one of {', '.join(ROUTES)}")
        channels = {str(name): _channel_parameters(str(name), dict(values))
                    for name, values in dict(data["channels"]).items()}
        if data["route"] == "regression":
            missing = [name for name, values in channels.items() if "spread" not in values]
            if missing:
                raise ValueError(f"route regression: no spread for {', '.join(missing)}")
        marginal = {str(name): [float(value) for value in values] for name, values in dict(data["marginal"]).items()}
        for name, values in marginal.items():
            if not values or min(values) <= 0 or abs(sum(values) - 1.0) > 1e-3:
                raise ValueError(f"marginal of {name}: positive probabilities summing to 1 expected")
        return cls(data["route"], channels, marginal, dict(data.get("marginal_source", {})),
                   dict(data.get("fitted_on", {})), dict(data.get("scores", {})))


HISTOGRAM_KEYS = ("value_edges", "spread_edges", "histogram_weights", "histograms")


def _edges(name: str, key: str, values: Any) -> list[float]:
    edges = [float(edge) for edge in values]
    if not all(math.isfinite(edge) for edge in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"{name}: {key}: finite, strictly increasing values expected")
    return edges


def _channel_parameters(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """One channel's parameters, checked. Raises ValueError."""
    parameters: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("temperature", "spread_scale", "spread"):
            value = float(value)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: {key} = {value} (a positive value expected)")
            parameters[key] = value
        elif key not in HISTOGRAM_KEYS:
            raise ValueError(f"{name}: unknown parameter {key!r}")
    present = [key for key in HISTOGRAM_KEYS if key in values]
    if present and len(present) != len(HISTOGRAM_KEYS):
        raise ValueError(f"{name}: the conditional histograms need all of {', '.join(HISTOGRAM_KEYS)}")
    if present:
        value_edges = _edges(name, "value_edges", values["value_edges"])
        spread_edges = _edges(name, "spread_edges", values["spread_edges"])
        groups = (len(value_edges) + 1) * (len(spread_edges) + 1)
        weights = [float(weight) for weight in values["histogram_weights"]]
        if len(weights) != groups or not all(0.0 <= weight <= 1.0 for weight in weights):
            raise ValueError(f"{name}: histogram_weights: {groups} weights in [0, 1] expected")
        histograms = np.asarray(values["histograms"], dtype=np.float64)
        if (histograms.ndim != 2 or histograms.shape[0] != groups or not np.all(np.isfinite(histograms))
                or np.any(histograms < 0) or np.any(np.abs(histograms.sum(axis=1) - 1.0) > 1e-3)):
            raise ValueError(f"{name}: histograms: {groups} rows of probabilities summing to 1 expected")
        parameters.update(value_edges=value_edges, spread_edges=spread_edges, histogram_weights=weights,
                          histograms=histograms.tolist())
    return parameters


def fingerprint(model_dir: str) -> str:
    """SHA-256 of the folder's weights file, and of its readout.json when it has one (hex)."""
    import hashlib

    layout = model_dir_lib.ModelDir(model_dir)
    digest = hashlib.sha256()
    for name in (layout.weights, layout.readout):
        if os.path.isfile(name):
            with open(name, "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def check_fresh(model_dir: str, calibration: Calibration) -> None:
    """Raises InputError when the calibration was fitted to other weights than the folder's.

    A record without a fingerprint (written by hand) is trusted.
    """
    recorded = calibration.fitted_on.get("model_fingerprint")
    if recorded and recorded != fingerprint(model_dir):
        raise errors.InputError(
            f"{path(model_dir)} was fitted to other weights than the folder's {model_dir_lib.WEIGHTS_FILE} (or "
            f"{model_dir_lib.READOUT_FILE}): the model was trained, recalibrated or refitted since. Run isl calibrate "
            "again, or predict with --nocalibration.")


def path(model_dir: str) -> str:
    """`model_dir/calibration.json`."""
    return model_dir_lib.ModelDir(model_dir).calibration


def write(model_dir: str, calibration: Calibration) -> str:
    """Writes the record atomically; returns its path."""
    target = path(model_dir)
    atomic.write_text(target, json.dumps(calibration.to_json(), indent=2) + "\n")
    return target


def read(model_dir: str) -> Calibration | None:
    """The model directory's calibration, or None when it has none.

    Raises:
        InputError: naming the file when it is not a valid record.
    """
    target = path(model_dir)
    if not os.path.isfile(target):
        return None
    try:
        with open(target) as file:
            return Calibration.from_json(json.load(file))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise errors.InputError(f"{target}: not a valid calibration record ({error}); run isl calibrate again "
                                "or remove it.") from None


def read_fresh(model_dir: str) -> Calibration | None:
    """`read`, then `check_fresh` (for what applies the calibration: predict, export)."""
    calibration = read(model_dir)
    if calibration is not None:
        check_fresh(model_dir, calibration)
    return calibration
