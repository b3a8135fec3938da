"""bioimage.io model packages (rdf.yaml, spec 0.5) of trained `isl` model folders.

`export_package(model_dir, package_dir)` writes a folder and a zip beside it
(`<package_dir>.zip`) that deepImageJ, ilastik, BioEngine and
`bioimageio.core` can run without `isl`:

    PACKAGE_DIR/
      rdf.yaml                 the model description (format_version 0.5.x)
      saved_model.zip          tensorflow_saved_model_bundle weights
      test_input.npy           uint16 [1, H, W, Z] z-stack (a crop of a real
                               well with `sample_well`, else synthetic)
      test_output_prediction.npy  float32 [1, h, w, C]
      sample_input.tif, sample_output.tif  the same tensors as images
                               (the rdf's sample tensors, for people)
      cover.png                input | prediction | truth (when known)
      README.md                model, tensors, training data and scores,
                               licence, citation
      config.json              the ExperimentConfig (attachment)

Every kind of model folder is packaged (`isl.infer.bioimageio_graph`): the
paper network or a U-Net core with 256-bin heads, a U-Net regression, and
an `isl readout` folder. Input `z_stack`, axes `batch, y, x, z` (raw uint16
in the rdf; preprocessing `ensure_dtype float32` and `scale_linear` by
1/65535, the normalisation `isl convert` and `isl predict` apply to 16-bit
images). Output `prediction`, axes `batch, y, x, channel`, one channel per
target and statistic (`dapi_confocal_median`, then its other statistics,
then the next target), in [0, 1]. One tensor, not one per channel:
bioimageio.core 0.11's TF2 adapter pairs a SavedModel's outputs with the
rdf's by the order of the restored output dict, which is random per process.

Test outputs and the check. The test outputs are computed by the graph
the SavedModel holds, on the test input preprocessed as bioimageio.core
does it; when this process has not imported TensorFlow yet (the command
line), with oneDNN switched off, as `bioimageio test` switches it off before
importing TensorFlow, so the outputs are the ones the test recomputes. Then
the community's command itself, `python -m bioimageio.core test rdf.yaml`,
runs in a fresh Python process that never imports `isl`. The package
appears only when it passes; its warnings are reported. The rdf states the
reproducibility tolerance (spec 0.5
`config.bioimageio.reproducibility_tolerance`): the median is the first of
256 bins whose cumulative probability reaches 0.5, a step function of the
logits, so another TensorFlow build or kernel can move a pixel by one bin
(1/255); `MISMATCHED_PER_MILLION` allows a few.

Weights: only `tensorflow_saved_model_bundle` (self-contained; the Keras
archive's custom layers load only where `isl` is installed). Needs the
`[bioimageio]` extra.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import assemble
from isl.data import wells as wells_lib
from isl.infer import bioimageio_graph as graph_lib
from isl.infer import ensemble as ensemble_lib
from isl.infer import export as export_lib
from isl.infer.kinds import registry
from isl.io import atomic
from isl.io import model_dir as model_dir_lib

WEIGHTS_FILE = "saved_model.zip"
TEST_INPUT_FILE = "test_input.npy"
TEST_OUTPUT_FILE = "test_output_prediction.npy"
SAMPLE_INPUT_FILE = "sample_input.tif"
SAMPLE_OUTPUT_FILE = "sample_output.tif"
COVER_FILE = "cover.png"
README_FILE = "README.md"
RDF_FILE = "rdf.yaml"
INPUT_ID = "z_stack"
WEIGHT_FORMAT = "tensorflow_saved_model_bundle"
CITATION = (
    "Christiansen EM, Yang SJ, Ando DM, et al. In Silico Labeling: Predicting Fluorescent Labels in "
    "Unlabeled Images. Cell 173(3):792-803, 2018."
)
CITATION_DOI = "10.1016/j.cell.2018.03.040"
EXTRA_HINT = "pip install 'isl[bioimageio]'"
MAX_NAME = 64  # bioimageio warns about longer names.
# The stated reproducibility tolerance (docs/MEASUREMENTS.md § 24): one-bin median flips per million elements.
MISMATCHED_PER_MILLION = 1000
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4
# Seconds each fresh process may take (TensorFlow's import, the SavedModel's load, the runs).
FRESH_TIMEOUT = 900
SUCCESS_NOTE = "all elements agree with expected values"


@dataclasses.dataclass(frozen=True)
class PackageResult:
    """What `export_package` wrote and checked.

    Attributes:
        test: "passed" (`bioimageio test` in a fresh process) or "not run".
        warnings: the test's warnings, "location: message" (empty when clean).
        seconds: wall time of each stage.
    """

    package_dir: str
    zip_path: str
    kind: str
    outputs: tuple[str, ...]
    test_input_shape: tuple[int, ...]
    validation: str
    test: str
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def _require_bioimageio() -> None:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as error:
        raise errors.InputError(
            f"--format=bioimageio needs the bioimageio packages ({error}); install them with {EXTRA_HINT}."
        ) from None


def sample_stack(
    config: config_lib.ExperimentConfig,
    size: int,
    sample_well: str | None,
    origin: tuple[int, int] | None = None,
    seed: int = 0,
    border: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The test input and, when known, the truth of its output region.

    Args:
        border: the output region is the input's interior `[border, size - border)`.

    Returns:
        stack `[1, size, size, Z]` uint16; truth `[size - 2 border, ...,
        num_output_target_channels]` float32 (NaN where missing) or None;
        a sentence saying where the crop comes from.
    """
    if sample_well is None:
        rng = np.random.default_rng(seed)
        z = config.channels.num_z_values
        smooth = rng.random((z, size // 4 + 2, size // 4 + 2))
        stack = np.kron(smooth, np.ones((4, 4)))[:, :size, :size]
        stack = np.round(np.clip(stack * 0.5 + 0.25, 0, 1) * 65535).astype(np.uint16)
        return np.moveaxis(stack, 0, -1)[None], None, f"a synthetic {size} x {size} x {z} stack (seed {seed})"

    well = wells_lib.read_well(sample_well, config.channels, ignore_unknown=True, lazy=True)  # Only the crop is read.
    num_z, height, width = well.inputs.shape
    if height < size or width < size:
        raise errors.InputError(f"{sample_well}: the well ({height} x {width}) is smaller than the test input "
                                f"({size} px).")
    if origin is None:
        origin = ((height - size) // 2, (width - size) // 2)
    row, column = origin
    if not (0 <= row <= height - size and 0 <= column <= width - size):
        raise errors.InputError(f"{sample_well}: a {size}-px test input at {origin} does not fit the {height} x "
                                f"{width} well.")
    crop = well.inputs[:, row : row + size, column : column + size]
    stack = np.round(np.clip(crop, 0, 1) * 65535).astype(np.uint16)
    window = {name: image[row : row + size, column : column + size] for name, image in well.targets.items()}
    values, masks = assemble.target_stack(window, config.channels, shape=(size, size))  # Elementwise: as the well's.
    inner = (slice(border, size - border), slice(border, size - border))
    truth = np.where(masks[inner] > 0, values[inner], np.nan).astype(np.float32)
    truth = None if np.all(np.isnan(truth)) else truth
    where = f"rows {row}:{row + size}, columns {column}:{column + size} of {well.name} ({num_z} z slices)"
    return np.moveaxis(stack, 0, -1)[None], truth, where


def _to_8bit(image: np.ndarray) -> np.ndarray:
    image = np.nan_to_num(np.asarray(image, np.float32))
    low, high = np.percentile(image, [0.5, 99.5])
    scaled = (image - low) / max(high - low, 1e-6)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def cover_image(stack: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, border: int) -> np.ndarray:
    """input (middle z, output region) | prediction | truth, 8-bit RGB `[h, k * w, 3]`."""
    middle = stack[0, border : stack.shape[1] - border, border : stack.shape[2] - border, stack.shape[3] // 2]
    panels = [_to_8bit(middle), _to_8bit(prediction)]
    if truth is not None:
        panels.append(_to_8bit(truth))
    gap = np.full((middle.shape[0], max(2, middle.shape[1] // 50)), 255, np.uint8)
    row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    return np.repeat(row[..., None], 3, axis=-1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return None
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def _zip_directory(source: str, zip_path: str) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, _, files in os.walk(source):
            for name in sorted(files):
                path = os.path.join(root, name)
                archive.write(path, os.path.relpath(path, source))


def default_name(package_model: graph_lib.PackageModel) -> str:
    """A name of at most `MAX_NAME` characters from the kind, the config's name and the targets."""
    base = {"distribution": "In Silico Labeling", "regression": "ISL U-Net regression",
            "readout": "ISL read-out", "ensemble": "ISL ensemble"}[package_model.kind]
    stains = " ".join(channel.split("_")[0] for channel in package_model.channels)
    for candidate in (f"{base} {package_model.config.name} {stains}", f"{base} {stains}",
                      f"{base} {package_model.config.name} ({len(package_model.channels)} stains)"):
        candidate = _clean_name(candidate)
        if len(candidate) <= MAX_NAME:
            return candidate
    return _clean_name(base)


def _clean_name(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^A-Za-z0-9_+\- ()]", "-", name)).strip()


def _training_section(model_dir: str, package_model: graph_lib.PackageModel) -> list[str]:
    """What the model folder records about its training data and scores (README lines)."""
    lines: list[str] = []
    readme_path = os.path.join(model_dir, README_FILE)
    if os.path.isfile(readme_path):
        text = open(readme_path, encoding="utf-8").read().strip()
        lines += ["The model folder's README:", ""]
        lines += ["##" + line if line.startswith("#") else line for line in text.splitlines()]
        lines += [""]
    record = package_model.readout_record
    if record:
        wells = ", ".join(os.path.basename(os.path.normpath(path)) for path in record.get("train_dirs", []))
        lines += [f"Read-out (`isl readout`): a ridge regression fitted in closed form on {record.get('pixels', '?')} "
                  f"pixels of the well(s) {wells or '?'}, on the frozen core of the network in config.json.", ""]
        for well, scores in sorted(record.get("eval_pearson_r", {}).items()):
            figures = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
            lines += [f"- Pearson r on held-out well {os.path.basename(os.path.normpath(well))}: {figures}"]
        for well, coverage in sorted(record.get("eval_interval_coverage", {}).items()):
            levels = record.get("coverage_levels", [])
            figures = "; ".join(f"{name} " + ", ".join(f"{100 * share:.0f}% inside the {100 * level:.0f}% interval"
                                                       for level, share in zip(levels, shares))
                                for name, shares in coverage.items())
            lines += [f"- Uncertainty on {os.path.basename(os.path.normpath(well))}: {figures}"]
        lines += [""]
    summary_path = model_dir_lib.ModelDir(model_dir).summary
    if os.path.isfile(summary_path):
        try:
            summary = json.load(open(summary_path, encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
        if summary:
            losses = summary.get("losses", {})
            lines += [f"Training (`isl train`, logs/summary.json): {summary.get('final_step', '?')} steps; final "
                      f"training loss {losses.get('loss', float('nan')):.4f}."]
            pearson = {key[len("pearson_median_"):]: value for key, value in summary.get("pearson", {}).items()
                       if key.startswith("pearson_median_")}
            if pearson:
                lines += ["Whole-image Pearson r of the median on its evaluation rows: "
                          + ", ".join(f"{name} {value:.3f}" for name, value in pearson.items()) + "."]
            lines += [""]
    if not lines:
        lines = ["The model folder records no training data or scores (no README.md, logs/summary.json or "
                 "readout.json). Add a README.md to the model folder before exporting to describe them.", ""]
    return lines


def _readme(
    package_model: graph_lib.PackageModel,
    model_dir: str,
    num_z: int,
    where: str,
    crop_scores: dict[str, float | None],
    license_id: str,
    tested: bool,
    cover_channel: str = "",
) -> str:
    config = package_model.config
    border = package_model.border
    channels, statistics = package_model.channels, package_model.statistics
    what = {
        "distribution": "each pixel a 256-bin distribution summarised by " + ", ".join(statistics),
        "regression": "one value per pixel from a U-Net regression (written as " + ", ".join(statistics) + ")",
        "readout": "a normal distribution per pixel from a ridge read-out of the network's frozen core ("
                   + ", ".join(statistics) + ")",
        "ensemble": _ensemble_words(package_model),
    }[package_model.kind]
    size_rule = f"`{package_model.size_min} + {package_model.size_step}n` (n >= 0)"
    if border:
        geometry = (f"{2 * border} px smaller than the input per axis: output pixel (i, j) shows input pixel "
                    f"(i + {border}, j + {border}). The network's valid convolutions have already cropped the "
                    f"border (size offset -{2 * border}), so tools must not crop a halo. The output equals "
                    "`isl predict --border=valid --precision=float32` (each output block predicted from its own "
                    "patch).")
    else:
        geometry = ("the input's size: the image is reflection-padded inside the graph, as `isl predict` does for "
                    "whole wells.")
    lines = [
        f"# {default_name(package_model)}",
        "",
        f"Predicts fluorescence images of {', '.join(channels)} from an unlabelled transmitted-light "
        f"({config.channels.input_channel.lower()}) z-stack, {what}: In Silico Labeling (Christiansen et al., "
        "Cell 2018), trained with `isl` (TensorFlow 2 / Keras 3).",
        "",
        "## Tensors",
        "",
        f"- **Input `{INPUT_ID}`**, axes `batch, y, x, z`, uint16. y and x must be {size_rule}; the test input has "
        f"{num_z} z slices (the model maps any 1..256 slices onto its {config.channels.num_z_values} z values: "
        "value f reads slice `round((Z - 1) * f)`).",
        "- **Preprocessing** (in rdf.yaml): cast to float32, multiply by 1/65535 (the uint16 maximum; give 8-bit "
        "images as uint16 values times 257). The z mapping and the presence masks run inside the SavedModel.",
        "- **Output `prediction`**, axes `batch, y, x, channel`: one channel per target and statistic "
        f"(`<target>_{statistics[0]}` first), float32 in [0, 1] (16-bit intensity / 65535), {geometry}",
        f"- Channels: {', '.join(package_model.output_names)}.",
        "- Computed in float32 (whatever precision the model trained in).",
        "",
        "## Test and sample tensors",
        "",
        f"`test_input.npy` is {where}; `test_output_prediction.npy` was computed by this SavedModel's graph. "
        "`sample_input.tif` and `sample_output.tif` hold the same "
        "tensors as images.",
        f"`cover.png`: the input's middle z slice | the predicted {cover_channel} median | the real stain (when the "
        "crop has it), on the output region.",
    ]
    scored = {name: value for name, value in crop_scores.items() if value is not None}
    if scored:
        lines += ["Pearson r of the median against the real stain on the test crop (a few thousand pixels; not a "
                  "benchmark): " + ", ".join(f"{name} {value:.3f}" for name, value in scored.items()) + "."]
    lines += [
        "",
        "Reproducibility: the median is the first of 256 bins whose cumulative probability reaches 0.5, so float "
        "rounding that differs between TensorFlow builds moves a few pixels by one bin (1/255). rdf.yaml allows "
        f"{MISMATCHED_PER_MILLION} mismatched elements per million (config.bioimageio.reproducibility_tolerance).",
        "",
        "## Validation",
        "",
        ("`isl export` ran `bioimageio test` (bioimageio.core) on this package in a fresh Python process before "
         "writing it, and it passed." if tested else
         "`isl export` validated this package with bioimageio.spec; `bioimageio test` was not run."),
        "",
        "## Training data and scores",
        "",
    ]
    lines += _training_section(model_dir, package_model)
    members = (package_model.ensemble or {}).get("members", [])
    lines += _members_section(package_model)
    lines += [
        "## Licence",
        "",
        f"{license_id}. The released In Silico Labeling data (including the Condition B sample) are published "
        "under Creative Commons Attribution 4.0 International (CC BY 4.0) by the paper's authors; weights trained "
        "on them carry the same attribution.",
    ]
    if members:
        lines += ["", "Every member's weights are in this package's SavedModel, under this licence: each member was "
                  "trained with `isl` on the data its README (above) names, and carries that data's attribution."]
    lines += [
        "",
        "## Citation",
        "",
        f"{CITATION} doi:{CITATION_DOI}",
    ]
    if members:
        lines += ["", "Cite it for every member: the paper network's heads, the read-out of its frozen core and the "
                  "U-Net regression recipe are all `isl` reimplementations built on that paper's model and data."]
    lines += [""]
    return "\n".join(lines)


def _ensemble_words(package_model: graph_lib.PackageModel) -> str:
    record = package_model.ensemble or {}
    members = record.get("members", [])
    combination = record.get("combination", "")
    how = {"both": "the median and mean are the members' values standardised and summed with non-negative weights, "
                   "the std is that of the mixture of their 256-bin distributions",
           "values": "the members' values standardised and summed with non-negative weights",
           "mixture": "every statistic from the mixture of the members' 256-bin distributions"}.get(combination, "")
    return (f"an ensemble of {len(members)} model folders ("
            + ", ".join(f"{member['kind']} {os.path.basename(os.path.normpath(member['model_dir']))}"
                        for member in members)
            + f") combined with weights fitted on validation rows: {how} (" + ", ".join(package_model.statistics)
            + ")")


def _members_section(package_model: graph_lib.PackageModel) -> list[str]:
    """An ensemble's members: kind, folder, weights, each member's README (training data, scores, licence)."""
    record = package_model.ensemble
    if not record:
        return []
    lines = ["## Ensemble members", "",
             f"This package is ONE SavedModel computing an ensemble ({record.get('combination')}) of "
             f"{len(record['members'])} `isl` model folders, each run inside the graph on the whole input "
             "(reflection-padded at its edges by its own context) and combined with constants fitted by "
             f"`isl ensemble` on {record.get('fitted_on', {}).get('well', '?')} rows/columns "
             f"{record.get('fitted_on', {}).get('window', '?')} (row0, row1, column0, column1). Its output equals "
             "`isl predict --model_dir=<the ensemble folder>` on a well whose image is the input (members in "
             "float32).", ""]
    validation = record.get("validation", {})
    for index, member in enumerate(record["members"]):
        name = os.path.basename(os.path.normpath(member["model_dir"]))
        pearson = ", ".join(f"{channel} {scores['members_pearson'][index]:.3f}"
                            for channel, scores in validation.items() if "members_pearson" in scores)
        lines += [f"### Member {index + 1}: {member['kind']} `{name}`", ""]
        if pearson:
            lines += [f"Validation Pearson r alone: {pearson}.", ""]
        readme_path = os.path.join(member["model_dir"], README_FILE)
        if os.path.isfile(readme_path):
            text = open(readme_path, encoding="utf-8").read().strip()
            lines += ["###" + line if line.startswith("#") else line for line in text.splitlines()] + [""]
    combined = ", ".join(f"{channel} {scores['values_pearson']:.3f}" for channel, scores in validation.items()
                         if "values_pearson" in scores)
    if combined:
        lines += [f"Validation Pearson r of the ensemble's combined value: {combined}.", ""]
    return lines


def rdf_content(
    package_model: graph_lib.PackageModel,
    num_z: int,
    name: str,
    license_id: str,
    authors: Sequence[str],
    description: str,
    maintainer: str | None = None,
) -> dict[str, Any]:
    """The rdf.yaml content (a plain dict, spec 0.5); `maintainer`: a GitHub user name."""
    import tensorflow as tf
    from bioimageio.spec.model import v0_5

    border = package_model.border
    size = {"min": package_model.size_min, "step": package_model.size_step}
    if border:
        def output_axis(axis: str) -> dict[str, Any]:
            return {"type": "space", "id": axis,
                    "size": {"tensor_id": INPUT_ID, "axis_id": axis, "offset": -2 * border}}
    else:
        def output_axis(axis: str) -> dict[str, Any]:
            return {"type": "space", "id": axis, "size": {"tensor_id": INPUT_ID, "axis_id": axis}}
    statistics = ", ".join(package_model.statistics)
    people = {"maintainers": [{"github_user": maintainer}]} if maintainer else {}
    return {
        **people,
        "type": "model",
        "format_version": v0_5.ModelDescr.implemented_format_version,
        "name": name,
        "description": description,
        "authors": [{"name": author} for author in authors],
        "cite": [{"text": CITATION, "doi": CITATION_DOI}],
        "license": license_id,
        "documentation": {"source": README_FILE},
        "covers": [{"source": COVER_FILE}],
        "tags": ["in-silico-labeling", "label-free-prediction", "fluorescence", "transmitted-light", "2d",
                 "tensorflow"] + (["uncertainty"] if package_model.kind != "regression" else [])
                + (["ensemble"] if package_model.kind == "ensemble" else []),
        "attachments": [{"source": model_dir_lib.CONFIG_FILE}]
        + ([{"source": ensemble_lib.ENSEMBLE_FILE}] if package_model.ensemble else []),
        "inputs": [{
            "id": INPUT_ID,
            "description": (f"raw uint16 transmitted-light z-stack; y, x = {package_model.size_min} + "
                            f"{package_model.size_step}n"),
            "axes": [
                # One image at a time, as deepImageJ, ilastik and napari feed them: bioimageio test then runs 3
                # sizes, not 3 sizes x batches of 1 and 2. The SavedModel itself takes any batch.
                {"type": "batch", "size": 1},
                {"type": "space", "id": "y", "size": dict(size)},  # Copies: no YAML anchors.
                {"type": "space", "id": "x", "size": dict(size)},
                {"type": "space", "id": "z", "size": num_z},
            ],
            "test_tensor": {"source": TEST_INPUT_FILE},
            "sample_tensor": {"source": SAMPLE_INPUT_FILE},
            # `data` describes what the network receives, after the preprocessing:
            # bioimageio casts to data.type at the end (uint16 here would floor [0, 1] to 0).
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_linear", "kwargs": {"gain": 1.0 / 65535.0, "offset": 0.0}},
            ],
        }],
        "outputs": [{
            "id": export_lib.BIOIMAGEIO_OUTPUT,
            "description": f"per target channel: {statistics} of the predicted intensity, in [0, 1]",
            "axes": [
                {"type": "batch", "size": 1},
                output_axis("y"),
                output_axis("x"),
                {"type": "channel", "channel_names": list(package_model.output_names)},
            ],
            "test_tensor": {"source": TEST_OUTPUT_FILE},
            "sample_tensor": {"source": SAMPLE_OUTPUT_FILE},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            WEIGHT_FORMAT: {
                "source": WEIGHTS_FILE,
                "tensorflow_version": tf.__version__.split("-")[0].split("+")[0],
            },
        },
        "config": {
            "bioimageio": {"reproducibility_tolerance": [{
                "relative_tolerance": RELATIVE_TOLERANCE,
                "absolute_tolerance": ABSOLUTE_TOLERANCE,
                "mismatched_elements_per_million": MISMATCHED_PER_MILLION,
                "output_ids": [export_lib.BIOIMAGEIO_OUTPUT],
            }]},
            "isl": {
                "kind": package_model.kind,
                "size_min": package_model.size_min, "size_step": package_model.size_step, "border": border,
                "num_z_values": package_model.config.channels.num_z_values,
                "signatures": [export_lib.BIOIMAGEIO_ENDPOINT, export_lib.SERVING_DEFAULT],
                "compute": "float32",
            },
        },
    }


def _summary_errors(summary: Any, limit: int = 3) -> str:
    """The failed checks of a bioimageio ValidationSummary (object or JSON dict), in one line."""
    def field(item: Any, name: str, default: Any = None) -> Any:
        return item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)

    failed = []
    for detail in field(summary, "details", []) or []:
        if field(detail, "status", "") == "failed":
            messages = [str(field(entry, "msg", entry)) for entry in field(detail, "errors", []) or []]
            failed.append(f"{field(detail, 'name', '?')}: {'; '.join(messages)[:400]}")
    return " | ".join(failed[:limit]) or str(field(summary, "status", "failed"))


def summary_warnings(summary: dict[str, Any]) -> tuple[str, ...]:
    """'location: message' for every warning (any severity, info included) of a ValidationSummary JSON."""
    found = []
    for detail in summary.get("details", []) or []:
        for entry in detail.get("warnings", []) or []:
            if SUCCESS_NOTE in entry.get("msg", ""):
                continue  # The reproduce test's report of a pass (severity info), not a warning.
            location = ".".join(str(part) for part in entry.get("loc", []))
            found.append(f"{location}: {entry.get('msg', '')}".strip())
    return tuple(dict.fromkeys(found))


def validate_package(rdf_path: str) -> Any:
    """`bioimageio.spec` validation (with file checks); raises InputError when invalid."""
    from bioimageio.spec import InvalidDescr
    from bioimageio.spec import load_description

    description = load_description(rdf_path, perform_io_checks=True)
    if isinstance(description, InvalidDescr) or description.validation_summary.status == "failed":
        raise errors.InputError(
            f"{rdf_path}: bioimageio.spec rejects the package: {_summary_errors(description.validation_summary)}")
    return description


def _fresh_environment() -> dict[str, str]:
    """The environment of a fresh check process: this one's, less anything that would put `isl` on its path."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSTARTUP")}
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment


def _run_fresh(arguments: list[str], what: str, rdf_path: str) -> subprocess.CompletedProcess:
    scratch = tempfile.mkdtemp(prefix="isl-bioimageio-")
    try:
        # -I: isolated (no PYTHONPATH, no user site, not the script's folder): the process never imports isl.
        # The TF adapter unzips the weights into its working directory, hence a scratch one.
        return subprocess.run([sys.executable, "-I", *arguments], cwd=scratch, env=_fresh_environment(),
                              capture_output=True, text=True, timeout=FRESH_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise errors.InputError(f"{rdf_path}: {what} took more than {FRESH_TIMEOUT} s.") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "(no output)"


def test_outputs(package_model: graph_lib.PackageModel, stack: np.ndarray) -> np.ndarray:
    """The package's output for a uint16 test input `[1, H, W, n]`, preprocessed as bioimageio.core does it
    (float32, times float32(1/65535)), from the graph the SavedModel holds."""
    import tensorflow as tf

    inputs = tf.constant(stack.astype(np.float32) * np.float32(1.0 / 65535.0))
    return package_model.serve(inputs)[export_lib.BIOIMAGEIO_OUTPUT].numpy().astype(np.float32)


def community_test(rdf_path: str) -> tuple[dict[str, Any], str]:
    """`python -m bioimageio.core test RDF` (the `bioimageio test` command) in a fresh process.

    Returns:
        (the validation summary as JSON, the command's output).
    """
    handle, summary_path = tempfile.mkstemp(suffix=".json", prefix="isl-bioimageio-summary-")
    os.close(handle)
    try:
        process = _run_fresh(["-m", "bioimageio.core", "test", os.path.abspath(rdf_path),
                              "--summary", summary_path], "bioimageio test", rdf_path)
        try:
            summary = json.load(open(summary_path, encoding="utf-8"))
        except (OSError, ValueError):
            raise errors.InputError(f"{rdf_path}: bioimageio test wrote no summary: "
                                    f"{_last_line(process.stderr or process.stdout)}") from None
        return summary, process.stdout + process.stderr
    finally:
        os.remove(summary_path)


def test_package(rdf_path: str) -> tuple[str, ...]:
    """Runs `bioimageio test` on a package in a fresh process; returns its warnings.

    Raises:
        InputError: unless the test passed.
    """
    summary, _ = community_test(rdf_path)
    if summary.get("status") != "passed":
        raise errors.InputError(
            f"{rdf_path}: bioimageio test failed (the test outputs are not reproduced or the package is invalid): "
            f"{_summary_errors(summary)}")
    return summary_warnings(summary)


def _write_tiff(path: str, array: np.ndarray) -> None:
    """A sample tensor image `[y, x, c]` that imageio reads back with the same three axes."""
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(array), photometric="minisblack", planarconfig="contig",
                     metadata={"axes": "YXS"})


def _write_yaml(content: dict[str, Any], path: str) -> None:
    """Writes `content` as YAML with the YAML library bioimageio.spec uses."""
    from ruyaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with open(path, "w", encoding="utf-8") as file:
        yaml.dump(content, file)


def export_package(
    model_dir: str,
    package_dir: str,
    statistics: Sequence[str] | None = None,
    all_heads: bool = False,
    sample_well: str | None = None,
    sample_origin: tuple[int, int] | None = None,
    test_size: int = 0,
    name: str | None = None,
    license_id: str = "CC-BY-4.0",
    authors: Sequence[str] = ("isl",),
    run_test: bool = True,
    log: Any = None,
    maintainer: str | None = None,
) -> PackageResult:
    """Writes the bioimage.io package of `model_dir` to `package_dir` and `package_dir.zip`.

    Args:
        statistics: per channel, "median" among them; None or empty: the
            kind's default (`bioimageio_graph.DEFAULT_STATISTICS`).
        all_heads: export every target head, not only the trained ones.
        sample_well: a well folder for the test input, cover and crop scores
            (its truth, when present); None: a synthetic stack.
        sample_origin: (row, column) of the test crop; None: the centre.
        test_size: test input side (made valid); 0: `input_size + 8 phase`
            for 256-bin heads (394 px for the shipped checkpoint), 256 for the
            same-size kinds.
        name, license_id, authors: rdf metadata (license: an SPDX id; name
            at most 64 characters).
        maintainer: the GitHub user who maintains the package (bioimageio
            warns without one and checks the account online).
        run_test: run `bioimageio test` in a fresh process before accepting.
        log: a callable taking one progress line (None: silent).

    Raises:
        InputError: no model, no trained target head, a missing extra, an
            existing package folder or zip, a name over 64 characters, or a
            package that bioimageio rejects or whose test fails. Nothing is
            left behind then.
    """
    _require_bioimageio()
    if "tensorflow" not in sys.modules:
        # bioimageio test switches TensorFlow's oneDNN kernels off before importing it; the same kernels here make
        # the test outputs bit-equal to what the test recomputes (with oneDNN on they differ by ~1e-7 in float32).
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import imageio.v3 as imageio

    say = log or (lambda line: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 1)
        clock = now
        say(f"  {stage}: {seconds[stage]:.1f} s")

    package_dir = os.path.abspath(package_dir)
    zip_path = package_dir.rstrip(os.sep) + ".zip"
    for path, flag in ((package_dir, "--export_dir"), (zip_path, "its zip")):
        if os.path.lexists(path):
            raise errors.InputError(f"{path} already exists ({flag}); a package is never written over an existing "
                                    "one. Remove it or choose another --export_dir.")
    if name is not None and len(name) > MAX_NAME:
        raise errors.InputError(f"--name has {len(name)} characters; bioimage.io names have at most {MAX_NAME}.")
    package_model = registry.load_package_model(model_dir, statistics, all_heads)
    config = package_model.config
    lap("load the model (float32)")
    default_side = (package_model.size_min + 8 * package_model.size_step if package_model.border
                    else package_model.valid_side(256))
    size = package_model.valid_side(test_size or default_side)
    stack, truth, where = sample_stack(config, size, sample_well, sample_origin, border=package_model.border)
    names = package_model.output_names
    title = _clean_name(name) if name else default_name(package_model)
    description = (f"Predicts {', '.join(package_model.channels)} ({', '.join(package_model.statistics)} per pixel) "
                   f"from a {config.channels.input_channel.lower()} z-stack; In Silico Labeling (Christiansen et "
                   "al. 2018).")
    if package_model.ensemble:
        kinds = ", ".join(member["kind"] for member in package_model.ensemble["members"])
        description = f"Ensemble ({kinds}). " + description
    description = description[:1000]
    with atomic.temporary_path(zip_path) as temporary_zip, atomic.output_directory(package_dir,
                                                                                     overwrite=False) as temporary:
        saved_model_dir = tempfile.mkdtemp(prefix=".saved_model-", dir=os.path.dirname(package_dir))
        try:
            graph_lib.write_saved_model(package_model, saved_model_dir)
            lap("trace and write the SavedModel")
            _zip_directory(saved_model_dir, os.path.join(temporary, WEIGHTS_FILE))
        finally:
            shutil.rmtree(saved_model_dir, ignore_errors=True)
        np.save(os.path.join(temporary, TEST_INPUT_FILE), stack)
        _write_tiff(os.path.join(temporary, SAMPLE_INPUT_FILE), stack[0])
        config_lib.save_config(config, os.path.join(temporary, model_dir_lib.CONFIG_FILE))
        if package_model.ensemble:  # The fitted weights and the members' fingerprints, for people and isl.
            shutil.copyfile(os.path.join(model_dir, ensemble_lib.ENSEMBLE_FILE),
                            os.path.join(temporary, ensemble_lib.ENSEMBLE_FILE))
        rdf_path = os.path.join(temporary, RDF_FILE)
        _write_yaml(rdf_content(package_model, stack.shape[-1], title, license_id, authors, description,
                                maintainer), rdf_path)
        prediction = test_outputs(package_model, stack)  # [1, h, w, channels * statistics]
        lap("test outputs")
        np.save(os.path.join(temporary, TEST_OUTPUT_FILE), prediction.astype(np.float32))
        _write_tiff(os.path.join(temporary, SAMPLE_OUTPUT_FILE), prediction[0])
        statistic = package_model.statistics
        median = {channel: prediction[0, ..., index * len(statistic) + statistic.index("median")]
                  for index, channel in enumerate(package_model.channels)}
        all_targets = config.channels.output_target_channels
        crop_scores = {}
        if truth is not None:
            for channel in package_model.channels:
                if channel in all_targets:
                    crop_scores[channel] = _pearson(median[channel], truth[..., all_targets.index(channel)])
        # The cover shows the channel the crop shows best (the first one without truth).
        scored = {channel: score for channel, score in crop_scores.items() if score is not None}
        shown = max(scored, key=scored.get) if scored else package_model.channels[0]
        truth_shown = None if truth is None or shown not in all_targets else truth[..., all_targets.index(shown)]
        imageio.imwrite(os.path.join(temporary, COVER_FILE),
                        cover_image(stack, median[shown], truth_shown, package_model.border))
        with open(os.path.join(temporary, README_FILE), "w", encoding="utf-8") as file:
            file.write(_readme(package_model, model_dir, stack.shape[-1], where, crop_scores, license_id, run_test,
                               shown))
        validated = validate_package(rdf_path)
        lap("bioimageio.spec validation")
        test_status, warnings = "not run", ()
        if run_test:
            warnings = test_package(rdf_path)
            test_status = "passed"
            lap("bioimageio test in a fresh process")
        _zip_directory(temporary, temporary_zip)
    return PackageResult(
        package_dir=package_dir,
        zip_path=zip_path,
        kind=package_model.kind,
        outputs=tuple(names),
        test_input_shape=tuple(stack.shape),
        validation=str(validated.validation_summary.status),
        test=test_status,
        warnings=tuple(warnings),
        seconds=seconds,
    )
