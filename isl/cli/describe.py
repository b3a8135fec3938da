"""`isl describe`: print a model's per-module geometry, parameter counts and FLOPs."""

from __future__ import annotations

from typing import Any

SUMMARY = "Print a model's per-module geometry, parameter counts and FLOPs."
DESCRIPTION = """
Print a model's per-module geometry, parameter counts and FLOPs.

Builds the network of a preset (plus an optional JSON config and --set
overrides) at one input size and prints:

* the per-module table of the paper's network description: name, input
  side, input depth, expansion kernel and stride, kind, expansion depth De,
  reduction depth Dr, expansion output depth, output side, output depth;
* trainable parameters by part (projection, down blocks, lower towers, up
  blocks, upper tower, core, heads) and non-trainable batch-norm statistics;
* the receptive field (input side one output pixel depends on);
* FLOPs (2 x multiply-accumulates of every convolution) per input patch and
  per output pixel, core and heads.

Example:
  isl describe --preset=paper --input_size=266 --json
"""

def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("preset", "paper", "Named configuration (isl/presets.py).", flag_values=flag_values)
    flags.DEFINE_string("config", None, "Optional JSON config layered over the preset.", flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "Overrides such as model.base_depth=200.", flag_values=flag_values)
    flags.DEFINE_integer(
        "input_size",
        None,
        "Square input side (250 + 16k for the paper model); default: the config's training patch.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool("table", True, "Print the per-module table.", flag_values=flag_values)


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors
    from isl import presets
    from isl.model import summary as summary_lib

    if positional:
        raise errors.InputError(f"isl describe takes no positional arguments. Received: {positional}")
    config = presets.resolve_config(flag_values["preset"].value, flag_values["config"].value, flag_values["set"].value)
    try:
        result = summary_lib.summarize(config, flag_values["input_size"].value)
    except ValueError as error:
        raise errors.InputError(f"--input_size={flag_values['input_size'].value}: {error}") from None
    if flag_values["table"].value:
        print("(" + ", ".join(summary_lib.COLUMNS) + ")")
        for module in result["modules"]:
            print(tuple(module.values()))
    parameters = result["parameters"]
    print(
        f"{result['preset']} ({result['architecture']}): input {result['input_size']} x {result['input_size']} x "
        f"{result['input_depth']} -> output {result['output_size']} x {result['output_size']} x "
        f"{result['num_heads']} heads; border {result['border']}, phase {result['phase']}, "
        f"embedding depth {result['embedding_depth']}, {result['num_modules']} modules"
    )
    print(
        "trainable parameters: "
        + ", ".join(f"{name} {value:,}" for name, value in parameters.items() if name != "non_trainable")
        + f"; non-trainable batch-norm statistics {parameters['non_trainable']:,}"
    )
    print(f"receptive field: {result['receptive_field']} px (one output pixel's input side, unclipped)")
    flops = result["flops_per_patch"]
    per_pixel = result["flops_per_output_pixel"]
    print(
        f"FLOPs per {result['input_size']}-px patch: core {flops['core'] / 1e9:.2f} G, heads "
        f"{flops['heads'] / 1e9:.3f} G; per output pixel: core {per_pixel['core'] / 1e6:.1f} M, "
        f"total {per_pixel['total'] / 1e6:.1f} M"
    )
    print("Nothing written (describe prints only).")
    return result
