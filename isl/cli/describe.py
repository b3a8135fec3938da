"""`isl describe`: print a model's per-module geometry, parameter counts and FLOPs."""

from __future__ import annotations

from typing import Any

SUMMARY = "Print a model's per-module geometry, parameter counts and FLOPs."
DESCRIPTION = """
Print a model's per-module geometry, parameter counts and FLOPs.

Builds the network of a preset (plus an optional JSON config and --set
overrides) at one input size and prints:

* the per-module table, as Appendix B of isl_reference.md: name, input
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
IMPLEMENTED = True

_PARTS = (
    ("projection", ("projection",)),
    ("down_blocks", ("downscale_",)),
    ("lower_towers", ("lower_scale_",)),
    ("up_blocks", ("upscale_",)),
    ("upper_tower", ("upper_recursion_",)),
    ("heads", ("head_",)),
)

_COLUMNS = (
    "name",
    "input_size",
    "input_depth",
    "expansion_kernel",
    "expansion_stride",
    "kind",
    "expansion_depth",
    "reduction_depth",
    "expand_output_depth",
    "output_size",
    "output_depth",
)


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


def _part_of(layer_name: str) -> str:
    for part, prefixes in _PARTS:
        if layer_name.startswith(prefixes):
            return part
    return "other"


def describe(config: Any, input_size: int | None = None) -> dict[str, Any]:
    """Builds the model and returns the table, counts, receptive field and FLOPs.

    Raises:
        ValueError: for an input size the network cannot take.
    """
    import keras
    import numpy as np

    from isl.model import builder
    from isl.model import geometry

    reference = geometry.geometry(config.model)
    input_size = reference.input_size if input_size is None else input_size
    output_size = geometry.output_size_for_input(config.model, input_size)
    records: list[Any] = []
    model = builder.build_model(config, input_size=input_size, records=records)

    trainable = dict.fromkeys([part for part, _ in _PARTS] + ["other"], 0)
    non_trainable = 0
    core_flops = head_flops = 0
    for layer in model.layers:
        part = _part_of(layer.name)
        trainable[part] += int(sum(np.prod(w.shape) for w in layer.trainable_weights))
        non_trainable += int(sum(np.prod(w.shape) for w in layer.non_trainable_weights))
        if isinstance(layer, keras.layers.Conv2DTranspose):
            rows, columns, depth = layer.input.shape[1:]
            macs = rows * columns * depth * int(np.prod(layer.kernel.shape[:2])) * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            rows, columns = layer.output.shape[1:3]
            macs = rows * columns * int(np.prod(layer.kernel.shape[:3])) * layer.filters
        else:
            continue
        if part == "heads":
            head_flops += 2 * macs
        else:
            core_flops += 2 * macs
    if not trainable["other"]:
        del trainable["other"]
    heads = trainable.pop("heads")
    core = sum(trainable.values())
    output_pixels = output_size * output_size
    return {
        "preset": config.name,
        "architecture": config.model.architecture,
        "input_size": input_size,
        "output_size": output_size,
        "border": (input_size - output_size) // 2,
        "phase": reference.phase,
        "input_depth": config.channels.num_input_features,
        "embedding_depth": int(model.get_layer(builder.EMBEDDING_LAYER).output.shape[-1]),
        "num_heads": config.channels.num_heads,
        "num_modules": len(records),
        "modules": [dict(zip(_COLUMNS, record.as_tuple())) for record in records],
        "parameters": {
            **trainable,
            "core": core,
            "heads": heads,
            "per_head": heads // max(config.channels.num_heads, 1),
            "total_trainable": core + heads,
            "non_trainable": non_trainable,
        },
        "receptive_field": geometry.receptive_field(config.model),
        "flops_per_patch": {"core": core_flops, "heads": head_flops, "total": core_flops + head_flops},
        "flops_per_output_pixel": {
            "core": core_flops / output_pixels,
            "heads": head_flops / output_pixels,
            "total": (core_flops + head_flops) / output_pixels,
        },
    }


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import presets
    from isl import errors

    if positional:
        raise errors.InputError(f"isl describe takes no positional arguments. Received: {positional}")
    config = presets.resolve_config(flag_values["preset"].value, flag_values["config"].value, flag_values["set"].value)
    try:
        result = describe(config, flag_values["input_size"].value)
    except ValueError as error:
        raise errors.InputError(f"--input_size={flag_values['input_size'].value}: {error}") from None
    if flag_values["table"].value:
        print("(" + ", ".join(_COLUMNS) + ")")
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
