"""The paper network's kind: 256-bin heads, a distribution per pixel (any folder no other kind recognises).

Prediction is `isl.infer.well.predict_heads_well` (tiles, stitching, panels,
calibration maps); calibration is one temperature per target head
(`isl.eval.calibrate.fit_temperature`); it exports as a SavedModel and a
bioimage.io package. An exported SavedModel (`isl predict --saved_model`) is
loaded here too (`load_saved_model`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.eval import calibrate as calibrate_lib
from isl.eval import calibration as calibration_lib
from isl.infer import bioimageio_graph
from isl.infer import ensemble as ensemble_lib
from isl.infer import ensemble_graph
from isl.infer import export as export_lib
from isl.infer import graph as graph_lib
from isl.infer import predict as predict_lib
from isl.infer import well as well_lib
from isl.infer.kinds import base
from isl.io import model_dir as model_dir_lib
from isl.model import geometry as geometry_lib
from isl.model import saving as saving_lib
from isl.model import statistics as statistics_lib


class Heads(base.ModelKind):
    name = "heads"
    words = "a network with 256-bin heads"
    calibration_route = "heads"
    package_graph = "distribution"

    def recognises(self, layout: model_dir_lib.ModelDir, config: config_lib.ExperimentConfig | None) -> bool:
        return True  # The fallback: the registry asks it last.

    def resolve_precision(self, trained_precision: str, requested: str) -> str:
        # A bfloat16-trained network runs in float32 on a CPU without native bfloat16 (faster there).
        return requested or well_lib.default_precision(trained_precision)

    def label(self, predictor: well_lib.Predictor) -> str:
        return "saved_model" if predictor.model is None else self.name

    def input_geometry(self, predictor: well_lib.Predictor) -> base.InputGeometry:
        geometry = predictor.geometry
        return base.InputGeometry(predictor.config.channels.num_z_values, geometry.border, geometry.input_size,
                                  geometry.phase, geometry.border)

    def statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...]:
        return statistics_lib.STATISTICS

    def unsupported(self, predictor: well_lib.Predictor) -> dict[str, tuple[Any, str]]:
        if predictor.model is None:
            return {"inference_graph": (True, "a SavedModel runs as exported")}
        return {}

    def predict_well_files(self, predictor: well_lib.Predictor, input_dir: str, output_dir: str,
                           **options: Any) -> dict[str, Any]:
        return well_lib.predict_heads_well(predictor, input_dir, output_dir, **options)

    def predict_window(self, predictor: well_lib.Predictor, stack: np.ndarray, window: tuple[int, int, int, int],
                       channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        return ensemble_lib.heads_window(predictor, stack, window, channels)

    def calibration_data(self, predictor: well_lib.Predictor, well: Any, window: tuple[int, int, int, int],
                         channels: Sequence[str], progress: Callable[[], None] | None) -> dict[str, tuple]:
        return collect_heads(predictor, well, window, channels, progress)

    def fit_calibration(self, data: tuple, histogram: np.ndarray,
                        histograms: bool) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        log_probabilities, bins = data
        temperature = calibrate_lib.fit_temperature(log_probabilities, bins)
        return ({"temperature": round(temperature, 5)},
                {"before": calibrate_lib._scores_heads(log_probabilities, bins, 1.0, histogram),
                 "after": calibrate_lib._scores_heads(log_probabilities, bins, temperature, histogram)})

    def calibration_note(self, predictor: well_lib.Predictor) -> str:
        calibration = predictor.calibration
        values = ", ".join(f"{channel} {calibration.temperature(channel):.3f}" for channel in calibration.channels)
        return f"Calibrated (calibration.json, temperature per channel): {values}."

    def package_model(self, predictor: well_lib.Predictor, statistics: Sequence[str] | None,
                      all_heads: bool) -> bioimageio_graph.PackageModel:
        chosen = bioimageio_graph.choose_statistics(self.package_graph, statistics)
        channels = export_lib.export_channels(predictor.config, predictor.trained_channels, all_heads,
                                              predictor.source)
        return bioimageio_graph.distribution_model(predictor, channels, chosen)


    def member_graph(self, predictor: well_lib.Predictor, channels: Sequence[str],
                     with_distribution: bool) -> ensemble_graph.MemberGraph:
        return ensemble_graph.heads_member(predictor, channels, with_distribution)

def collect_heads(
    predictor: Any, well: Any, window: tuple[int, int, int, int], channels: Sequence[str],
    progress: Callable[[], None] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per channel, (log-probabilities `[N, C]`, true bins `[N]`) of the validation pixels with truth.

    The network runs uncalibrated over the window in strips of rows (context
    read from the well around it, as `isl predict --region`); at most
    `isl.eval.calibrate.MAX_FIT_PIXELS` pixels per channel are kept.
    """
    config = predictor.config
    heads = [config.channels.num_input_heads + config.channels.output_target_channels.index(c) for c in channels]
    model = graph_lib.inference_model(predictor.model) if predictor.inference_graph else predictor.model
    run_function = predict_lib.make_run_function(predict_lib.Network.from_keras(model, heads), (),
                                                 with_log_probabilities=True)
    values, masks = calibrate_lib._truth(config, well, channels)
    row0, row1, column0, column1 = window
    num_classes = config.model.num_classes
    row_bytes = max(1, (column1 - column0) * len(channels) * num_classes * 4)
    strip = max(8, int(calibrate_lib.STRIP_BYTES // row_bytes) // 8 * 8)
    tile_size = predict_lib.auto_tile_size(predictor.geometry, config.model, len(heads) * 2, None, "exact",
                                           predictor.compute_dtype)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {channel: [] for channel in channels}
    for start in range(row0, row1, strip):
        end = min(row1, start + strip)
        prediction = predict_lib.predict_image(
            None, well.inputs, predictor.geometry, config.channels.num_z_values, channel_names=channels,
            statistics=(), tile_size=tile_size, run_function=run_function, window=(start, end, column0, column1))
        log_probabilities = prediction.statistics["log_probabilities"]  # [rows, columns, heads, C]
        for index, channel in enumerate(channels):
            known = masks[start:end, column0:column1, index]
            bins = calibration_lib.true_bins(values[start:end, column0:column1, index][known], num_classes)
            parts[channel].append((log_probabilities[:, :, index][known].astype(np.float32), bins))
        if progress is not None:
            progress()
    collected = {}
    for channel, pieces in parts.items():
        log_probabilities = np.concatenate([piece[0] for piece in pieces])
        bins = np.concatenate([piece[1] for piece in pieces])
        keep = calibrate_lib._sample(len(bins))
        collected[channel] = (log_probabilities[keep], bins[keep])
    return collected


def load_saved_model(path: str, precision: str) -> well_lib.Predictor:
    """An `isl export` SavedModel (its `logits` signature and config.json) as a heads predictor.

    Raises:
        InputError: bfloat16 asked for, missing files, a damaged SavedModel or no `logits` signature.
    """
    import tensorflow as tf  # Local: only this route needs it at load time.

    if precision == "bfloat16":
        raise errors.InputError("--precision=bfloat16 needs --model_dir; a SavedModel runs as exported.")
    config_path = os.path.join(path, model_dir_lib.CONFIG_FILE)
    if os.path.isfile(os.path.join(path, ensemble_lib.ENSEMBLE_FILE)):
        raise errors.InputError(f"{path}: an ensemble's SavedModel serves its statistics whole (tf.saved_model.load, "
                                "signature serving_default; export.json); isl predict runs the ensemble folder "
                                "itself (--model_dir).")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")) or not os.path.isfile(config_path):
        raise errors.InputError(f"{path}: not an exported model (saved_model.pb and config.json expected).")
    config = config_lib.load_config(config_path)
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # Damaged files raise DecodeError, OSError, ValueError or an OpError.
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise errors.InputError(
            f"{path}: damaged SavedModel, cannot load it ({type(error).__name__}: {first}). "
            "Export it again with `isl export`."
        ) from None
    if export_lib.LOGITS_SIGNATURE not in loaded.signatures:
        raise errors.InputError(
            f"{path}: the SavedModel has no '{export_lib.LOGITS_SIGNATURE}' signature "
            f"(it has {', '.join(loaded.signatures)}); re-export it with `isl export`."
        )
    signature = loaded.signatures[export_lib.LOGITS_SIGNATURE]
    predictor = well_lib.Predictor(config=config, geometry=geometry_lib.geometry(config.model), source=path,
                                   signature=signature, trained_channels=saving_lib.read_trained_channels(path),
                                   kind=KIND)
    predictor.model = None
    predictor._loaded = loaded  # Keeps the variables alive.
    return predictor


KIND = Heads()
