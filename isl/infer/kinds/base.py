"""The model-kind protocol: what a kind of model folder tells and does for every command.

A model folder is one of several kinds (the paper network's 256-bin heads, a
ridge read-out on its frozen core, the regression U-Net, ...). Each kind is
one `ModelKind` object in its own module of `isl/infer/kinds/`, listed once in
`isl.infer.kinds.registry.KINDS`; `isl predict`, `calibrate`, `export`,
`evaluate`'s figures and `benchmark` ask the loaded folder's kind
(`Predictor.kind`) and never branch on a kind's name or files themselves.

A kind answers:

* `recognises(layout, config)`: whether a model folder is of this kind
  (the registry asks the kinds in order; the first that says yes loads it);
* `load(model_dir, precision, open_folder)`: the `Predictor` (network, config, the kind's
  own files), `resolve_precision` saying what "" (as trained) means for it;
* `input_geometry(predictor)`: what it reads (z values, context around a window,
  the valid input sides);
* `choose_channels`, `statistics(predictor)` (the statistics on offer, with
  `distribution(predictor)`: a per-pixel distribution or a point value),
  `default_statistics`, `unsupported(predictor)` (the `isl predict` flags it
  cannot honour, with why);
* `predict_well_files(predictor, input_dir, output_dir, **options)`: one well's
  images, panels, calibration maps and `prediction.json` (the registry's
  `predict_well` makes that all-or-nothing); `predict_window`: one window's
  values and bins, for an ensemble member or `--tta` (`isl.infer.ensemble`);
* `calibration_route` and `calibration_data` / `fit_calibration` (`isl calibrate`;
  None: nothing to calibrate), `calibration_note` (what `isl predict` prints);
* `savedmodel_refusal(model_dir)`: why `isl export --format=savedmodel` cannot
  carry it (None: it can), `package_refusal(model_dir)` likewise for
  `--format=bioimageio`, `package_graph`: its bioimage.io graph kind;
  `exports_itself`: a kind with its own SavedModel (`export_savedmodel`; the ensemble), else the heads' export;
* `member_graph(predictor, channels, with_distribution)`: `predict_window` as TF ops, for the export of
  an ensemble it is a member of (`isl.infer.ensemble_graph`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.infer import well as well_lib
from isl.io import model_dir as model_dir_lib
from isl.model import builder
from isl.model import geometry as geometry_lib
from isl.model import saving as saving_lib


@dataclasses.dataclass(frozen=True)
class InputGeometry:
    """What a kind reads to predict.

    Attributes:
        num_z_values: z values of the network input (1 to this many source slices).
        context: image pixels read around a `--region` window (its border and reach).
        size_min, size_step: valid run input sides `size_min + size_step n`.
        border: output = input side - 2 border (0: same size).
    """

    num_z_values: int
    context: int
    size_min: int
    size_step: int
    border: int


class ModelKind:
    """One kind of model folder. Subclasses override what differs; the defaults suit a Keras model folder."""

    name: str = ""
    # How messages name it ("a ridge read-out").
    words: str = ""
    # `calibration.json`'s route for this kind; None: `isl calibrate` refuses it.
    calibration_route: str | None = None
    # `isl.infer.bioimageio_graph`'s graph kind ("distribution", "readout", "regression").
    package_graph: str = "distribution"

    def recognises(self, layout: model_dir_lib.ModelDir, config: config_lib.ExperimentConfig | None) -> bool:
        """Whether the folder is of this kind (`config` None: its config.json is missing or unreadable)."""
        raise NotImplementedError

    def resolve_precision(self, trained_precision: str, requested: str) -> str:
        """The precision to build with: `requested`, or "" (as trained) by default."""
        return requested

    def attach(self, predictor: well_lib.Predictor, layout: model_dir_lib.ModelDir) -> None:
        """Loads the kind's own files beside the network (none by default)."""

    def load(self, model_dir: str, precision: str,
             open_folder: Callable[..., well_lib.Predictor] | None = None) -> well_lib.Predictor:
        """The folder's network (config.json + model.weights.h5) and the kind's own files.

        `open_folder` is the registry's `load_predictor`, for a kind made of other model folders (an
        ensemble loads each member with it, without importing the registry).

        Raises:
            InputError: a missing file or weights that do not load.
        """
        layout = model_dir_lib.ModelDir(model_dir)
        config_path, weights_path = layout.config, layout.weights
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise errors.InputError(f"{model_dir}: not a model directory ({os.path.basename(path)} is missing).")
        try:
            trained_precision = config_lib.load_config(config_path).train.mixed_precision
        except Exception:  # A damaged config.json: the loader below names the problem.
            trained_precision = ""
        precision = self.resolve_precision(trained_precision, precision)
        if precision:
            config = config_lib.load_config(config_path)
            wanted = "bfloat16" if precision == "bfloat16" else ""
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=wanted))
            model = builder.build_model(config)
            try:
                model.load_weights(weights_path)
            except (ValueError, OSError) as error:
                raise errors.InputError(f"{weights_path}: cannot load the weights ({error}).") from None
        else:
            model, config = saving_lib.load_model_dir(model_dir, input_size=None)
        predictor = well_lib.Predictor(
            config=config, geometry=geometry_lib.geometry(config.model), source=model_dir, model=model,
            trained_channels=saving_lib.read_trained_channels(model_dir), trained_precision=trained_precision,
            kind=self)
        self.attach(predictor, layout)
        return predictor

    def label(self, predictor: well_lib.Predictor) -> str:
        """The name `isl predict`'s messages give this loaded folder (a kind may name a variant)."""
        return self.name

    def input_geometry(self, predictor: well_lib.Predictor) -> InputGeometry:
        geometry = predictor.geometry
        return InputGeometry(predictor.config.channels.num_z_values, geometry.border, geometry.border * 2 + 8,
                             geometry.phase, geometry.border)

    def choose_channels(self, predictor: well_lib.Predictor, requested: Sequence[str] | None) -> tuple[str, ...]:
        """The target channels to predict or calibrate (default: the trained ones). Raises InputError."""
        return well_lib.choose_channels(predictor.config, requested, predictor.trained_channels)

    def distribution(self, predictor: well_lib.Predictor) -> bool:
        """Whether it predicts a distribution per pixel (else one value, written as median and mean)."""
        return True

    def statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...]:
        """The statistics on offer (`isl.model.statistic_names`; quantiles qNN where it has a distribution)."""
        raise NotImplementedError

    def default_statistics(self, predictor: well_lib.Predictor) -> tuple[str, ...] | None:
        """`isl predict`'s statistics when --statistics is not given (None: the flag's default)."""
        return None

    def unsupported(self, predictor: well_lib.Predictor) -> dict[str, tuple[Any, str]]:
        """`isl predict` flags it cannot honour: name -> (the value that changes nothing, why)."""
        return {}

    def predict_well_files(self, predictor: well_lib.Predictor, input_dir: str, output_dir: str,
                           **options: Any) -> dict[str, Any]:
        """Predicts one well into `output_dir/<well name>/` (options: `isl.infer.well.predict_heads_well`'s)."""
        raise NotImplementedError

    def predict_window(self, predictor: well_lib.Predictor, stack: np.ndarray, window: tuple[int, int, int, int],
                       channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """One window for an ensemble member or `--tta` (`isl.infer.ensemble`): (point values `[h, w, C]` in [0, 1],
        bin probabilities `[h, w, C, 256]` float32 or None), context read around `window` (r0, r1, c0, c1) of the
        whole `[num_source_z, H, W]` stack.

        Raises:
            InputError: by default: the kind cannot be a member.
        """
        raise errors.InputError(f"{predictor.source}: {self.words} cannot be an ensemble member or run with --tta.")

    def calibration_data(self, predictor: well_lib.Predictor, well: Any, window: tuple[int, int, int, int],
                         channels: Sequence[str], progress: Callable[[], None] | None) -> dict[str, tuple]:
        """Per channel, what the fit needs of the validation pixels (arrays `[N]`, the true bins last)."""
        raise errors.InputError(f"{predictor.source}: {self.words} has nothing isl calibrate can fit.")

    def fit_calibration(self, data: tuple, histogram: np.ndarray,
                        histograms: bool) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        """One channel's (parameters, {"before": figures, "after": figures}) from its `calibration_data`."""
        raise NotImplementedError

    def calibration_note(self, predictor: well_lib.Predictor) -> str:
        """One line for `isl predict`: the applied calibration of this kind (calibration.json present, applied)."""
        return "Calibrated (calibration.json)."

    def uncalibrated_note(self, predictor: well_lib.Predictor) -> str:
        """One line for `isl predict` when the folder has no calibration.json."""
        return ("Uncalibrated: the model folder has no calibration.json (isl calibrate fits one on a validation "
                "split); its distributions are as trained.")

    def package_model(self, predictor: well_lib.Predictor, statistics: Sequence[str] | None,
                      all_heads: bool) -> Any:
        """Its bioimage.io graph (`isl.infer.bioimageio_graph.PackageModel`) for `statistics` (None: its default).

        Raises:
            InputError: by default: the kind has no package (`package_refusal`).
        """
        raise errors.InputError(self.package_refusal(predictor.source))

    def package_refusal(self, model_dir: str) -> str | None:
        """Why `isl export --format=bioimageio` cannot package this kind (None: it can; by default a kind that
        overrides `package_model` can), asked before the folder is loaded."""
        if type(self).package_model is not ModelKind.package_model:
            return None
        return (f"{model_dir}: {self.words} has no bioimage.io package (a package serves one network); package "
                "the networks it is made of one by one, or predict it with isl predict --model_dir.")

    def savedmodel_refusal(self, model_dir: str) -> str | None:
        """Why `isl export --format=savedmodel` cannot carry this kind (None: it can)."""
        return None

    # Whether `export_savedmodel` writes this kind's SavedModel (else `isl.infer.export`'s heads export does).
    exports_itself: bool = False

    def export_savedmodel(self, predictor: well_lib.Predictor, export_dir: str, statistics: Sequence[str] | None,
                          with_distributions: bool) -> Any:
        """Writes the kind's own SavedModel (kinds with `exports_itself`); returns what it wrote."""
        raise NotImplementedError

    def member_graph(self, predictor: well_lib.Predictor, channels: Sequence[str], with_distribution: bool) -> Any:
        """`predict_window` as TF ops (`isl.infer.ensemble_graph.MemberGraph`) for an exported ensemble: the whole
        input as the window, `channels` in this order, the bins only `with_distribution`.

        Raises:
            InputError: by default: the kind has no graph form.
        """
        raise errors.InputError(f"{predictor.source}: {self.words} has no graph form, so an ensemble with it "
                                "cannot be exported.")
