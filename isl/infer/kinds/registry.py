"""The one place that knows which kinds of model folder exist, and the entry points every command uses.

`KINDS` lists the kinds in the order they are asked (`ModelKind.recognises`):
the first that recognises a model folder loads it, so a kind marked by a file
(an ensemble's `ensemble.json`, the read-out's `readout.json`) comes before a kind marked by its config, and
the paper network's heads, which take any folder, come last. A new kind is
one module in `isl/infer/kinds/` (a `ModelKind` subclass and its `KIND`) plus
one line here; nothing else branches on kinds.

Entry points: `load_predictor` (recognise and load), `predict_well` (one well,
all or nothing), `calibrate` (`isl calibrate`'s fit), `load_package_model`
(`isl export --format=bioimageio`'s graph), `check_savedmodel` / `export_savedmodel`
(`isl export --format=savedmodel`, refusing a kind it cannot carry), `export_own_savedmodel` (a kind with its
own SavedModel: the ensemble).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from isl import config as config_lib
from isl import errors
from isl.data import wells as wells_lib
from isl.eval import calibrate as calibrate_lib
from isl.infer import bioimageio_graph
from isl.infer import export as export_lib
from isl.infer import well as well_lib
from isl.infer.kinds import base
from isl.infer.kinds import ensemble
from isl.infer.kinds import heads
from isl.infer.kinds import readout
from isl.infer.kinds import regression
from isl.io import atomic
from isl.io import calibration_file
from isl.io import model_dir as model_dir_lib

# Asked in this order; the heads take any folder, so they stay last.
KINDS: list[base.ModelKind] = [
    ensemble.KIND,
    readout.KIND,
    regression.KIND,
    heads.KIND,
]


def register(kind: base.ModelKind, position: int = 0) -> None:
    """Adds a kind (asked before those after `position`); for plug-ins and tests."""
    if any(known.name == kind.name for known in KINDS):
        raise ValueError(f"A model kind named {kind.name!r} is already registered.")
    KINDS.insert(position, kind)


def unregister(name: str) -> None:
    """Removes the kind called `name` (tests)."""
    KINDS[:] = [kind for kind in KINDS if kind.name != name]


def kind_of(model_dir: str) -> base.ModelKind:
    """The kind of a model folder, from its files and config.json, without loading its weights."""
    layout = model_dir_lib.ModelDir(model_dir)
    try:
        config = config_lib.load_config(layout.config) if os.path.isfile(layout.config) else None
    except Exception:  # A damaged config.json: the kind's loader names the problem.
        config = None
    for kind in KINDS:
        if kind.recognises(layout, config):
            return kind
    raise errors.InputError(f"{model_dir}: no model kind recognises this folder.")


def load_predictor(
    model_dir: str | None = None,
    saved_model: str | None = None,
    precision: str = "",
    inference_graph: bool = True,
    apply_calibration: bool = True,
    tta: bool = False,
) -> well_lib.Predictor:
    """Opens a model directory (its kind from `kind_of`) or an exported SavedModel (the heads).

    Args:
        model_dir: a model folder (`isl train`, `isl readout`).
        saved_model: an `isl export` directory (SavedModel with a `logits`
            signature and `config.json`).
        precision: "" (as trained; for the heads a bfloat16-trained model runs in
            float32 on a CPU without native bfloat16, `well.default_precision`),
            "float32", or "bfloat16" (model directories only).
        inference_graph: fold batch norm into the activations (model directories; `isl.infer.graph`).
        apply_calibration: apply the folder's `calibration.json` when present.
        tta: predict with test-time augmentation (`isl predict --tta`): the folder as a one-member
            ensemble (`isl.infer.kinds.ensemble`), or the ensemble itself with it.

    Raises:
        InputError: when neither or both are given, the folder is not a model,
            or its calibration is stale or for another kind.
    """
    if bool(model_dir) == bool(saved_model):
        raise errors.InputError("Give exactly one of --model_dir and --saved_model.")
    if precision not in well_lib.PRECISIONS:
        raise errors.InputError(f"Unknown precision {precision!r}; use float32 or bfloat16.")
    if model_dir:
        predictor = kind_of(model_dir).load(model_dir, precision, open_folder=load_predictor)
        predictor.inference_graph = inference_graph
    else:
        predictor = heads.load_saved_model(saved_model, precision)
        predictor.calibration_in_graph = True
    predictor.calibration = calibration_file.read(model_dir or saved_model)
    predictor.apply_calibration = apply_calibration
    if predictor.calibration is not None and predictor.calibration_in_graph and not apply_calibration:
        raise errors.InputError(f"{saved_model}: the export carries its calibration inside the graph; "
                                "predict from the model directory to predict uncalibrated.")
    if predictor.calibration is not None and model_dir and apply_calibration:
        calibration_file.check_fresh(model_dir, predictor.calibration)
    if predictor.calibration is not None and apply_calibration:
        expected = predictor.kind.calibration_route
        if predictor.calibration.route != expected:
            raise errors.InputError(
                f"{calibration_file.path(model_dir or saved_model)}: calibrated for the {predictor.calibration.route} "
                f"route, but this folder predicts with its {expected}; run isl calibrate again.")
    return ensemble.KIND.augmented(predictor) if tta else predictor


def predict_well(predictor: well_lib.Predictor, input_dir: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Predicts one well into `output_dir/<well name>/` with the predictor's kind, all or nothing.

    The files are written into a private folder inside `output_dir`, which
    then replaces the well's folder in one rename (`isl.io.atomic`), so a
    failed or killed run leaves the previous prediction of the well as it
    was. Options: `isl.infer.well.predict_heads_well`'s (each kind takes what
    applies to it; `isl predict` refuses the others through `ModelKind.unsupported`).

    Returns:
        The contents of `prediction.json` (paths relative to the well folder) plus `well_dir`.
    """
    well_lib.check_output_options(options.get("image_format", "png"), options.get("names", "lab"))
    os.makedirs(output_dir, exist_ok=True)
    atomic.remove_dead_staging(output_dir, well_lib.STAGING_PREFIX)
    staging = atomic.staging_directory(output_dir, well_lib.STAGING_PREFIX)
    try:
        summary = predictor.kind.predict_well_files(predictor, input_dir, staging, **options)
        final = os.path.join(output_dir, os.path.basename(summary["well_dir"]))
        atomic.install_directory(summary["well_dir"], final)
        summary["well_dir"] = final
        return summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def calibrate(
    predictor: well_lib.Predictor,
    data_dir: str,
    region: str,
    train_dirs: Sequence[str],
    train_region: str,
    channels: Sequence[str] | None = None,
    min_pixels: int = calibrate_lib.MIN_PIXELS,
    progress: Callable[[], None] | None = None,
    readout_histograms: bool = True,
) -> calibration_file.Calibration:
    """`isl calibrate`: fits the calibration of a loaded model folder on a validation region
    (`isl.eval.calibrate.calibrate`, with the kind's `calibration_data` and `fit_calibration`).

    Args:
        predictor: the model folder, loaded with `apply_calibration=False`.
        channels: target channels (default: the kind's, those with truth in the region).
        Others: `isl.eval.calibrate.calibrate`'s.

    Raises:
        InputError: for an export, a kind without calibration, or what the fit refuses.
    """
    kind = predictor.kind
    if kind.calibration_route is None:
        raise errors.InputError(f"{predictor.source}: {kind.words} has nothing isl calibrate can fit.")
    if predictor.model is None:
        raise errors.InputError("isl calibrate needs a model directory (--model_dir), not an export.")
    chosen = kind.choose_channels(predictor, channels)
    well = wells_lib.read_checked_well(predictor.config, data_dir)
    return calibrate_lib.calibrate(predictor, well, chosen, kind, data_dir, region, train_dirs, train_region,
                                   requested=bool(channels), min_pixels=min_pixels, progress=progress,
                                   readout_histograms=readout_histograms)


