"""The regression U-Net's kind (`model.architecture=unet_regression`): one value per pixel, or, once `isl
calibrate` fitted it, a distribution per pixel around that value.

Prediction in `isl.infer.regression` (one pass while it fits `PASS_BYTES`, else
tiles with context on the pooling grid, band by band; calibrated:
`isl.infer.regression_distribution`); calibration in
`isl.eval.regression_calibration` (a spread per channel, a spread scale and
conditional histograms). It runs as trained, keeps the input's size, and
exports as a bioimage.io package only (no 256-bin heads to serve).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.eval import regression_calibration
from isl.infer import bioimageio_graph
from isl.infer import ensemble as ensemble_lib
from isl.infer import ensemble_graph
from isl.infer import export as export_lib
from isl.infer import regression as regression_infer
from isl.infer import well as well_lib
from isl.infer.kinds import base
from isl.io import model_dir as model_dir_lib
from isl.model import readout as readout_lib
from isl.model import unet_regression

_NO_BORDER = "it keeps the input's height and width (no border, no tiles of the 256-bin heads)"
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "tile_size": (0, f"the U-Net regression picks its own tiles (one pass while it fits its memory budget); "
                     f"{_NO_BORDER}"),
    "batch_size": (1, "the U-Net regression predicts one tile at a time"),
    "phases": (0, "the U-Net regression has no phases (one pass per tile)"),
    "precision": ("", "the U-Net regression runs as trained"),
    "inference_graph": (True, "the U-Net regression runs its Keras model directly"),
    "simplify_panels": (True, "the U-Net regression has no distribution, so only the simplified panel"),
    "save_calibration": (False, "the U-Net regression has no distribution to calibrate"),
}
# A U-Net regression that isl calibrate gave a distribution: its statistics and calibration TIFFs.
CALIBRATED_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    **{name: reason for name, reason in UNSUPPORTED.items() if name != "save_calibration"},
    "simplify_panels": (True, "a calibrated U-Net regression has no mode, so only the simplified panel "
                              "(median, truth, error)"),
}


class Regression(base.ModelKind):
    name = "unet_regression"
    words = "a U-Net regression (one value per pixel)"
    calibration_route = "regression"
    package_graph = "regression"

    def recognises(self, layout: model_dir_lib.ModelDir, config: config_lib.ExperimentConfig | None) -> bool:
        return config is not None and config.model.architecture == unet_regression.ARCHITECTURE

    def load(self, model_dir: str, precision: str,
             open_folder: Callable[..., well_lib.Predictor] | None = None) -> well_lib.Predictor:
        """The U-Net; a hybrid (`model.hybrid_features`) also opens its frozen folder, checked by fingerprint."""
        predictor = super().load(model_dir, precision, open_folder)
        model = predictor.config.model
        if model.hybrid_features:
            from isl.infer import hybrid

            predictor.readout_embedder, _ = hybrid.open_frozen(model.hybrid_features, model.hybrid_fingerprint,
                                                               model_dir)
        return predictor

    def label(self, predictor: well_lib.Predictor) -> str:
        return "calibrated_regression" if self.distribution(predictor) else self.name

    def input_geometry(self, predictor: well_lib.Predictor) -> base.InputGeometry:
        return base.InputGeometry(predictor.config.channels.num_z_values,
                                  regression_infer.context_pixels(predictor.config),
                                  bioimageio_graph.SAME_SIZE_MIN, bioimageio_graph.SAME_SIZE_STEP, 0)

    def distribution(self, predictor: well_lib.Predictor) -> bool:
        return predictor.applied_calibration is not None

    def statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...]:
        return readout_lib.STATISTICS if self.distribution(predictor) else regression_infer.STATISTICS

    def default_statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...] | None:
        return regression_infer.STATISTICS  # Its one value, as the median and the mean (as before).

    def unsupported(self, predictor: well_lib.Predictor) -> dict[str, tuple[Any, str]]:
        return CALIBRATED_UNSUPPORTED if self.distribution(predictor) else UNSUPPORTED

    def predict_window(self, predictor: well_lib.Predictor, stack: np.ndarray, window: tuple[int, int, int, int],
                       channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        return ensemble_lib.regression_window(predictor, stack, window, channels, self.distribution(predictor))

    def predict_well_files(self, predictor: well_lib.Predictor, input_dir: str, output_dir: str,
                           **options: Any) -> dict[str, Any]:
        chosen = self.choose_channels(predictor, options.get("channels"))
        border_mode = options.get("border_mode", "reflect")
        if border_mode != "reflect":
            raise errors.InputError(f"{predictor.source}: the U-Net regression keeps the input's height and width; "
                                    f"--border={border_mode} applies to models with a border (256-bin heads).")
        return regression_infer.predict_well(
            predictor, input_dir, output_dir, chosen, options.get("image_format", "png"),
            options.get("statistics", regression_infer.STATISTICS), options.get("window"),
            options.get("panels", True), options.get("names", "lab"), options.get("panel_bits", 16),
            options.get("save_calibration", True), options.get("available_bytes"))

    def calibration_data(self, predictor: well_lib.Predictor, well: Any, window: tuple[int, int, int, int],
                         channels: Sequence[str], progress: Callable[[], None] | None) -> dict[str, tuple]:
        return regression_infer.collect(predictor, well, window, channels, progress)

    def fit_calibration(self, data: tuple, histogram: np.ndarray,
                        histograms: bool) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        value, spread, bins = data
        parameters = regression_calibration.fit(value, bins, histograms, spread)
        return parameters, regression_calibration.scores(value, bins, parameters, histogram, spread)

    def calibration_note(self, predictor: well_lib.Predictor) -> str:
        calibration = predictor.calibration
        values = ", ".join(f"{channel} {parameters['spread'] * calibration.spread_scale(channel):.4f}"
                           for channel, parameters in calibration.channels.items())
        spread = ("the predicted spread times, per channel," if predictor.config.model.regression_spread
                  else "spread per channel")
        return (f"Calibrated (calibration.json): the U-Net regression's value as a distribution per pixel, {spread} "
                f"{values}, mixed with conditional histograms of the true levels where fitted.")

    def uncalibrated_note(self, predictor: well_lib.Predictor) -> str:
        return "Uncalibrated: a U-Net regression predicts one value per pixel, no distribution."

    def savedmodel_refusal(self, model_dir: str) -> str | None:
        return (f"{model_dir}: a U-Net regression baseline (model.architecture=unet_regression) has no SavedModel "
                "export (it serves the paper's 256-bin heads). Package it with isl export --format=bioimageio, or "
                "predict it with isl predict --model_dir.")

    def package_refusal(self, model_dir: str) -> str | None:
        try:
            hybrid = config_lib.load_config(model_dir_lib.ModelDir(model_dir).config).model.hybrid_features
        except Exception:  # noqa: BLE001 - a damaged config.json: loading it names the problem.
            hybrid = ""
        if hybrid:
            return (f"{model_dir}: a hybrid U-Net (model.hybrid_features={hybrid}) has no bioimage.io package: its "
                    "input includes the frozen network's embedding, computed outside the U-Net (a package serves one "
                    "network). Predict it with isl predict --model_dir.")
        return super().package_refusal(model_dir)

    def package_model(self, predictor: well_lib.Predictor, statistics: Sequence[str] | None,
                      all_heads: bool) -> bioimageio_graph.PackageModel:
        calibrated = predictor.calibration is not None and predictor.calibration.route == self.calibration_route
        chosen = bioimageio_graph.choose_statistics(self.package_graph, statistics, calibrated)
        channels = export_lib.export_channels(predictor.config, predictor.trained_channels, all_heads,
                                              predictor.source)
        return bioimageio_graph.regression_model(predictor, channels, chosen)

    def member_graph(self, predictor: well_lib.Predictor, channels: Sequence[str],
                     with_distribution: bool) -> ensemble_graph.MemberGraph:
        if predictor.config.model.hybrid_features:
            raise errors.InputError(f"{predictor.source}: a hybrid U-Net (model.hybrid_features) has no graph form "
                                    "(its input includes the frozen network's embedding, computed outside the "
                                    "U-Net), so an ensemble with it cannot be exported; isl predict runs that "
                                    "ensemble.")
        return ensemble_graph.regression_member(predictor, channels, with_distribution)


KIND = Regression()
