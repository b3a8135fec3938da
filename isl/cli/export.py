"""`isl export`: Export a trained model as a TensorFlow SavedModel with serving signatures."""

from __future__ import annotations

import dataclasses
from typing import Any

SUMMARY = "Export a trained model as a TensorFlow SavedModel or a bioimage.io model package."
DESCRIPTION = """
Export a trained model (a model directory written by `isl train`) as a
TensorFlow SavedModel that runs without `isl`: behind TF Serving, from
`tf.saved_model.load`, or from other languages.

Signatures (height and width dynamic, `input_size + phase*k`: 250 + 16k for
the paper model; the output is `side - 2*border` per side):
  serving_default   z_stack [batch, height, width, num_source_z] uint16
  serving_float32   z_stack [batch, height, width, num_source_z] float32 in [0, 1]
  logits            network_input [batch, height, width, 2*num_z_values] float32
  predict_image     z_stack [batch, height, width, num_source_z] uint16 of ANY
                    height and width -> full-size statistics [batch, height,
                    width]: tiled and stitched inside the graph with the exact
                    plan of `isl predict --tile_size=<--tile_size>`
Scaling (1/65535), the z mapping of training (round((n-1)*z), any n up to
256) and the presence masks happen inside the graph. Outputs per target
channel: <CHANNEL>_<statistic> [batch, h, w], and <CHANNEL>_distribution
[batch, h, w, 256] with --with_distributions. A wrong size fails with a
message naming the valid sizes.

Only the target channels whose heads were trained are exported (the model
directory's trained_channels.json, as `isl predict` reads it); --all_heads
exports every head. Also writes model.keras (native Keras archive, for
fine-tuning), config.json and export.json (the signature documentation).

--format=bioimageio writes a bioimage.io model package (rdf.yaml, spec 0.5)
to --export_dir and a zip beside it (<export_dir>.zip), for deepImageJ,
ilastik, BioEngine and bioimageio.core, from any model folder: a network with
256-bin heads (median, mean, std by default), a U-Net regression
(--recipe=unet_regression; median, mean) or an `isl readout` folder (median,
mean, std of its normal distribution). Float32 SavedModel weights, test and
sample tensors made by the model (from --sample_well, else synthetic), a
cover image and a README. The package appears only after the community's
test, `bioimageio test`, has passed on it in a fresh Python process; its
warnings are printed. An existing --export_dir or zip is never replaced.
Needs pip install 'isl[bioimageio]'.

An ensemble folder (`isl ensemble`) exports as ONE SavedModel (serving_default
uint16, serving_float32) or ONE package: every member runs inside the graph
on the whole input (reflection-padded by its own context) and the fitted
weights combine them, so the output is what `isl predict` writes for a well
whose image is the input: <CHANNEL>_median/_mean (the combined value) and _std
(the mixture; --with_distributions adds the mixed 256 bins), input sides
64 + 16k, output the input's size. A member missing or changed since the fit
exits 2 naming it.

Examples:
  isl export --model_dir=models/tiny --export_dir=exports/tiny --statistics=median,mean,std
  isl export --format=bioimageio --model_dir=checkpoints/condition_b_sample \
      --export_dir=exports/condition_b_bioimageio --sample_well=WELL
  isl export --model_dir=checkpoints/condition_b_ensemble --export_dir=exports/condition_b_ensemble
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("export_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    from isl.cli import data_flags

    data_flags.define(flag_values, ("normalization", "channel_map", "set"))
    flag_values["normalization"].help = (
        "Record this transmitted-light normalisation in the export's config.json (default: the model's), which "
        "isl predict --saved_model applies; the serving signatures themselves only scale by 1/65535.")
    flag_values["channel_map"].help = (
        "FROM=TO[,...]: record this channel map in the export's config.json (default: the model's), which isl "
        "predict --saved_model applies when it reads wells.")

    flags.DEFINE_string("model_dir", None, "Model directory (config.json + model.weights.h5).", flag_values=flag_values)
    flags.DEFINE_string("export_dir", None, "Output directory (a SavedModel replaces an existing one; a "
                        "bioimageio package refuses it).", flag_values=flag_values)
    flags.DEFINE_list(
        "statistics", [],
        "Per-pixel statistics to return: mode, median, mean, std, p_nonzero, entropy. Default median,mean,std "
        "(bioimageio: the model kind's own; median,mean for a U-Net regression).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "with_distributions", False, "Also return the 256-bin distribution of each target channel.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool("keras_archive", True, "Also write model.keras beside the SavedModel.", flag_values=flag_values)
    flags.DEFINE_enum("format", "savedmodel", ["savedmodel", "bioimageio"],
                      "savedmodel: a TF SavedModel folder; bioimageio: a bioimage.io model package folder and zip.",
                      flag_values=flag_values)
    flags.DEFINE_bool("all_heads", False,
                      "Export every target head, also those trained_channels.json lists as untrained.",
                      flag_values=flag_values)
    flags.DEFINE_integer("tile_size", 0,
                         "predict_image's largest tile side in input pixels (250 + 16k for the paper model); "
                         "0: the largest that fits 2 GB.", flag_values=flag_values)
    flags.DEFINE_string("sample_well", None,
                        "bioimageio: a well folder whose crop becomes the test input and cover (its stains, when "
                        "present, the cover's truth); default a synthetic stack.", flag_values=flag_values)
    flags.DEFINE_list("sample_origin", [], "bioimageio: row,column of the test crop in --sample_well (default centre).",
                      flag_values=flag_values)
    flags.DEFINE_integer("test_size", 0, "bioimageio: test input side (250 + 16k); 0: 250 + 16*8.",
                         flag_values=flag_values)
    flags.DEFINE_string("license", "CC-BY-4.0", "bioimageio: SPDX licence of the weights (that of the training data).",
                        flag_values=flag_values)
    flags.DEFINE_list("authors", ["isl"], "bioimageio: author names.", flag_values=flag_values)
    flags.DEFINE_string("name", None, "bioimageio: model name, at most 64 characters (default from the kind, "
                        "config and channels).", flag_values=flag_values)
    flags.DEFINE_string("maintainer", None, "bioimageio: GitHub user name of the package's maintainer (bioimageio "
                        "warns without one and checks the account online).", flag_values=flag_values)
    flags.DEFINE_bool("bioimageio_test", True,
                      "bioimageio: run `bioimageio test` in a fresh process before accepting the package.",
                      flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.infer import export

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    common = _common_arguments(flag_values)
    print(f"Exporting {common['model_dir']} ...", flush=True)
    if flag_values["format"].value == "bioimageio":
        return _run_bioimageio(flag_values, common)
    from isl.cli import data_flags
    from isl.infer.kinds import registry
    from isl.io import calibration_file

    registry.check_savedmodel(common["model_dir"])
    if registry.exports_itself(common["model_dir"]):
        return _run_own_savedmodel(flag_values, common)
    # The data contract (normalisation, channel map, --set data.*) is recorded in the export's config.json.
    statistics = export.parse_statistics(common["statistics"] or list(export.DEFAULT_STATISTICS))
    if not statistics and not flag_values["with_distributions"].value:
        raise errors.InputError("Nothing to export: give --statistics or --with_distributions.")
    model, config, trained = export.load_exportable(common["model_dir"])
    config = data_flags.model_config(config, flag_values, common["model_dir"], "export")
    result = export.export_keras_model(
        model, config, common["export_dir"], statistics,
        flag_values["with_distributions"].value, flag_values["keras_archive"].value, trained_channels=trained,
        channels=export.export_channels(config, trained, common["all_heads"], common["model_dir"]),
        calibration=calibration_file.read_fresh(common["model_dir"]),
        tile_size=flag_values["tile_size"].value or None,
    )
    print(f"SavedModel: {result.export_dir}  (signatures: {', '.join(result.signatures)})")
    print(f"Channels: {', '.join(result.channels)}")
    print(f"Valid input sides: {result.input_size} + {result.phase}k; output side = input - {2 * result.border}")
    print(f"predict_image: any size, tiles of {result.tile_size} px (isl predict --tile_size={result.tile_size})")
    if result.keras_path:
        print(f"Keras archive: {result.keras_path}")
    return {
        "export_dir": result.export_dir,
        "keras_path": result.keras_path,
        "signatures": list(result.signatures),
        "outputs": list(result.outputs),
        "input_size": result.input_size,
        "phase": result.phase,
        "border": result.border,
        "channels": list(result.channels),
        "tile_size": result.tile_size,
    }


def _run_own_savedmodel(flag_values: Any, common: dict[str, Any]) -> dict[str, Any]:
    """A kind with its own SavedModel (an ensemble folder): one SavedModel of all its members."""
    from isl import errors
    from isl.infer.kinds import registry

    for name in ("normalization", "channel_map", "set", "tile_size", "all_heads"):
        if flag_values[name].present:
            raise errors.InputError(f"--{name} does not apply to an ensemble folder: its members' recorded data "
                                    "contract and trained channels are exported as fitted.")
    result = registry.export_own_savedmodel(common["model_dir"], common["export_dir"], common["statistics"] or None,
                                            flag_values["with_distributions"].value)
    print(f"SavedModel: {result.export_dir}  (signatures: {', '.join(result.signatures)})")
    print(f"Channels: {', '.join(result.channels)}; outputs: {', '.join(result.outputs)}")
    print(f"Members in the graph: {', '.join(result.members)}")
    print("Valid input sides: 64 + 16k; output side = input (each member reflection-pads inside the graph). "
          "No Keras archive: an ensemble is several networks.")
    return dataclasses.asdict(result)


def _common_arguments(flag_values: Any) -> dict[str, Any]:
    """The checked flags both formats take: model_dir, export_dir, statistics, all_heads.

    Raises:
        InputError: for a missing directory or a negative size.
    """
    from isl import errors

    for name in ("model_dir", "export_dir"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    if flag_values["tile_size"].value < 0 or flag_values["test_size"].value < 0:
        raise errors.InputError("--tile_size and --test_size must be >= 0.")
    return {name: flag_values[name].value for name in ("model_dir", "export_dir", "statistics", "all_heads")}


def _run_bioimageio(flag_values: Any, common: dict[str, Any]) -> dict[str, Any]:
    from isl import errors
    from isl.infer import bioimageio

    origin = None
    sample_origin = flag_values["sample_origin"].value
    if sample_origin:
        try:
            row, column = (int(value) for value in sample_origin)
        except ValueError:
            raise errors.InputError(
                f"--sample_origin must be row,column; got {','.join(sample_origin)}."
            ) from None
        origin = (row, column)
    if flag_values["with_distributions"].value:
        raise errors.InputError("--with_distributions is not available with --format=bioimageio.")
    for name in ("normalization", "channel_map", "set"):
        if flag_values[name].present:
            raise errors.InputError(f"--{name} applies to --format=savedmodel (recorded in its config.json for isl "
                                    "predict --saved_model); a bioimage.io package takes its inputs as the model "
                                    "was trained.")
    result = bioimageio.export_package(
        common["model_dir"],
        common["export_dir"],
        statistics=common["statistics"],
        all_heads=common["all_heads"],
        sample_well=flag_values["sample_well"].value,
        sample_origin=origin,
        test_size=flag_values["test_size"].value,
        name=flag_values["name"].value,
        license_id=flag_values["license"].value,
        authors=flag_values["authors"].value,
        run_test=flag_values["bioimageio_test"].value,
        log=lambda line: print(line, flush=True),
        maintainer=flag_values["maintainer"].value,
    )
    print(f"bioimage.io package ({result.kind}): {result.package_dir}  (zip: {result.zip_path})")
    print(f"Outputs: {', '.join(result.outputs)}; test input {list(result.test_input_shape)} [batch, y, x, z]")
    print(f"bioimageio.spec validation: {result.validation}; bioimageio test (fresh process): {result.test}")
    if result.test == "passed":
        print("bioimageio test warnings: " + ("; ".join(result.warnings) if result.warnings else "none"))
    return dataclasses.asdict(result)