def load_package_model(model_dir: str, statistics: Sequence[str] | None = None,
                       all_heads: bool = False) -> bioimageio_graph.PackageModel:
    """Loads a model folder in float32 and builds its bioimage.io graph (not yet traced) with its kind.

    Raises:
        InputError: no model folder, a kind without a package, no trained target head, or a bad statistic.
    """
    if not os.path.isdir(model_dir):
        raise errors.InputError(f"{model_dir}: model directory not found.")
    refusal = kind_of(model_dir).package_refusal(model_dir)
    if refusal:  # Before loading (an ensemble's members take a minute).
        raise errors.InputError(refusal)
    predictor = load_predictor(model_dir=model_dir, precision="float32")
    return predictor.kind.package_model(predictor, statistics, all_heads)


def check_savedmodel(model_dir: str) -> None:
    """Raises InputError naming why `isl export --format=savedmodel` cannot carry this folder's kind."""
    if not os.path.isdir(model_dir):
        raise errors.InputError(f"{model_dir}: model directory not found.")
    refusal = kind_of(model_dir).savedmodel_refusal(model_dir)
    if refusal:
        raise errors.InputError(refusal)


def exports_itself(model_dir: str) -> bool:
    """Whether the folder's kind writes its own SavedModel (`ModelKind.exports_itself`: an ensemble)."""
    return kind_of(model_dir).exports_itself


def export_own_savedmodel(model_dir: str, export_dir: str, statistics: Sequence[str] | None = None,
                          with_distributions: bool = False) -> Any:
    """`isl export --format=savedmodel` of a kind that `exports_itself`: loaded in float32 (an ensemble's members
    checked against their fingerprints first), then its `export_savedmodel`, all or nothing.

    Raises:
        InputError: a folder that cannot be loaded (a member missing or changed), or what the kind refuses.
    """
    check_savedmodel(model_dir)
    predictor = load_predictor(model_dir=model_dir, precision="float32")
    return predictor.kind.export_savedmodel(predictor, export_dir, statistics, with_distributions)


def export_savedmodel(model_dir: str, export_dir: str, **options: Any) -> export_lib.ExportResult:
    """`isl.infer.export.export_model` for a folder whose kind a SavedModel can carry (`check_savedmodel`)."""
    check_savedmodel(model_dir)
    return export_lib.export_model(model_dir, export_dir, **options)
