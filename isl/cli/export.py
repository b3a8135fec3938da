"""`isl export`: Export a trained model as a TensorFlow SavedModel with serving signatures."""

from __future__ import annotations

from typing import Any

SUMMARY = "Export a trained model as a TensorFlow SavedModel with serving signatures."
DESCRIPTION = """
Export a trained model (a model directory written by `isl train`) as a
TensorFlow SavedModel that runs without `isl`: behind TF Serving, from
`tf.saved_model.load`, or from other languages.

Signatures (height and width dynamic, `input_size + phase*k`: 250 + 16k for
the paper model; the output is `side - 2*border` per side):
  serving_default   z_stack [batch, height, width, num_source_z] uint16
  serving_float32   z_stack [batch, height, width, num_source_z] float32 in [0, 1]
  logits            network_input [batch, height, width, 2*num_z_values] float32
Scaling (1/65535), the z mapping of training (round((n-1)*z), any n up to
256) and the presence masks happen inside the graph. Outputs per target
channel: <CHANNEL>_<statistic> [batch, h, w], and <CHANNEL>_distribution
[batch, h, w, 256] with --with_distributions. A wrong size fails with a
message naming the valid sizes.

Also writes model.keras (native Keras archive, for fine-tuning), config.json
and export.json (the signature documentation) into --export_dir.

Example:
  isl export --model_dir=models/tiny --export_dir=exports/tiny --statistics=median,mean,std
"""
IMPLEMENTED = True


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("model_dir", None, "Model directory (config.json + model.weights.h5).", flag_values=flag_values)
    flags.DEFINE_string("export_dir", None, "Output directory of the SavedModel (replaced if it exists).", flag_values=flag_values)
    flags.DEFINE_list(
        "statistics", ["median", "mean", "std"],
        "Per-pixel statistics to return: mode, median, mean, std, p_nonzero, entropy.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "with_distributions", False, "Also return the 256-bin distribution of each target channel.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool("keras_archive", True, "Also write model.keras beside the SavedModel.", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl.infer import export

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("model_dir", "export_dir"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    print(f"Exporting {flag_values.model_dir} ...", flush=True)
    result = export.export_model(
        flag_values.model_dir,
        flag_values.export_dir,
        statistics=flag_values.statistics,
        with_distributions=flag_values.with_distributions,
        keras_archive=flag_values.keras_archive,
    )
    print(f"SavedModel: {result.export_dir}  (signatures: {', '.join(result.signatures)})")
    print(f"Valid input sides: {result.input_size} + {result.phase}k; output side = input - {2 * result.border}")
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
    }
