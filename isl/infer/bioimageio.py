"""bioimage.io model packages (rdf.yaml, spec 0.5) of trained `isl` models.

`export_package(model_dir, package_dir)` writes a folder and a zip beside it
(`<package_dir>.zip`) that deepImageJ, ilastik, BioEngine and
`bioimageio.core` can run without `isl`:

    PACKAGE_DIR/
      rdf.yaml                 the model description (format_version 0.5.x)
      saved_model.zip          tensorflow_saved_model_bundle weights
      test_input.npy           uint16 [1, H, W, Z] z-stack (a crop of a real
                               well with `sample_well`, else synthetic)
      test_output_prediction.npy  float32 [1, H - 2 border, W - 2 border, C]
      cover.png                input | prediction | truth (when known)
      README.md                model, tensors, training data, licence, scores,
                               citation
      config.json              the ExperimentConfig (attachment)

Tensors. Input `z_stack`, axes `batch, y, x, z` (uint16; y and x
`input_size + phase * n`, i.e. 250 + 16n for the paper model; z fixed to the
test input's slice count). Preprocessing in the rdf: `ensure_dtype float32`
and `scale_linear gain = 1 / 65535` (the type's maximum, the normalisation
`isl convert` and `isl predict` apply to 16-bit images). The z mapping (network
z value f reads slice `round((Z - 1) * f)`) and the presence masks run
inside the graph. Output `prediction`: axes `batch, y, x, channel`, one
channel per exported target channel and statistic, `<channel>_<statistic>` in
lower case (`dapi_confocal_median`, then its mean and standard deviation as
extra channels, then the next target), size `input - 2 * border` (offset
-242: the border is already cropped by the network's valid convolutions, so
tools must not crop again). One tensor, not one per channel: bioimageio.core
0.11's TF2 adapter pairs a SavedModel's outputs with the rdf's by the order
of the restored output dict, which is random per process (measured: three
loads, three orders), so several output tensors would be mixed up. Inside the graph the output is
stitched with the exact plan of `isl predict --border=valid`
(`isl.infer.image_graph`), so any valid input gives the patch-wise result
(for models whose output block does not divide `phase`, e.g. 24-px
outputs, a last partial block is predicted from a reflected patch).

Weights: only `tensorflow_saved_model_bundle`. The Keras archive computes
logits from the network input (52 channels), not the rdf's tensors, and its
custom layers load only where `isl` is installed, so it is not offered as
`keras_v3` / `keras_hdf5` weights (the SavedModel is self-contained).

Before the folder appears, the package is validated by `bioimageio.spec`
and, with `run_test`, `bioimageio.core.test_model` must reproduce the test
outputs from the test input; otherwise `InputError` names the failure and
nothing is left behind. Needs the `[bioimageio]` extra.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.infer import export as export_lib
from isl.io import atomic
from isl.io import model_dir as model_dir_lib
from isl.model import geometry as geometry_lib

WEIGHTS_FILE = "saved_model.zip"
TEST_INPUT_FILE = "test_input.npy"
TEST_OUTPUT_FILE = "test_output_prediction.npy"
COVER_FILE = "cover.png"
README_FILE = "README.md"
RDF_FILE = "rdf.yaml"
INPUT_ID = "z_stack"
CITATION = (
    "Christiansen EM, Yang SJ, Ando DM, et al. In Silico Labeling: Predicting Fluorescent Labels in "
    "Unlabeled Images. Cell 173(3):792-803, 2018."
)
CITATION_DOI = "10.1016/j.cell.2018.03.040"
EXTRA_HINT = "pip install 'isl[bioimageio]'"


@dataclasses.dataclass(frozen=True)
class PackageResult:
    """What `export_package` wrote and checked."""

    package_dir: str
    zip_path: str
    outputs: tuple[str, ...]
    test_input_shape: tuple[int, ...]
    validation: str
    test: str


def _require_bioimageio() -> None:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as error:
        raise errors.InputError(
            f"--format=bioimageio needs the bioimageio packages ({error}); install them with {EXTRA_HINT}."
        ) from None


def test_input_size(geometry: geometry_lib.Geometry, wanted: int) -> int:
    """The valid input side `input_size + phase * n` nearest below `wanted` (at least input_size)."""
    return geometry.input_size + geometry.phase * max(0, (wanted - geometry.input_size) // geometry.phase)


def sample_stack(
    config: config_lib.ExperimentConfig,
    size: int,
    sample_well: str | None,
    origin: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The test input and, when known, the truth of its output region.

    Returns:
        stack `[1, size, size, Z]` uint16; truth `[size - 2 border, ...,
        num_output_target_channels]` float32 (NaN where missing) or None;
        a sentence saying where the crop comes from.
    """
    geometry = geometry_lib.geometry(config.model)
    if sample_well is None:
        rng = np.random.default_rng(seed)
        z = config.channels.num_z_values
        smooth = rng.random((z, size // 4 + 2, size // 4 + 2))
        stack = np.kron(smooth, np.ones((4, 4)))[:, :size, :size]
        stack = np.round(np.clip(stack * 0.5 + 0.25, 0, 1) * 65535).astype(np.uint16)
        return np.moveaxis(stack, 0, -1)[None], None, f"a synthetic {size} x {size} x {z} stack (seed {seed})"
    from isl.data import assemble
    from isl.data import wells as wells_lib

    well = wells_lib.read_well(sample_well, config.channels)
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
    values, masks = assemble.target_stack(well.targets, config.channels, shape=(height, width))
    border = geometry.border
    inner = (slice(row + border, row + size - border), slice(column + border, column + size - border))
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


def run_endpoint(saved_model_dir: str, stack: np.ndarray) -> dict[str, np.ndarray]:
    """The package's outputs for a uint16 stack, from the SavedModel's bioimage.io endpoint."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    endpoint = getattr(loaded, export_lib.BIOIMAGEIO_ENDPOINT)
    outputs = endpoint(tf.constant(stack.astype(np.float32) * np.float32(1 / 65535)))
    return {name: value.numpy() for name, value in outputs.items()}


def _readme(
    config: config_lib.ExperimentConfig,
    geometry: geometry_lib.Geometry,
    channels: Sequence[str],
    statistics: Sequence[str],
    num_z: int,
    where: str,
    model_readme: str | None,
    crop_scores: dict[str, float | None],
    license_id: str,
) -> str:
    border = geometry.border
    lines = [
        f"# In Silico Labeling: {', '.join(channels)} from {config.channels.input_channel.lower()} z-stacks",
        "",
        "Predicts fluorescence images, each pixel a 256-bin distribution summarised by its median, mean and",
        "standard deviation, from an unlabelled transmitted-light z-stack (In Silico Labeling, Christiansen et al.,",
        "Cell 2018), as trained with `isl` (TensorFlow 2 / Keras 3).",
        "",
        "## Tensors",
        "",
        f"- **Input `{INPUT_ID}`**, axes `batch, y, x, z`, uint16. y and x must be "
        f"`{geometry.input_size} + {geometry.phase}n` (n >= 0); z has {num_z} slices (the model maps any 1..256",
        f"  slices onto its {config.channels.num_z_values} z values: value f reads slice `round((Z - 1) * f)`).",
        "- **Preprocessing** (in rdf.yaml): cast to float32, multiply by 1/65535 (the uint16 maximum; scale 8-bit",
        "  images by 1/255 instead, i.e. convert them to the same [0, 1] values). The z mapping and the presence",
        "  masks run inside the SavedModel.",
        "- **Output `prediction`**, axes `batch, y, x, channel`: one channel per target and statistic",
        f"  (`<target>_median`, then `_mean` and `_std` as extras), float32 in [0, 1], {2 * border} px smaller",
        "  than the input per axis: output pixel (i, j)",
        f"  shows input pixel (i + {border}, j + {border}). The border is already cropped (size offset "
        f"-{2 * border}), so",
        "  tools must not crop a halo. Inside the graph the output is stitched with the exact plan of",
        "  `isl predict --border=valid`, equal to predicting each 8 x 8 block from its own patch.",
        f"- Exported statistics: {', '.join(statistics)}; channels: {', '.join(channels)}.",
        "",
        "Whole images of any size: the SavedModel inside (`saved_model.zip`) also has a `predict_image`",
        "signature (uint16 `[batch, height, width, z]` -> full-size statistics, reflection-padded), and `isl predict`",
        "reads the same model directory.",
        "",
        "## Test tensors",
        "",
        f"`test_input.npy` is {where}; the outputs were computed by this SavedModel.",
    ]
    scored = {name: value for name, value in crop_scores.items() if value is not None}
    if scored:
        lines += ["Pearson r of the median on the test crop (a few thousand pixels; not a benchmark): "
                  + ", ".join(f"{name} {value:.3f}" for name, value in scored.items()) + "."]
    lines += [
        "",
        "## Validation",
        "",
        "`bioimageio.spec` validated this package and `bioimageio.core`'s `test_model` reproduced the test outputs",
        "from the test input before `isl export` wrote it. Scores of the model on held-out data, when known, are in",
        "the last section.",
        "",
        "## Licence",
        "",
        f"{license_id}. The released In Silico Labeling data (including the Condition B sample) are published",
        "under Creative Commons Attribution 4.0 International (CC BY 4.0) by the paper's authors; weights",
        "trained on them carry the same attribution.",
        "",
        "## Citation",
        "",
        f"{CITATION} doi:{CITATION_DOI}",
        "",
    ]
    if model_readme:
        lines += ["## Training data, scores and training (the model directory's README)", ""]
        lines += ["#" + line if line.startswith("#") else line for line in model_readme.strip().splitlines()]
        lines += [""]
    return "\n".join(lines)


def _summary_errors(summary: Any, limit: int = 3) -> str:
    """The failed checks of a bioimageio ValidationSummary, in one line."""
    failed = []
    for detail in getattr(summary, "details", []):
        if getattr(detail, "status", "") == "failed":
            messages = [str(getattr(entry, "msg", entry)) for entry in getattr(detail, "errors", [])]
            failed.append(f"{detail.name}: {'; '.join(messages)[:400]}")
    return " | ".join(failed[:limit]) or str(getattr(summary, "status", "failed"))


def rdf_content(
    config: config_lib.ExperimentConfig,
    geometry: geometry_lib.Geometry,
    channel_names: Sequence[str],
    num_z: int,
    name: str,
    license_id: str,
    authors: Sequence[str],
    description: str,
) -> dict[str, Any]:
    """The rdf.yaml content (a plain dict, spec 0.5)."""
    import tensorflow as tf
    from bioimageio.spec.model import v0_5

    border = geometry.border
    size = {"min": geometry.input_size, "step": geometry.phase}
    outputs = [{
        "id": export_lib.BIOIMAGEIO_OUTPUT,
        "description": "per channel: median, mean, std of the predicted 256-bin distribution, in [0, 1]",
        "axes": [
            {"type": "batch"},
            {"type": "space", "id": "y", "size": {"tensor_id": INPUT_ID, "axis_id": "y", "offset": -2 * border}},
            {"type": "space", "id": "x", "size": {"tensor_id": INPUT_ID, "axis_id": "x", "offset": -2 * border}},
            {"type": "channel", "channel_names": list(channel_names)},
        ],
        "test_tensor": {"source": TEST_OUTPUT_FILE},
        "data": {"type": "float32", "range": [0.0, 1.0]},
    }]
    return {
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
                 "tensorflow", "uncertainty"],
        "attachments": [{"source": model_dir_lib.CONFIG_FILE}],
        "inputs": [{
            "id": INPUT_ID,
            "description": f"raw uint16 transmitted-light z-stack; y, x = {geometry.input_size} + {geometry.phase}n",
            "axes": [
                {"type": "batch"},
                {"type": "space", "id": "y", "size": dict(size)},  # Copies: no YAML anchors.
                {"type": "space", "id": "x", "size": dict(size)},
                {"type": "space", "id": "z", "size": num_z},
            ],
            "test_tensor": {"source": TEST_INPUT_FILE},
            # `data` describes what the network receives, after the preprocessing:
            # bioimageio casts to data.type at the end (uint16 here would floor [0, 1] to 0).
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_linear", "kwargs": {"gain": 1.0 / 65535.0, "offset": 0.0}},
            ],
        }],
        "outputs": outputs,
        "weights": {
            "tensorflow_saved_model_bundle": {
                "source": WEIGHTS_FILE,
                "tensorflow_version": tf.__version__.split("-")[0].split("+")[0],
            },
        },
        "config": {"isl": {
            "input_size": geometry.input_size, "phase": geometry.phase, "border": border,
            "output_block": geometry.output_size, "num_z_values": config.channels.num_z_values,
            "signatures": list(export_lib.SIGNATURES),
        }},
    }


def validate_package(rdf_path: str) -> Any:
    """`bioimageio.spec` validation (with file checks); raises InputError when invalid."""
    from bioimageio.spec import load_description
    from bioimageio.spec import InvalidDescr

    description = load_description(rdf_path, perform_io_checks=True)
    if isinstance(description, InvalidDescr) or description.validation_summary.status == "failed":
        raise errors.InputError(
            f"{rdf_path}: bioimageio.spec rejects the package: {_summary_errors(description.validation_summary)}")
    return description


def test_package(rdf_path: str) -> Any:
    """`bioimageio.core.test_model`; raises InputError unless the test outputs are reproduced."""
    from bioimageio.core import test_model

    previous = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="isl-bioimageio-test-")
    try:
        # The TF adapter unzips the weights into a folder relative to the working directory.
        os.chdir(scratch)
        summary = test_model(rdf_path, working_dir=scratch)
    finally:
        os.chdir(previous)
        shutil.rmtree(scratch, ignore_errors=True)
    if summary.status != "passed":
        raise errors.InputError(
            f"{rdf_path}: bioimageio.core's test_model does not reproduce the test outputs: {_summary_errors(summary)}")
    return summary


def export_package(
    model_dir: str,
    package_dir: str,
    statistics: Sequence[str] = export_lib.DEFAULT_STATISTICS,
    all_heads: bool = False,
    sample_well: str | None = None,
    sample_origin: tuple[int, int] | None = None,
    test_size: int = 0,
    name: str | None = None,
    license_id: str = "CC-BY-4.0",
    authors: Sequence[str] = ("isl",),
    run_test: bool = True,
) -> PackageResult:
    """Writes the bioimage.io package of `model_dir` to `package_dir` and `package_dir.zip`.

    Args:
        statistics: per channel; "median" must be among them (the primary output).
        all_heads: export every target head, not only the trained ones.
        sample_well: a well folder for the test input, cover and crop scores
            (its truth, when present); None: a synthetic stack.
        sample_origin: (row, column) of the test crop; None: the centre.
        test_size: test input side (made valid); 0: `input_size + 8 phase`.
        name, license_id, authors: rdf metadata (license: an SPDX id).
        run_test: run `bioimageio.core.test_model` before accepting.

    Raises:
        InputError: no model, no trained target head, a missing extra, or a
            package that bioimageio rejects or whose test does not reproduce.
            Nothing is left behind then.
    """
    _require_bioimageio()
    import imageio.v3 as imageio

    statistics = export_lib.parse_statistics(statistics)
    if "median" not in statistics:
        raise errors.InputError("A bioimage.io package needs the median among --statistics (its primary output).")
    from isl.io import calibration_file

    model, config, trained = export_lib.load_exportable(model_dir)
    channels = export_lib.export_channels(config, trained, all_heads, model_dir)
    geometry = geometry_lib.geometry(config.model)
    size = test_input_size(geometry, test_size or geometry.input_size + 8 * geometry.phase)
    stack, truth, where = sample_stack(config, size, sample_well, sample_origin)
    readme_path = os.path.join(model_dir, README_FILE)
    model_readme = open(readme_path, encoding="utf-8").read() if os.path.isfile(readme_path) else None
    package_dir = os.path.abspath(package_dir)
    zip_path = package_dir.rstrip(os.sep) + ".zip"
    with atomic.temporary_path(zip_path) as temporary_zip, atomic.output_directory(package_dir) as temporary:
        saved_model_dir = tempfile.mkdtemp(prefix=".saved_model-", dir=os.path.dirname(package_dir))
        try:
            export_lib.export_keras_model(model, config, saved_model_dir, statistics, keras_archive=False,
                                          trained_channels=trained, channels=channels, bioimageio_endpoint=True,
                                          calibration=calibration_file.read_fresh(model_dir))
            outputs = run_endpoint(saved_model_dir, stack)
            _zip_directory(saved_model_dir, os.path.join(temporary, WEIGHTS_FILE))
        finally:
            shutil.rmtree(saved_model_dir, ignore_errors=True)
        prediction = outputs[export_lib.BIOIMAGEIO_OUTPUT]  # [1, h, w, channels * statistics]
        names = [export_lib.bioimageio_id(export_lib.output_name(c, s)) for c in channels for s in statistics]
        np.save(os.path.join(temporary, TEST_INPUT_FILE), stack)
        np.save(os.path.join(temporary, TEST_OUTPUT_FILE), prediction.astype(np.float32))
        median = {channel: prediction[0, ..., names.index(
                      export_lib.bioimageio_id(export_lib.output_name(channel, "median")))]
                  for channel in channels}
        all_targets = config.channels.output_target_channels
        truth_first = None if truth is None else truth[..., all_targets.index(channels[0])]
        imageio.imwrite(os.path.join(temporary, COVER_FILE),
                        cover_image(stack, median[channels[0]], truth_first, geometry.border))
        crop_scores = {}
        if truth is not None:
            for channel in channels:
                crop_scores[channel] = _pearson(median[channel], truth[..., all_targets.index(channel)])
        with open(os.path.join(temporary, README_FILE), "w", encoding="utf-8") as file:
            file.write(_readme(config, geometry, channels, statistics, stack.shape[-1], where, model_readme,
                               crop_scores, license_id))
        config_lib.save_config(config, os.path.join(temporary, model_dir_lib.CONFIG_FILE))
        listed = (" ".join(channel.lower() for channel in channels) if len(channels) <= 4
                  else f"{len(channels)} channels")
        title = name or f"In Silico Labeling {config.name} {listed}"
        title = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", title)[:128]
        description = (f"Predicts {', '.join(channels)} (per-pixel median, mean, std of a 256-bin distribution) from "
                       f"a {config.channels.input_channel.lower()} z-stack; In Silico Labeling "
                       "(Christiansen et al. 2018).")
        content = rdf_content(config, geometry, names, stack.shape[-1], title, license_id, authors,
                              description[:1000])
        _write_yaml(content, os.path.join(temporary, RDF_FILE))
        validated = validate_package(os.path.join(temporary, RDF_FILE))
        test_status = "not run"
        if run_test:
            test_package(os.path.join(temporary, RDF_FILE))
            test_status = "passed"
        _zip_directory(temporary, temporary_zip)
    return PackageResult(
        package_dir=package_dir,
        zip_path=zip_path,
        outputs=tuple(names),
        test_input_shape=tuple(stack.shape),
        validation=str(validated.validation_summary.status),
        test=test_status,
    )


def _write_yaml(content: dict[str, Any], path: str) -> None:
    """Writes `content` as YAML with the YAML library bioimageio.spec uses."""
    from ruyaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with open(path, "w", encoding="utf-8") as file:
        yaml.dump(content, file)
