"""A model's size and cost: per-module geometry, parameters per part, FLOPs.

`summarize(config, input_size)` builds the network of an `ExperimentConfig`
and counts, per part (projection, down blocks, lower towers, up blocks,
upper tower, heads), its trainable parameters, and the FLOPs of one patch
and per output pixel. `isl describe` prints it; `isl benchmark model` uses
the FLOPs to turn timings into achieved throughput.
"""

from __future__ import annotations

from typing import Any

# Parts of the network, by layer-name prefix (`isl.model.builder` names).
PARTS = (
    ("projection", ("projection",)),
    ("down_blocks", ("downscale_",)),
    ("lower_towers", ("lower_scale_",)),
    ("up_blocks", ("upscale_",)),
    ("upper_tower", ("upper_recursion_",)),
    ("heads", ("head_",)),
)

# The per-module table's columns (`isl.model.blocks` records).
COLUMNS = (
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


def _part_of(layer_name: str) -> str:
    for part, prefixes in PARTS:
        if layer_name.startswith(prefixes):
            return part
    return "other"


def summarize(config: Any, input_size: int | None = None) -> dict[str, Any]:
    """Builds the model and returns the table, counts, receptive field and FLOPs.

    FLOPs count 2 per multiply-accumulate of the convolutions (transposed
    ones by their input pixels); batch norm and activations are not counted.

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

    trainable = dict.fromkeys([part for part, _ in PARTS] + ["other"], 0)
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
        "modules": [dict(zip(COLUMNS, record.as_tuple())) for record in records],
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
