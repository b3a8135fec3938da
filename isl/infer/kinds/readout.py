"""The read-out's kind: a model folder with `readout.json` (`isl readout`), a normal distribution per pixel.

The frozen core's embedding (`isl.infer.embedder`) mapped by the ridge
read-out (`isl.model.readout`); prediction in `isl.infer.readout`. It runs as
trained, keeps the input's size (reflected borders), is calibrated by a spread
scale and conditional histograms (`isl.eval.calibrate.fit_readout`), and
exports as a bioimage.io package only (a SavedModel would serve the heads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl.eval import calibrate as calibrate_lib
from isl.infer import bioimageio_graph
from isl.infer import ensemble as ensemble_lib
from isl.infer import ensemble_graph
from isl.infer import readout as readout_infer
from isl.infer import well as well_lib
from isl.infer.kinds import base
from isl.io import model_dir as model_dir_lib
from isl.model import readout as readout_lib


class Readout(base.ModelKind):
    name = "readout"
    words = "a ridge read-out of a frozen core (a normal distribution per pixel)"
    calibration_route = "readout"
    package_graph = "readout"

    def recognises(self, layout: model_dir_lib.ModelDir, config: config_lib.ExperimentConfig | None) -> bool:
        return os.path.isfile(layout.readout)

    def attach(self, predictor: well_lib.Predictor, layout: model_dir_lib.ModelDir) -> None:
        predictor.readout = readout_lib.load(layout.readout)

    def input_geometry(self, predictor: well_lib.Predictor) -> base.InputGeometry:
        border = predictor.geometry.border
        return base.InputGeometry(predictor.config.channels.num_z_values, border + max(predictor.readout.radii),
                                  bioimageio_graph.SAME_SIZE_MIN, bioimageio_graph.SAME_SIZE_STEP, 0)

    def choose_channels(self, predictor: well_lib.Predictor, requested: Sequence[str] | None) -> tuple[str, ...]:
        return readout_infer.choose_channels(predictor.readout, requested)

    def statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...]:
        return readout_lib.STATISTICS

    def unsupported(self, predictor: well_lib.Predictor) -> dict[str, tuple[Any, str]]:
        return {
            "tile_size": (0, "a read-out embeds in its own fixed tiles"),
            "batch_size": (1, "a read-out embeds one tile per call"),
            "phases": (0, "a read-out's embedding is always exact"),
            "precision": ("", "a read-out runs its core as trained"),
            "inference_graph": (True, "a read-out always folds batch norm into its core"),
            "simplify_panels": (True, "a read-out has no mode, so only the simplified panel (median, truth, error)"),
        }

    def predict_well_files(self, predictor: well_lib.Predictor, input_dir: str, output_dir: str,
                           **options: Any) -> dict[str, Any]:
        return readout_infer.predict_well(
            predictor, input_dir, output_dir, options.get("channels"), options.get("statistics", ("median",)),
            options.get("image_format", "png"), options.get("progress_enabled", True),
            options.get("border_mode", "reflect"), options.get("window"), options.get("panels", True),
            options.get("names", "lab"), options.get("save_calibration", True), options.get("panel_bits", 16),
            options.get("available_bytes"))

    def predict_window(self, predictor: well_lib.Predictor, stack: np.ndarray, window: tuple[int, int, int, int],
                       channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        return ensemble_lib.readout_window(predictor, stack, window, channels)

    def calibration_data(self, predictor: well_lib.Predictor, well: Any, window: tuple[int, int, int, int],
                         channels: Sequence[str], progress: Callable[[], None] | None) -> dict[str, tuple]:
        return readout_infer.collect_readout(predictor, well, window, channels, progress)

    def fit_calibration(self, data: tuple, histogram: np.ndarray,
                        histograms: bool) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        value, spread, bins = data
        parameters = calibrate_lib.fit_readout(value, spread, bins, histograms)
        return parameters, {"before": calibrate_lib._scores_readout(value, spread, bins, {}, histogram),
                            "after": calibrate_lib._scores_readout(value, spread, bins, parameters, histogram)}

    def calibration_note(self, predictor: well_lib.Predictor) -> str:
        calibration = predictor.calibration
        values = ", ".join(f"{channel} {calibration.spread_scale(channel):.3f}" for channel in calibration.channels)
        mixed = [channel for channel, parameters in calibration.channels.items() if "histograms" in parameters]
        note = f"; conditional histograms of the true levels for {', '.join(mixed)}" if mixed else ""
        return f"Calibrated (calibration.json, spread scale per channel): {values}{note}."

    def savedmodel_refusal(self, model_dir: str) -> str | None:
        return (f"{model_dir}: holds a ridge read-out ({model_dir_lib.READOUT_FILE}), which the SavedModel export "
                "does not carry (it would serve the network's own heads). Package it with isl export "
                "--format=bioimageio, or predict it with isl predict --model_dir.")

    def package_model(self, predictor: well_lib.Predictor, statistics: Sequence[str] | None,
                      all_heads: bool) -> bioimageio_graph.PackageModel:
        chosen = bioimageio_graph.choose_statistics(self.package_graph, statistics)
        return bioimageio_graph.readout_model(predictor, chosen)

    def member_graph(self, predictor: well_lib.Predictor, channels: Sequence[str],
                     with_distribution: bool) -> ensemble_graph.MemberGraph:
        return ensemble_graph.readout_member(predictor, channels, with_distribution)


KIND = Readout()
