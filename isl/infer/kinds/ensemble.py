"""The ensemble's kind: a model folder holding `ensemble.json` (`isl ensemble`), and `isl predict --tta`.

Its members are other model folders of any kind, opened with the `open_folder`
that `load` receives (the registry's `load_predictor`, so this module never
imports the registry); each predicts a window through its own kind's
`predict_window`, and `isl.infer.ensemble` combines them (values, a 256-bin
mixture, or both) and writes the well. `--tta` of a plain model folder is a
one-member ensemble of it (`augmented`). Nothing to calibrate (the members
carry their calibration.json). `isl export` writes ONE SavedModel or bioimage.io
package of the whole ensemble: each member's kind gives its graph and
`isl.infer.ensemble_graph` combines them with the fitted weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.infer import ensemble as ensemble_lib
from isl.infer import ensemble_graph
from isl.infer import well as well_lib
from isl.infer.kinds import base
from isl.io import model_dir as model_dir_lib
from isl.model import geometry as geometry_lib

# `isl predict` flags an ensemble or --tta cannot honour: name -> (the value that changes nothing, why).
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "tile_size": (0, "each member picks its own tiles"),
    "batch_size": (1, "each member predicts one tile at a time"),
    "phases": (0, "the heads run exact (all phases)"),
    "precision": ("", "each member runs as trained"),
    "border": ("reflect", "every member keeps the input's height and width"),
    "inference_graph": (True, "members always fold batch norm into their core"),
    "simplify_panels": (True, "an ensemble has no mode, so only the simplified panel (median, truth, error)"),
    "calibration": (True, "the members' calibration.json are part of the fitted ensemble"),
    "normalization": (None, "the wells are read with the members' recorded data contract (config.json)"),
    "channel_map": ([], "the wells are read with the members' recorded data contract (config.json)"),
    "set": ([], "the wells are read with the members' recorded data contract (config.json)"),
}


@dataclasses.dataclass
class EnsemblePredictor(well_lib.Predictor):
    """A loaded ensemble (`isl.infer.ensemble.Ensemble`), and whether it predicts with test-time augmentation."""

    ensemble: Any = None
    tta: bool = False


class EnsembleKind(base.ModelKind):
    name = "ensemble"
    words = "an ensemble of model folders (ensemble.json)"
    calibration_route = None

    def recognises(self, layout: model_dir_lib.ModelDir, config: config_lib.ExperimentConfig | None) -> bool:
        return ensemble_lib.is_ensemble(layout.root)

    def load(self, model_dir: str, precision: str,
             open_folder: Callable[..., well_lib.Predictor] | None = None) -> well_lib.Predictor:
        if open_folder is None:
            raise ValueError("An ensemble loads its members with open_folder (the registry's load_predictor).")
        return self._predictor(ensemble_lib.load(model_dir, open_folder, precision), model_dir, tta=False)

    def augmented(self, predictor: well_lib.Predictor) -> well_lib.Predictor:
        """`isl predict --tta`: the ensemble itself with test-time augmentation, or a plain model folder as a
        one-member ensemble of it.

        Raises:
            InputError: an exported SavedModel, or a kind that cannot predict a window.
        """
        if predictor.kind is self:
            return dataclasses.replace(predictor, tta=True)
        member = ensemble_lib.member_of(predictor.source, predictor)
        return self._predictor(ensemble_lib.single(member, member.channels), predictor.source, tta=True)

    def _predictor(self, ensemble: ensemble_lib.Ensemble, source: str, tta: bool) -> EnsemblePredictor:
        config = ensemble.config
        return EnsemblePredictor(config=config, geometry=geometry_lib.geometry(config.model), source=source,
                                 kind=self, ensemble=ensemble, tta=tta)

    def label(self, predictor: well_lib.Predictor) -> str:
        ensemble = predictor.ensemble
        name = self.name if ensemble.source is not None else ensemble.members[0].kind
        return f"{name} with --tta" if predictor.tta else name

    def input_geometry(self, predictor: well_lib.Predictor) -> base.InputGeometry:
        geometries = [member.predictor.kind.input_geometry(member.predictor)
                      for member in predictor.ensemble.members]
        return base.InputGeometry(predictor.config.channels.num_z_values, max(g.context for g in geometries),
                                  1, 1, 0)

    def choose_channels(self, predictor: well_lib.Predictor, requested: Sequence[str] | None) -> tuple[str, ...]:
        ensemble = predictor.ensemble
        unknown = [channel for channel in requested or () if channel not in ensemble.channels]
        if unknown:
            raise errors.InputError(f"--channels: the ensemble does not predict {', '.join(unknown)}; it predicts "
                                    f"{', '.join(ensemble.channels)}.")
        return tuple(requested) if requested else ensemble.channels

    def distribution(self, predictor: well_lib.Predictor) -> bool:
        return predictor.ensemble.with_distribution

    def statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...]:
        return ensemble_lib.STATISTICS if self.distribution(predictor) else ("median", "mean")

    def default_statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...] | None:
        # The combined value as the median and the mean, unless every statistic comes from the mixture.
        return None if predictor.ensemble.combination == "mixture" else ("median", "mean")

    def unsupported(self, predictor: well_lib.Predictor) -> dict[str, tuple[Any, str]]:
        return UNSUPPORTED

    def predict_well_files(self, predictor: well_lib.Predictor, input_dir: str, output_dir: str,
                           **options: Any) -> dict[str, Any]:
        def progress(line: str) -> None:
            print(f"  predicting {line}", flush=True)

        summary = ensemble_lib.predict_well(
            predictor.ensemble, input_dir, output_dir, channels=options.get("channels"),
            statistics=options.get("statistics", ("median",)), image_format=options.get("image_format", "png"),
            window=options.get("window"), panels=options.get("panels", True),
            file_names=options.get("names", "lab"), panel_bits=options.get("panel_bits", 16),
            save_calibration=options.get("save_calibration", True), tta=predictor.tta,
            progress=progress if options.get("progress_enabled", True) else None,
            available_bytes=options.get("available_bytes"))
        return summary

    def predict_window(self, predictor: well_lib.Predictor, stack: np.ndarray, window: tuple[int, int, int, int],
                       channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        raise errors.InputError(f"{predictor.source}: an ensemble cannot be a member of an ensemble; list its "
                                "members instead.")

    def uncalibrated_note(self, predictor: well_lib.Predictor) -> str:
        ensemble = predictor.ensemble
        if ensemble.source is None:  # --tta of one model folder: its own calibration note.
            member = ensemble.members[0].predictor
            note = (member.kind.calibration_note(member) if member.calibration is not None
                    else member.kind.uncalibrated_note(member))
            return f"Test-time augmentation (8 transforms) of {ensemble.members[0].kind} {member.source}. {note}"
        return (f"Ensemble of {len(ensemble.members)}: "
                + ", ".join(f"{member.kind} {member.model_dir}" for member in ensemble.members)
                + f"; {ensemble.combination} weights fitted on {ensemble.record.get('fitted_on', {}).get('window')}"
                + (", with test-time augmentation." if predictor.tta else "."))

    exports_itself = True

    def export_savedmodel(self, predictor: well_lib.Predictor, export_dir: str, statistics: Sequence[str] | None,
                          with_distributions: bool) -> ensemble_graph.SavedModelResult:
        return ensemble_graph.export_savedmodel(predictor, export_dir, statistics, with_distributions)

    def package_model(self, predictor: well_lib.Predictor, statistics: Sequence[str] | None,
                      all_heads: bool) -> Any:
        return ensemble_graph.package_model(predictor, statistics)

KIND = EnsembleKind()
